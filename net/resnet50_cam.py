"""Classification network of step 1 (Net) and its class-activation-map form (CAM), as in IRNet.

The module tree repeats IRNet's: the backbone under `resnet50`, the same modules again as
stage1..4 and `backbone`, the head as `classifier` and `newly_added`. A state dict lists a shared
module under each of its names, so our checkpoints have exactly the keys of IRNet's and CDA's
released ones and load into either code strictly.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc import torchutils
from net import resnet50

class Net(nn.Module):

    def __init__(self, num_classes, backbone_weights="none", from_scratch=False):
        super().__init__()
        self.num_classes = num_classes
        self.from_scratch = from_scratch
        self.resnet50 = resnet50.resnet50(strides=(2, 2, 2, 1), weights=backbone_weights, from_scratch=from_scratch)
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(2048, num_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])
        if not from_scratch:
            # Stages 1-2 (conv1, bn1 included) keep their ImageNet weights. No gradient reaches them
            # (see features); marking them also tells DistributedDataParallel not to wait for one.
            for p in list(self.stage1.parameters()) + list(self.stage2.parameters()):
                p.requires_grad_(False)

    def features(self, x):
        # Stages 1-2 are frozen: computing them without a graph equals IRNet's .detach() of the
        # stage-2 output and does not keep their activations for a backward that never comes.
        frozen = contextlib.nullcontext() if self.from_scratch else torch.no_grad()
        with frozen:
            x = self.stage2(self.stage1(x))
        return self.stage4(self.stage3(x))

    def forward(self, x):
        x = torchutils.gap2d(self.features(x), keepdims=True)
        return self.classifier(x).view(-1, self.num_classes)

    def trainable_parameters(self):
        """(backbone parameters, head parameters): the two optimiser groups (lr x1 and x10)."""
        return list(self.backbone.parameters()), list(self.newly_added.parameters())


class CAM(Net):
    """Inference: class activation maps of an image stacked with its horizontal flip."""

    def class_maps(self, x):
        # relu(W * features) with W the classifier's 1x1 weights: the CAM before pooling
        return F.relu(F.conv2d(self.features(x), self.classifier.weight))

    def forward(self, x):
        """x: (2, 3, H, W) = [image, image flipped left-right] -> (K, ceil(H/16), ceil(W/16))."""
        cams = self.class_maps(x)
        return cams[0] + cams[1].flip(-1)

    def forward_pairs(self, x):
        """Batched forward: x (N, 2, 3, H, W) or (2N, 3, H, W) ordered [img0, flip0, img1, flip1, ...]
        -> (N, K, h, w), each equal to forward() of its pair."""
        x = x.reshape(-1, *x.shape[-3:])
        cams = self.class_maps(x)
        cams = cams.view(-1, 2, *cams.shape[1:])
        return cams[:, 0] + cams[:, 1].flip(-1)


def load_cam_weights(model, path):
    """Strictly load a CAM checkpoint (ours, IRNet's or CDA's) into Net or CAM; UserError if it does not fit."""
    return torchutils.load_checkpoint(model, path, what="CAM weights", written_by="step train_cam")
