"""The segmentation network trained on the pseudo masks (last step of the WSSS chain).

- `deeplabv2` (default): DeepLab-v2 as kazuto1011/deeplab-pytorch trains it for PASCAL VOC
  (configs/voc12.yaml, libs/models/deeplabv2.py): a ResNet-101 dilated to output stride 8 (the last two
  layers keep their resolution, dilations 2 and 4 in every block) and an ASPP head that *sums* four 3x3
  convolutions with bias at dilations 6, 12, 18 and 24 (weights N(0, 0.01), biases 0), one per class map.
- `deeplabv3plus`: DeepLab-v3+ built from torchvision's pieces: the same backbone at output stride 16 with
  multi-grid (1, 2, 4) in the last layer, torchvision's ASPP (rates 6, 12, 18, image pooling, 256 channels)
  and the v3+ decoder (48-channel projection of the stride-4 features, two 3x3 convolutions of 256),
  the layout of deeplab-pytorch's libs/models/deeplabv3plus.py.

The backbone is torchvision's ResNet (same module names), so its ImageNet weights load directly; it comes
with our FixedBatchNorm, frozen as deeplab-pytorch freezes BatchNorm (statistics and affine parameters), or
in training mode for the demo's from-scratch run. `forward` returns logits at the network's own stride:
ceil(H / output_stride) x ceil(W / output_stride); `infer` gives image-sized, scale- and flip-fused logits.
"""
import functools
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.pyutils import UserError
from misc.torchutils import load_state_dict_checked, read_state_dict
from net.resnet50 import FixedBatchNorm, backbone_state_dict

ARCHS = ("deeplabv2", "deeplabv3plus")
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


# ---------------------------------------------------------------- backbone

def imagenet_state_dict(depth):
    """torchvision's ResNet-<depth> IMAGENET1K_V1 through torch.hub's cache; one-line UserError offline."""
    from torchvision.models import ResNet50_Weights, ResNet101_Weights
    url = {50: ResNet50_Weights, 101: ResNet101_Weights}[depth].IMAGENET1K_V1.url
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a bad hash is a RuntimeError
        raise UserError(f"cannot get the ImageNet ResNet-{depth} weights ({e.__class__.__name__}: {e}); download "
                        f"{url} and put {os.path.basename(url)} into {folder}/ (or pass --seg_backbone_weights PATH "
                        f"or none)")


def dilated_resnet(depth=101, output_stride=8, multi_grid=(1, 1, 1), from_scratch=False):
    """torchvision's ResNet without avgpool/fc, dilated to `output_stride` (8 or 16).

    torchvision gives the first block of a dilated layer the previous layer's dilation; deeplab-pytorch
    (libs/models/resnet.py, _ResLayer) gives every block of the layer the same dilation, which we restore.
    `multi_grid` multiplies the last layer's per-block dilations (DeepLab-v3's multi-grid)."""
    from torchvision.models.resnet import Bottleneck, ResNet
    if depth not in DEPTHS:
        raise UserError(f"backbone depth must be one of {sorted(DEPTHS)}, got {depth}")
    dilate = {8: [False, True, True], 16: [False, False, True]}[output_stride]
    norm = functools.partial(FixedBatchNorm, frozen=not from_scratch)
    net = ResNet(Bottleneck, list(DEPTHS[depth]), replace_stride_with_dilation=dilate, norm_layer=norm)
    del net.fc, net.avgpool
    rate = 1
    for layer, dilated in zip((net.layer2, net.layer3, net.layer4), dilate):
        rate = rate * 2 if dilated else rate
        grid = multi_grid if layer is net.layer4 else (1,) * len(layer)
        for i, block in enumerate(layer):
            d = rate * grid[i % len(grid)]
            block.conv2.dilation, block.conv2.padding = (d, d), (d, d)
    if not from_scratch:
        # deeplab-pytorch's freeze_bn keeps BatchNorm's statistics and leaves its affine parameters out of the
        # optimiser: nothing of BatchNorm learns
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)
    return net


def load_backbone(net, weights, depth):
    """weights: 'none', 'imagenet' (torchvision IMAGENET1K_V1) or the path of a torchvision-style ResNet state
    dict (its fc is dropped; a CAM/IRN checkpoint of ours gives its `resnet50.*` part)."""
    if weights in (None, "", "none"):
        return net
    if weights == "imagenet":
        state, source = imagenet_state_dict(depth), f"torchvision's ImageNet ResNet-{depth} weights"
    else:
        state, source = read_state_dict(weights, "segmentation backbone weights"), f"backbone weights {weights}"
    load_state_dict_checked(net, backbone_state_dict(state), source)
    return net


