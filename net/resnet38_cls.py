"""PSA's classification network on ResNet-38 (jiwoon-ahn/psa network/resnet38_cls.py).

conv6 -> Dropout2d(0.5) -> global average pooling -> fc8 (1x1 conv 4096 -> K classes, no bias) -> logits.
Keys: the backbone's, then fc8.weight (dropout7 has no parameters), as PSA's released res38_cls.pth.
"""
import torch.nn as nn
import torch.nn.functional as F

from misc import torchutils
from net import resnet38d

class Net(resnet38d.Net):
    # conv1a and the whole of stage 2 keep their ImageNet weights (psa/network/resnet38_cls.py:17)
    NOT_TRAINING = ("conv1a", "b2", "b2_1", "b2_2")

    def __init__(self, num_classes, backbone_weights="none", from_scratch=False, width=1.0):
        super().__init__(backbone_weights, from_scratch, width)
        self.dropout7 = nn.Dropout2d(0.5)
        self.fc8 = nn.Conv2d(resnet38d.channels(width)(4096), num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.from_scratch_layers = [self.fc8]  # lr x10 (get_parameter_groups)

    def forward(self, x):
        """x (N, 3, H, W) normalised image -> (N, K) logits (psa/network/resnet38_cls.py:21-31)."""
        x = self.dropout7(super().forward(x))
        x = torchutils.gap2d(x, keepdims=True)
        return self.fc8(x).view(x.size(0), -1)

    def forward_cam(self, x):
        """x (N, 3, H, W) -> relu(fc8 applied at every position of conv6): (N, K, ceil(H/8), ceil(W/8)),
        no dropout (psa/network/resnet38_cls.py:33-39)."""
        return F.relu(F.conv2d(super().forward(x), self.fc8.weight))
