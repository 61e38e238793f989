"""ResNet-38 backbone of AffinityNet (PSA) and SEAM: wide, pre-activation "model A1", output stride 8.

Module and attribute names (conv1a, b2, b2_1, ..., b7, bn7; bn_branch2a, conv_branch2a, ...) are the
reference's (jiwoon-ahn/psa network/resnet38d.py), so PSA's, SEAM's and CDA's released checkpoints
load with strict key matching. No layer has a bias.

Faithful mode (default) freezes as the reference's Net.train() (psa/network/resnet38d.py:191-213):
every BatchNorm normalises with its running statistics and its affine weight and bias do not learn;
the layers named in NOT_TRAINING (conv1a here, conv1a and b2* in the heads' nets) do not learn; the
Dropout2d layers of b6 and b7 are active in training mode. from_scratch=True (toy demo only) trains
everything with BatchNorm in training mode, because frozen random BatchNorm does not learn.

ImageNet weights exist only as an MXNet file (ilsvrc-cls_rna-a1_cls1000_ep-0001.params, ademxapp's
"ilsvrc_model_a1"); read_mxnet_params reads it with NumPy alone and convert_mxnet_to_torch renames
it onto our keys, checking that all 191 backbone tensors arrive (the reference loads with
strict=False, which would hide a miss: psa/train_cls.py:109).
"""
import os
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.pyutils import UserError
from misc.torchutils import load_state_dict_checked, read_state_dict
from net.mxnet_params import read_mxnet_params
from net.resnet50 import FixedBatchNorm

IMAGENET_FILE = "ilsvrc-cls_rna-a1_cls1000_ep-0001.params"


