"""Inter-pixel relation network of step 5 (IRNet): class boundaries and displacement field.

Net holds the frozen ResNet-50 and the two branches; AffinityDisplacementLoss adds the per-pair
losses used in training, irn_loss weights them with the affinity labels, EdgeDisplacement is the
inference form used by the random walk. The module tree repeats IRNet's (stage1..5, fc_edge1..6,
fc_dp1..7, mean_shift, backbone/edge_layers/dp_layers aliases) so state-dict keys equal those of
IRNet's released irn weights.
"""
import contextlib
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc import torchutils
from net import resnet50


class MeanShift(nn.Module):
    """Subtracts the mean displacement (measured on the inference list after training) at inference."""

    def __init__(self, num_features=2):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x):
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


def conv_gn_relu(cin, cout, groups, upscale=None):
    layers = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if upscale:
        layers.append(nn.Upsample(scale_factor=upscale, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Net(nn.Module):

    def __init__(self, backbone_weights="none", from_scratch=False):
        super().__init__()
        self.from_scratch = from_scratch
        self.resnet50 = resnet50.resnet50(strides=(2, 2, 2, 1), weights=backbone_weights, from_scratch=from_scratch)
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stage2 = nn.Sequential(r.layer1)
        self.stage3 = nn.Sequential(r.layer2)
        self.stage4 = nn.Sequential(r.layer3)
        self.stage5 = nn.Sequential(r.layer4)
        self.mean_shift = MeanShift(2)

        # boundary branch: 32 channels from each stage, brought to stage-2 resolution (stride 4)
        self.fc_edge1 = conv_gn_relu(64, 32, 4)
        self.fc_edge2 = conv_gn_relu(256, 32, 4)
        self.fc_edge3 = conv_gn_relu(512, 32, 4, upscale=2)
        self.fc_edge4 = conv_gn_relu(1024, 32, 4, upscale=4)
        self.fc_edge5 = conv_gn_relu(2048, 32, 4, upscale=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)

        # displacement branch: deep stages fused at stride 8, then with stages 1-2 at stride 4
        self.fc_dp1 = conv_gn_relu(64, 64, 8)
        self.fc_dp2 = conv_gn_relu(256, 128, 16)
        self.fc_dp3 = conv_gn_relu(512, 256, 16)
        self.fc_dp4 = conv_gn_relu(1024, 256, 16, upscale=2)
        self.fc_dp5 = conv_gn_relu(2048, 256, 16, upscale=2)
        self.fc_dp6 = conv_gn_relu(768, 256, 16, upscale=2)
        self.fc_dp7 = nn.Sequential(
            nn.Conv2d(448, 256, 1, bias=False),
            nn.GroupNorm(16, 256),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 2, 1, bias=False),
            self.mean_shift,
        )

        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4, self.stage5])
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4,
                                          self.fc_edge5, self.fc_edge6])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5,
                                        self.fc_dp6, self.fc_dp7])
        if not from_scratch:
            # frozen backbone: no gradient reaches it (see forward); marked for DistributedDataParallel
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        """x (N, 3, H, W) -> edge logits (N, 1, h, w) and displacement (N, 2, h, w), h = ceil(H/4)."""
        # The backbone is not trained: no graph through it (IRNet detaches every stage output).
        frozen = contextlib.nullcontext() if self.from_scratch else torch.no_grad()
        with frozen:
            x1 = self.stage1(x)
            x2 = self.stage2(x1)
            x3 = self.stage3(x2)
            x4 = self.stage4(x3)
            x5 = self.stage5(x4)

        h, w = x2.shape[2:]
        edges = [self.fc_edge1(x1), self.fc_edge2(x2), self.fc_edge3(x3), self.fc_edge4(x4), self.fc_edge5(x5)]
        edge_out = self.fc_edge6(torch.cat([e[..., :h, :w] for e in edges], dim=1))

        dp3 = self.fc_dp3(x3)
        h3, w3 = dp3.shape[2:]
        dp_deep = torch.cat([dp3, self.fc_dp4(x4)[..., :h3, :w3], self.fc_dp5(x5)[..., :h3, :w3]], dim=1)
        dp_up = self.fc_dp6(dp_deep)[..., :h, :w]
        dp_out = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), dp_up], dim=1))
        return edge_out, dp_out

    def trainable_parameters(self):
        """(edge-branch parameters, displacement-branch parameters): optimiser groups lr x1 and x10.
        From scratch (demo) the backbone trains too, in the first group."""
        edge = list(self.edge_layers.parameters())
        if self.from_scratch:
            edge = list(self.backbone.parameters()) + edge
        return edge, list(self.dp_layers.parameters())

    def train(self, mode=True):
        super().train(mode)
        if not self.from_scratch:
            self.backbone.eval()
        return self


