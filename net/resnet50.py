"""ResNet-50 backbone as IRNet uses it: frozen BatchNorm, output stride 16, no classifier head.

Module names (conv1, bn1, layer1..4, downsample.0/1) equal torchvision's, so its ImageNet weights
load directly and the networks built on top keep the key names of IRNet's released checkpoints.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.pyutils import UserError
from misc.torchutils import load_state_dict_checked, read_state_dict


class FixedBatchNorm(nn.BatchNorm2d):
    """BatchNorm that normalises with its running statistics even in training mode.

    Training batches are small, so the ImageNet statistics are kept; the affine weight and bias still
    learn. frozen=False (demo from scratch only) makes it an ordinary BatchNorm2d.
    """

    def __init__(self, num_features, frozen=True):
        super().__init__(num_features)
        self.frozen = frozen

    def forward(self, x):
        if not self.frozen:
            return super().forward(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, frozen_bn=True):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = FixedBatchNorm(planes, frozen_bn)
        # stride on the 3x3 conv, as torchvision's (and IRNet's) ResNet-50
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FixedBatchNorm(planes, frozen_bn)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = FixedBatchNorm(width, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """ResNet without avgpool/fc; `strides` are those of (conv1, layer2, layer3, layer4)."""

    def __init__(self, layers=(3, 4, 6, 3), strides=(2, 2, 2, 1), frozen_bn=True):
        super().__init__()
        self.frozen_bn = frozen_bn
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=strides[0], padding=3, bias=False)
        self.bn1 = FixedBatchNorm(64, frozen_bn)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], strides[1])
        self.layer3 = self._make_layer(256, layers[2], strides[2])
        self.layer4 = self._make_layer(512, layers[3], strides[3])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes, blocks, stride):
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False),
                                       FixedBatchNorm(out, self.frozen_bn))
        blocks_ = [Bottleneck(self.inplanes, planes, stride, downsample, self.frozen_bn)]
        self.inplanes = out
        blocks_ += [Bottleneck(out, planes, frozen_bn=self.frozen_bn) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))




def imagenet_state_dict():
    """torchvision's ResNet-50 IMAGENET1K_V1 through torch.hub's cache; one-line UserError offline."""
    from torchvision.models import ResNet50_Weights  # imported here: torchvision takes seconds to import
    url = ResNet50_Weights.IMAGENET1K_V1.url  # the weights IRNet started from
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        raise UserError(f"cannot get the ImageNet ResNet-50 weights ({e.__class__.__name__}: {e}); download {url} "
                        f"and put {os.path.basename(url)} into {folder}/ (or pass --backbone_weights PATH)")


def backbone_state_dict(state):
    """Accept a torchvision ResNet-50 state dict or a CAM/IRN checkpoint of ours or IRNet's."""
    if any(k.startswith("resnet50.") for k in state):
        # a whole network: its backbone is under `resnet50.`; the stage*/backbone.* aliases and the
        # head are the same tensors under other names or do not belong to the backbone
        return {k[len("resnet50."):]: v for k, v in state.items() if k.startswith("resnet50.")}
    return {k: v for k, v in state.items() if k not in ("fc.weight", "fc.bias")}


def resnet50(strides=(2, 2, 2, 1), weights="none", from_scratch=False):
    """ResNet-50 backbone.

    weights: 'none' (random init), 'imagenet' (torchvision IMAGENET1K_V1, fc dropped) or the path of a
    torchvision-style ResNet-50 state dict or of a CAM/IRN checkpoint (its `resnet50.*` part).
    from_scratch: BatchNorm layers use batch statistics in training mode (demo only; never default).
    """
    model = ResNet((3, 4, 6, 3), strides, frozen_bn=not from_scratch)
    if weights in (None, "none"):
        return model
    if weights == "imagenet":
        state, source = imagenet_state_dict(), "torchvision's ImageNet weights"
        state = {k: v for k, v in state.items() if k not in ("fc.weight", "fc.bias")}
    else:
        state, source = read_state_dict(weights, "backbone weights"), f"backbone weights {weights}"
        state = backbone_state_dict(state)
    load_state_dict_checked(model, state, source)
    return model