def resnet_features(net, x):
    """(stride-4 features of layer1, last features)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    low = net.layer1(x)
    return low, net.layer4(net.layer3(net.layer2(low)))


# ---------------------------------------------------------------- heads

class ASPPSum(nn.Module):
    """DeepLab-v2's ASPP: parallel 3x3 convolutions at several dilations, each straight to the class maps,
    summed (deeplab-pytorch's _ASPP)."""

    def __init__(self, in_channels, num_classes, rates=(6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True)
                                      for r in rates)
        for conv in self.branches:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return sum(branch(x) for branch in self.branches)


def conv_bn_relu(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DeepLab(nn.Module):
    """Backbone (`backbone`) and head (`head`, everything that is not ImageNet's): the two learning-rate groups."""

    output_stride = 8

    def logit_size(self, h, w):
        return math.ceil(h / self.output_stride), math.ceil(w / self.output_stride)

    def param_groups(self):
        """deeplab-pytorch's three groups (main.py get_params): backbone x1, head weights x10, head biases x20
        without weight decay. BatchNorm parameters that learn (from scratch, or the v3+ head) go with the
        backbone, resp. with the head's biases."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        head = [p for p in self.head.parameters() if p.requires_grad]
        return backbone, [p for p in head if p.dim() > 1], [p for p in head if p.dim() <= 1]

    @torch.no_grad()
    def infer(self, img, scales=(1.0,), flip=False):
        """Image-sized logits of `img` (N, 3, H, W): the pixel-wise max over every scale (and its mirror), taken
        at the size of the scale-1 logits and then upsampled bilinearly, as deeplab-pytorch's MSC does at test
        time. One forward per scale: the mirror rides in the same batch."""
        n, _, h, w = img.shape
        base = self.logit_size(h, w)
        fused = None
        for s in scales:
            x = img if s == 1 else F.interpolate(img, scale_factor=s, mode="bilinear", align_corners=False)
            out = self(torch.cat([x, x.flip(-1)]) if flip else x).float()
            outs = [out[:n], out[n:].flip(-1)] if flip else [out]
            for o in outs:
                o = F.interpolate(o, base, mode="bilinear", align_corners=False)
                fused = o if fused is None else torch.maximum(fused, o)
        return F.interpolate(fused, (h, w), mode="bilinear", align_corners=False)


class DeepLabV2(DeepLab):
    output_stride = 8

    def __init__(self, num_classes, depth=101, rates=(6, 12, 18, 24), from_scratch=False):
        super().__init__()
        self.backbone = dilated_resnet(depth, 8, from_scratch=from_scratch)
        self.head = ASPPSum(2048, num_classes, rates)

    def forward(self, x):
        return self.head(resnet_features(self.backbone, x)[1])


class V3PlusHead(nn.Module):
    def __init__(self, num_classes, rates):
        super().__init__()
        from torchvision.models.segmentation.deeplabv3 import ASPP
        self.aspp = ASPP(2048, list(rates), 256)
        self.reduce = conv_bn_relu(256, 48, 1)
        self.decoder = nn.Sequential(conv_bn_relu(256 + 48, 256, 3), conv_bn_relu(256, 256, 3),
                                     nn.Conv2d(256, num_classes, 1))

    def forward(self, low, high):
        low = self.reduce(low)
        high = F.interpolate(self.aspp(high), low.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([high, low], 1))


class DeepLabV3Plus(DeepLab):
    output_stride = 4  # of its logits: the decoder works on the stride-4 features (the encoder's stride is 16)

    def __init__(self, num_classes, depth=101, rates=(6, 12, 18), from_scratch=False):
        super().__init__()
        self.backbone = dilated_resnet(depth, 16, multi_grid=(1, 2, 4), from_scratch=from_scratch)
        self.head = V3PlusHead(num_classes, rates)

    def forward(self, x):
        return self.head(*resnet_features(self.backbone, x))


def build(num_classes, arch="deeplabv2", depth=101, backbone_weights="none", from_scratch=False):
    """num_classes: the segmentation labels (background included)."""
    if arch not in ARCHS:
        raise UserError(f"--seg_arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    cls = DeepLabV2 if arch == "deeplabv2" else DeepLabV3Plus
    model = cls(depth=depth, num_classes=num_classes, from_scratch=from_scratch)
    load_backbone(model.backbone, backbone_weights, depth)
    return model


class MultiScaleTrainer(nn.Module):
    """deeplab-pytorch's MSC in training: logits of the input and of each rescaled copy, and their pixel-wise
    max at the input's logit size; the loss is taken on every one. One module, so that DistributedDataParallel
    sees one forward per step."""

    def __init__(self, base, scales=(0.5, 0.75)):
        super().__init__()
        self.base = base
        self.scales = tuple(s for s in scales if s != 1)

    def forward(self, x):
        logits = self.base(x)
        if not self.scales:
            return [logits]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        size = logits.shape[-2:]
        fused = torch.stack([logits] + [F.interpolate(p, size, mode="bilinear", align_corners=False)
                                        for p in pyramid]).max(0)[0]
        return [logits] + pyramid + [fused]