class AffinityDisplacementLoss(Net):
    """Training form: forward(x, return_loss=True) -> per-pair (pos_aff, neg_aff, dp_fg, dp_bg) losses.

    path_index: misc.indexing.PathIndex built for the training crop at stride 4 (its path_indices
    fix the feature size). Shapes, with P pairs sources and D directions: pos_aff, neg_aff (N, D, P);
    dp_fg, dp_bg (N, 2, D, P). Weight them with irn_loss.
    """

    def __init__(self, path_index, backbone_weights="none", from_scratch=False):
        super().__init__(backbone_weights, from_scratch)
        self.radius_floor = int(path_index.radius_floor)
        self.search_dst = [(int(dy), int(dx)) for dy, dx in np.asarray(path_index.search_dst)]
        self.n_path_lengths = len(path_index.path_indices)
        # IRNet keeps these as persistent buffers, so its checkpoints carry ~200 MB of indices that
        # inference never reads; ours are rebuilt from path_index and not saved.
        for i, ind in enumerate(path_index.path_indices):
            self.register_buffer(f"path_indices{i}", torch.as_tensor(np.asarray(ind, dtype=np.int64)), persistent=False)
        target = torch.tensor(self.search_dst, dtype=torch.float32).t()  # (2, D): (dy, dx) of each direction
        self.register_buffer("disp_target", target[None, :, :, None], persistent=False)

    def to_affinity(self, edge):
        """edge (N, 1, h, w) boundary probability -> affinity (N, D, P) = 1 - max edge along each path."""
        edge = edge.flatten(1)
        affs = []
        for i in range(self.n_path_lengths):
            ind = getattr(self, f"path_indices{i}")  # (paths, path length, P)
            along = edge[:, ind.flatten()].view(edge.shape[0], *ind.shape)
            affs.append(1 - along.max(dim=2).values)
        return torch.cat(affs, dim=1)

    def to_pair_displacement(self, disp):
        """disp (N, 2, h, w) -> displacement of each source minus each neighbour's, (N, 2, D, P)."""
        r = self.radius_floor
        h, w = disp.shape[2] - r, disp.shape[3] - 2 * r
        src = disp[:, :, :h, r:r + w]
        dst = torch.stack([disp[:, :, dy:dy + h, r + dx:r + dx + w] for dy, dx in self.search_dst], dim=2)
        return (src.unsqueeze(2) - dst).flatten(3)

    def forward(self, x, return_loss=True):
        edge_out, dp_out = super().forward(x)
        if not return_loss:
            return edge_out, dp_out
        # fp32 for the loss even under bf16 autocast: near 1 bf16 steps by 0.004, which would quantise affinities
        edge_out, dp_out = edge_out.float(), dp_out.float()
        aff = self.to_affinity(torch.sigmoid(edge_out))
        pos_aff_loss = -torch.log(aff + 1e-5)
        neg_aff_loss = -torch.log(1 + 1e-5 - aff)
        pair_disp = self.to_pair_displacement(dp_out)
        dp_fg_loss = (pair_disp - self.disp_target).abs()  # same instance: displacements differ by the offset
        dp_bg_loss = pair_disp.abs()  # background: no displacement between the two
        return pos_aff_loss, neg_aff_loss, dp_fg_loss, dp_bg_loss