def imagenet_weights_path():
    """Where 'imagenet' looks for the MXNet file: torch.hub's checkpoint folder
    ($TORCH_HOME/hub/checkpoints/, by default ~/.cache/torch/hub/checkpoints/)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", IMAGENET_FILE)


def channels(width):
    """Channel counts of a ResNet-38 of `width` times the reference's: 1.0 is the reference network (and
    its checkpoints); the toy demo uses a narrower one, since the full network costs about 1 s per
    96x96 image and training step on a 2-core CPU."""
    return lambda n: n if width == 1.0 else max(4, int(round(n * width)))


class ResBlock(nn.Module):
    """Pre-activation block of two 3x3 convs (psa/network/resnet38d.py:7-52).

    The shortcut is the raw input when shapes agree, else a 1x1 conv of the *activated* input; no
    activation after the sum. first_dilation (default: dilation) applies to the first conv only.
    """

    def __init__(self, in_channels, mid_channels, out_channels, stride=1, first_dilation=None, dilation=1,
                 frozen_bn=True):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        if first_dilation is None:
            first_dilation = dilation
        # registration order = state-dict order of the reference
        self.bn_branch2a = FixedBatchNorm(in_channels, frozen_bn)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = FixedBatchNorm(mid_channels, frozen_bn)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation,
                                        bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x, get_x_bn_relu=False):
        """get_x_bn_relu=True also returns relu(bn(x)), the tap forward_as_dict reports."""
        a = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(a)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))
        out = shortcut + branch
        return (out, a) if get_x_bn_relu else out


class ResBlock_bot(nn.Module):  # noqa: N801 (the reference's class name)
    """Bottleneck block 1x1 -> 3x3 -> 1x1 with Dropout2d before the last two convs
    (psa/network/resnet38d.py:54-102). Its shortcut is always a 1x1 conv, even when the shapes
    agree (:80); same_shape only decides whether conv_branch1 exists (:71), so it always does here."""

    def __init__(self, in_channels, out_channels, stride=1, dilation=1, dropout=0.0, frozen_bn=True):
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = FixedBatchNorm(in_channels, frozen_bn)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = FixedBatchNorm(out_channels // 4, frozen_bn)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = FixedBatchNorm(out_channels // 2, frozen_bn)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x, get_x_bn_relu=False):
        a = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(a)
        branch = F.relu(self.bn_branch2b1(self.conv_branch2a(a)))
        branch = self.conv_branch2b1(self.dropout_2b1(branch))
        branch = F.relu(self.bn_branch2b2(branch))
        branch = self.conv_branch2b2(self.dropout_2b2(branch))
        out = shortcut + branch
        return (out, a) if get_x_bn_relu else out


class Net(nn.Module):
    """ResNet-38 trunk. forward(x) -> conv6 (N, 4096, ceil(H/8), ceil(W/8)).

    backbone_weights: 'none' (PyTorch's default init), 'imagenet' (the MXNet file at
    imagenet_weights_path()), or a path: '*.params' (MXNet) or a .pth state dict (a bare backbone or
    a whole cls/aff/SEAM checkpoint, whose head is dropped).
    from_scratch: demo only, see the module docstring.
    """

    # Layers whose weights never learn in faithful mode (the reference's `not_training`, :151).
    NOT_TRAINING = ("conv1a",)

    def __init__(self, backbone_weights="none", from_scratch=False, width=1.0):
        super().__init__()
        c = channels(width)
        if width != 1.0 and (backbone_weights == "imagenet" or str(backbone_weights).endswith(".params")):
            raise UserError(f"a ResNet-38 of width {width} (a demo size) cannot take the ImageNet weights "
                            f"({backbone_weights}): use --backbone_weights none or --resnet38_width 1")
        self.width = width
        # a missing weights file is reported before 105 M parameters are allocated and initialised
        weights = resolve_backbone_weights(backbone_weights)
        self.from_scratch = from_scratch
        bn = not from_scratch  # frozen BatchNorm
        self.conv1a = nn.Conv2d(3, c(64), 3, padding=1, bias=False)

        self.b2 = ResBlock(c(64), c(128), c(128), stride=2, frozen_bn=bn)
        self.b2_1 = ResBlock(c(128), c(128), c(128), frozen_bn=bn)
        self.b2_2 = ResBlock(c(128), c(128), c(128), frozen_bn=bn)

        self.b3 = ResBlock(c(128), c(256), c(256), stride=2, frozen_bn=bn)
        self.b3_1 = ResBlock(c(256), c(256), c(256), frozen_bn=bn)
        self.b3_2 = ResBlock(c(256), c(256), c(256), frozen_bn=bn)

        self.b4 = ResBlock(c(256), c(512), c(512), stride=2, frozen_bn=bn)
        self.b4_1 = ResBlock(c(512), c(512), c(512), frozen_bn=bn)
        self.b4_2 = ResBlock(c(512), c(512), c(512), frozen_bn=bn)
        self.b4_3 = ResBlock(c(512), c(512), c(512), frozen_bn=bn)
        self.b4_4 = ResBlock(c(512), c(512), c(512), frozen_bn=bn)
        self.b4_5 = ResBlock(c(512), c(512), c(512), frozen_bn=bn)

        # from here on the resolution stays at stride 8; dilation keeps the receptive field growing
        self.b5 = ResBlock(c(512), c(512), c(1024), stride=1, first_dilation=1, dilation=2, frozen_bn=bn)
        self.b5_1 = ResBlock(c(1024), c(512), c(1024), dilation=2, frozen_bn=bn)
        self.b5_2 = ResBlock(c(1024), c(512), c(1024), dilation=2, frozen_bn=bn)

        self.b6 = ResBlock_bot(c(1024), c(2048), stride=1, dilation=4, dropout=0.3, frozen_bn=bn)
        self.b7 = ResBlock_bot(c(2048), c(4096), dilation=4, dropout=0.5, frozen_bn=bn)
        self.bn7 = FixedBatchNorm(c(4096), bn)

        # The heads' layers trained from random init (the reference's attribute, used by
        # get_parameter_groups); subclasses fill it.
        self.from_scratch_layers = []

        if weights is not None:
            load_backbone_weights(self, weights)
        self._freeze()

    @property
    def not_training(self):
        return [getattr(self, name) for name in type(self).NOT_TRAINING]

    def forward(self, x):
        return self.forward_as_dict(x)["conv6"]

    def forward_as_dict(self, x):
        """Taps as PSA (psa/network/resnet38d.py:160-188) plus SEAM's conv3
        (seam/network/resnet38d.py:172,188): conv3 = relu(bn(input of b4)) (256 ch, stride 4),
        conv4 = that of b5 (512 ch, stride 8), conv5 = that of b6 (1024 ch), conv6 = relu(bn7(b7))."""
        x = self.conv1a(x)
        x = self.b2_2(self.b2_1(self.b2(x)))
        x = self.b3_2(self.b3_1(self.b3(x)))
        x, conv3 = self.b4(x, get_x_bn_relu=True)
        x = self.b4_5(self.b4_4(self.b4_3(self.b4_2(self.b4_1(x)))))
        x, conv4 = self.b5(x, get_x_bn_relu=True)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6(x, get_x_bn_relu=True)
        conv6 = F.relu(self.bn7(self.b7(x)))
        return dict(conv3=conv3, conv4=conv4, conv5=conv5, conv6=conv6)

    def _freeze(self):
        """requires_grad=False on NOT_TRAINING and on every BatchNorm's weight and bias.

        The reference does this only inside train() (:195-211); doing it at construction as well
        lets optimiser groups and DistributedDataParallel, which are set up before train() is
        called, see the final flags. Only parameters are touched, so it is idempotent."""
        if self.from_scratch:
            return
        for layer in self.not_training:
            for p in layer.parameters():
                p.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.requires_grad_(False)
                m.bias.requires_grad_(False)

    def train(self, mode=True):
        """As the reference's train() (:191-213): BatchNorm stays in eval mode (Dropout2d follows
        `mode`). Returns self, as nn.Module.train does (the reference returns None)."""
        super().train(mode)
        if not self.from_scratch:
            self._freeze()
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def get_parameter_groups(self):
        """The reference's four groups (psa/network/resnet38_cls.py:41-61, resnet38_aff.py:79-99):
        (weights, biases) of the pretrained convs, (weights, biases) of from_scratch_layers; only
        Conv2d parameters with requires_grad. Give them lr x1, x2, x10, x20 (optimizer_groups).

        BatchNorm parameters are in no group (they are frozen). All convs are bias-free, so groups 1
        and 3 are empty. The reference builds the groups before its first train() call
        (psa/train_cls.py:90,111), so its group 0 also lists conv1a and b2*; they never get a
        gradient, so SGD leaves them as they are: the updates are the same as here, where they
        were frozen at construction. In from_scratch mode the BatchNorm weights join group 0 and
        their biases group 1, since nothing is frozen then."""
        groups = ([], [], [], [])
        scratch = set(id(m) for m in self.from_scratch_layers)
        for m in self.modules():
            trainable_bn = self.from_scratch and isinstance(m, nn.BatchNorm2d)
            if not (isinstance(m, nn.Conv2d) or trainable_bn):
                continue
            new = 2 if id(m) in scratch else 0
            if m.weight.requires_grad:
                groups[new].append(m.weight)
            if m.bias is not None and m.bias.requires_grad:
                groups[new + 1].append(m.bias)
        return groups

    def optimizer_groups(self, lr, weight_decay):
        """Param-group dicts for misc.torchutils.PolyOptimizer as PSA's train_cls/train_aff build them
        (psa/train_cls.py:90-96): lr x1 / x2 / x10 / x20, weight decay only on weights."""
        groups = self.get_parameter_groups()
        mults = (1, 2, 10, 20)
        decays = (weight_decay, 0, weight_decay, 0)
        return [{"params": p, "lr": m * lr, "weight_decay": d} for p, m, d in zip(groups, mults, decays)]

    def trainable_parameters(self):
        """(backbone parameters, head parameters), the two groups (lr x1 and x10) that the project's
        train_cam-style steps build. Equals optimizer_groups in faithful mode, where the bias groups
        (x2, x20, no weight decay) are empty."""
        g = self.get_parameter_groups()
        return g[0] + g[1], g[2] + g[3]


# ---------------------------------------------------------------------------------------------
# ImageNet weights: the MXNet file (net/mxnet_params.py reads it) renamed onto our keys

_BN_PARAM = {"beta": "bias", "gamma": "weight", "mean": "running_mean", "var": "running_var"}


def mxnet_name_to_torch(name):
    """Our key for an MXNet parameter name, None for the ImageNet classifier (linear1000).

    The rules of the reference's convert_mxnet_to_torch (psa/network/resnet38d.py:222-261): split
    on '_'; 'conv1a' -> conv1a.weight; a first token 'res<s>a' / 'res<s>b<i>' (conv) or
    'bn<s>a' / 'bn<s>b<i>' (BatchNorm) with a 'branch*' second token names block b<s> / b<s>_<i>
    and its conv_branch*/bn_branch* layer; any other name is bn7's. The 'arg:'/'aux:' prefixes do
    not matter. Raises ValueError for a name the reference would have mangled (a BatchNorm suffix
    that is not beta/gamma/mean/var)."""
    toks = name.split("_")
    if "conv1a" in toks[0]:
        return "conv1a.weight"
    if "linear1000" in toks[0]:
        return None
    if len(toks) > 1 and "branch" in toks[1]:
        head = toks[0]
        # 'res4b5' -> b4_5 (stage digit 3 from the end, block digit last); 'res4a' -> b4
        block = f"b{head[-2]}" if head.endswith("a") else f"b{head[-3]}_{head[-1]}"
        if "res" in head:
            return f"{block}.conv_{toks[1]}.weight"
        return f"{block}.bn_{toks[1]}.{_bn_param(name, toks[-1])}"
    return f"bn7.{_bn_param(name, toks[-1])}"


def _bn_param(name, last):
    if last not in _BN_PARAM:
        raise ValueError(f"MXNet parameter {name!r} does not map onto a ResNet-38 layer")
    return _BN_PARAM[last]


def convert_mxnet_to_torch(path, model=None):
    """The ImageNet .params file as our backbone's state dict (191 tensors, no num_batches_tracked).

    Unlike the reference, which loads the renamed dict with strict=False, anything but exactly the
    191 backbone tensors with our shapes is a UserError naming the file."""
    if model is None:
        with torch.device("meta"):  # shapes only: no memory, no init
            model = Net()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()
                if not k.endswith("num_batches_tracked") and _is_backbone_key(k)}
    state, unknown = {}, []
    for name, value in read_mxnet_params(path).items():
        try:
            key = mxnet_name_to_torch(name)
        except ValueError:
            unknown.append(name)
            continue
        if key is None:
            continue
        if value is None or key in state:
            unknown.append(name)
            continue
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    missing = [k for k in expected if k not in state]
    extra = unknown + [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        detail = (f"{len(missing)} of the {len(expected)} backbone tensors missing (e.g. {missing[:2]}), "
                  f"{len(extra)} unexpected (e.g. {extra[:2]}), {len(wrong)} of the wrong shape (e.g. {wrong[:2]})")
        raise UserError(f"{path} is not the ResNet-38 ImageNet model ({detail}); download "
                        f"{IMAGENET_FILE} (ademxapp ilsvrc_model_a1) again or pass a .pth state dict")
    return state


# Keys of heads built on the backbone (PSA classifier, AffinityNet, SEAM): dropped when a whole
# checkpoint is given as backbone weights.
HEAD_KEY = re.compile(r"^(fc8|f8_3|f8_4|f8_5|f9)\.")


def _is_backbone_key(key):
    return not HEAD_KEY.match(key)


def resolve_backbone_weights(weights):
    """None for 'none', else the path of the weights file ('imagenet': imagenet_weights_path());
    UserError if it does not exist."""
    if weights in (None, "none"):
        return None
    if weights == "imagenet":
        path = imagenet_weights_path()
        if not os.path.isfile(path):
            raise UserError(f"ResNet-38 ImageNet weights not found: put {IMAGENET_FILE} (ademxapp "
                            f"ilsvrc_model_a1, see PSA's README) into {os.path.dirname(path)}/ "
                            f"or pass --backbone_weights PATH")
        return path
    if not os.path.isfile(weights):
        raise UserError(f"backbone weights not found: {weights}; check the path")
    return weights


def load_backbone_weights(model, weights):
    """Load 'imagenet' or a path (.params or .pth) into the backbone of `model`, strictly: every
    backbone tensor must be there with its shape; a head of `model` keeps its values."""
    weights = resolve_backbone_weights(weights)
    if weights is None:
        return model
    if str(weights).endswith(".params"):
        state, source = convert_mxnet_to_torch(weights, model), f"MXNet weights {weights}"
    else:
        state = read_state_dict(weights, "backbone weights")
        state = {k: v for k, v in state.items() if _is_backbone_key(k)}
        source = f"backbone weights {weights}"
    # the head's entries from the model itself, so that the strict check covers the backbone alone
    state.update({k: v for k, v in model.state_dict().items() if not _is_backbone_key(k)})
    return load_state_dict_checked(model, state, source)