def irn_loss(outputs, bg_pos_label, fg_pos_label, neg_label, sum_over_processes=None, world_size=1):
    """Weight AffinityDisplacementLoss's per-pair losses with the affinity labels (N, D, P), as IRNet's
    train_irn: each term is a label-weighted mean; returns dict(pos, neg, dp_fg, dp_bg, total).

    Under DDP (sum_over_processes sums a tensor over the world_size processes) each mean is over the
    global batch, as in one process: the label counts are summed over processes and each process's term
    is scaled by world_size, so DDP's average of the per-process gradients is the gradient of the
    global-batch loss. The values returned are then the global ones (detached) except 'total', which
    carries this process's share for backward."""
    pos_aff, neg_aff, dp_fg, dp_bg = outputs
    eps = 1e-5
    bg, fg = bg_pos_label, fg_pos_label
    # the five label-weighted means; the displacement has 2 components per pair, hence the 2 * counts
    num = torch.stack([(bg * pos_aff).sum(), (fg * pos_aff).sum(), (neg_label * neg_aff).sum(),
                       (dp_fg * fg.unsqueeze(1)).sum(), (dp_bg * bg.unsqueeze(1)).sum()])
    count = torch.stack([bg.sum(), fg.sum(), neg_label.sum(), 2 * fg.sum(), 2 * bg.sum()]).to(num.dtype)
    if sum_over_processes is None:
        return _combine(num / (count + eps))
    both = sum_over_processes(torch.cat([num.detach(), count]))
    num_all, count_all = both[:5], both[5:]
    share = _combine(world_size * num / (count_all + eps))
    logged = _combine(num_all / (count_all + eps))
    return dict({k: v for k, v in logged.items() if k != "total"}, total=share["total"])


def _combine(means):
    """bg_pos, fg_pos, neg, dp_fg, dp_bg means -> the named terms and IRNet's total."""
    bg_pos, fg_pos, neg, dp_fg, dp_bg = means.unbind()
    pos = bg_pos / 2 + fg_pos / 2  # bg and fg pairs count equally, however many of each
    total = (pos + neg) / 2 + (dp_fg + dp_bg) / 2
    return dict(pos=pos, neg=neg, dp_fg=dp_fg, dp_bg=dp_bg, total=total)


class EdgeDisplacement(Net):
    """Inference form: forward(x (2, 3, H, W) = [image, its left-right flip]) ->
    edge (1, h, w) boundary probability of image and flip combined, dp (2, h, w) displacement of the
    image with the mean shift removed; h = (H - 1) // stride + 1. Use in eval() mode.

    The image is zero-padded (bottom, right) to crop_size x crop_size, the size IRN was trained on,
    as IRNet does; larger images are padded to their own size instead of being cut.
    """

    def __init__(self, crop_size=512, stride=4, backbone_weights="none", from_scratch=False):
        super().__init__(backbone_weights, from_scratch)
        self.crop_size = crop_size
        self.stride = stride

    def forward(self, x):
        H, W = x.shape[2:]
        h, w = (H - 1) // self.stride + 1, (W - 1) // self.stride + 1
        x = F.pad(x, [0, max(self.crop_size - W, 0), 0, max(self.crop_size - H, 0)])
        edge_out, dp_out = super().forward(x)
        edge_out, dp_out = edge_out[..., :h, :w], dp_out[..., :h, :w]
        # IRNet averages the logits of the image and of the flip brought back, then takes the sigmoid
        edge = torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)
        return edge, dp_out[0]


# Buffers that IRNet's AffinityDisplacementLoss saves into its checkpoints; inference does not use them.
LOSS_BUFFER_KEY = re.compile(r"^(path_indices\d+|disp_target)$")


def load_irn_weights(model, path):
    """Strictly load an IRN checkpoint (ours or IRNet's) into Net / EdgeDisplacement /
    AffinityDisplacementLoss. Only the reference's loss buffers (path_indices*, disp_target) are
    dropped, where IRNet loads with strict=False; anything else that does not fit is a UserError."""
    what, step = "IRN weights", "step train_irn"
    state = torchutils.read_state_dict(path, what, written_by=step)
    state = {k: v for k, v in state.items() if not LOSS_BUFFER_KEY.match(k)}
    return torchutils.load_state_dict_checked(model, state, f"{what} {path}")
