"""AffinityNet of PSA on ResNet-38 (jiwoon-ahn/psa network/resnet38_aff.py), its pair set and loss.

Features: f8_3 = elu(1x1 conv of conv4, 512 -> 64), f8_4 = elu(conv5, 1024 -> 128), f8_5 = elu(conv6,
4096 -> 256), then elu(f9) of their concatenation (448 -> 448), all without bias, at stride 8. The
affinity of two pixels i, j is exp(-mean over the 448 channels of |f_i - f_j|).

Pairs (PSA's get_indices_of_pairs, psa/tool/pyutils.py:125-159): the half-plane offsets (dy, dx)
with dx^2 + dy^2 < radius^2 (34 for radius 5), in misc.indexing._search_directions order; sources
are the pixels in rows [0, h - r) and columns [r, w - r) of the stride-8 map (r = radius - 1), with
no padding: pixels in the bottom r rows or the outer r columns are never sources.
"""
import functools

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc.indexing import _search_directions
from net import resnet38d

RADIUS = 5


@functools.lru_cache(maxsize=64)
def _pair_indices(radius, height, width):
    reach = radius - 1  # PSA's radius_floor: the largest |offset| component
    directions = _search_directions(radius)
    src_h, src_w = height - reach, width - 2 * reach
    if not directions:
        # radius 1: no pair at all. PSA then slices full[:-0, 0:-0], which is empty, so it has no
        # sources either (psa/tool/pyutils.py:143).
        return np.zeros(0, np.int64), np.zeros((0, 0), np.int64)
    if src_h <= 0 or src_w <= 0:
        raise ValueError(f"a {height}x{width} feature map has no pair sources for radius {radius}: "
                         f"it needs at least {reach + 1} rows and {2 * reach + 1} columns")
    full = np.arange(height * width, dtype=np.int64).reshape(height, width)
    src = full[:src_h, reach:reach + src_w].reshape(-1)
    dst = np.stack([full[dy:dy + src_h, reach + dx:reach + dx + src_w].reshape(-1) for dy, dx in directions])
    src.setflags(write=False)
    dst.setflags(write=False)
    return src, dst


def pair_indices(radius, size):
    """PSA's pair set on a (height, width) map: (src (n_src,), dst (n_dirs, n_src)) int64 flat
    indices; pair (d, k) joins src[k] and dst[d, k]. PSA returns dst flattened (dst.reshape(-1))."""
    return _pair_indices(int(radius), int(size[0]), int(size[1]))


def seam_radius(height, width, radius=RADIUS):
    """SEAM's rule for small maps (seam/network/resnet38_aff.py:47-48): when the shorter side is
    below 2 * radius + 1, the radius becomes (shorter side - 1) // 2."""
    min_edge = min(height, width)
    return (min_edge - 1) // 2 if min_edge < 2 * radius + 1 else radius


class Net(resnet38d.Net):
    """forward(x) -> (N, n_dirs, n_src) affinities of pair_indices(radius, feature size), PSA's order.

    seam_small_maps=True applies seam_radius (SEAM's copy of this network); PSA's has a fixed
    radius and rejects maps too small for it."""

    NOT_TRAINING = ("conv1a", "b2", "b2_1", "b2_2")  # psa/network/resnet38_aff.py:24

    def __init__(self, backbone_weights="none", from_scratch=False, radius=RADIUS, seam_small_maps=False,
                 width=1.0):
        super().__init__(backbone_weights, from_scratch, width)
        c = resnet38d.channels(width)
        self.f8_3 = nn.Conv2d(c(512), c(64), 1, bias=False)
        self.f8_4 = nn.Conv2d(c(1024), c(128), 1, bias=False)
        self.f8_5 = nn.Conv2d(c(4096), c(256), 1, bias=False)
        self.f9 = nn.Conv2d(c(64) + c(128) + c(256), c(448), 1, bias=False)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.kaiming_normal_(self.f8_5.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        self.from_scratch_layers = [self.f8_3, self.f8_4, self.f8_5, self.f9]  # lr x10
        self.radius = radius
        self.seam_small_maps = seam_small_maps

    def features(self, x):
        """x (N, 3, H, W) -> (N, 448, ceil(H/8), ceil(W/8)) affinity features."""
        d = self.forward_as_dict(x)
        f8_3 = F.elu(self.f8_3(d["conv4"]))
        f8_4 = F.elu(self.f8_4(d["conv5"]))
        f8_5 = F.elu(self.f8_5(d["conv6"]))
        return F.elu(self.f9(torch.cat([f8_3, f8_4, f8_5], dim=1)))

    def radius_for(self, height, width):
        return seam_radius(height, width, self.radius) if self.seam_small_maps else self.radius

    def forward(self, x, to_dense=False):
        """(N, n_dirs, n_src) affinities; to_dense=True (N = 1 only, as PSA's :60-73): the symmetric
        (h*w, h*w) matrix with these affinities at (src, dst) and (dst, src), ones on the diagonal,
        zeros elsewhere (pixels that are no pair's source keep only the pairs others make with them)."""
        feat = self.features(x)
        h, w = feat.shape[2:]
        src, dst = pair_indices(self.radius_for(h, w), (h, w))
        aff = pair_affinity(feat, src, dst)
        if not to_dense:
            return aff
        if x.size(0) != 1:
            raise ValueError("to_dense takes one image (PSA's dense form ignores the batch dimension)")
        return affinity_to_dense(aff[0], src, dst, h * w)


def pair_affinity(feat, src, dst):
    """exp(-mean_c |f[src] - f[dst]|) for feat (N, C, h, w): (N, n_dirs, n_src)."""
    f = feat.flatten(2)
    src, dst = _as_index(src, f.device), _as_index(dst, f.device)
    f_src = f[:, :, src].unsqueeze(2)  # (N, C, 1, n_src)
    f_dst = f[:, :, dst.reshape(-1)].view(f.size(0), f.size(1), *dst.shape)  # (N, C, n_dirs, n_src)
    return torch.exp(-torch.mean(torch.abs(f_dst - f_src), dim=1))


def _as_index(ind, device):
    # a copy: pair_indices' cached arrays are read-only, which torch.as_tensor warns about
    return ind.to(device) if torch.is_tensor(ind) else torch.tensor(ind, dtype=torch.int64, device=device)


def affinity_to_dense(aff, src, dst, n):
    """aff (n_dirs, n_src) -> dense symmetric (n, n), diagonal 1. No pair occurs twice (the offsets
    are a half-plane), so assignment equals PSA's sparse -> dense sum."""
    src, dst = _as_index(src, aff.device), _as_index(dst, aff.device)
    rows = src.unsqueeze(0).expand_as(dst).reshape(-1)
    cols = dst.reshape(-1)
    dense = torch.zeros(n, n, dtype=aff.dtype, device=aff.device)
    dense[rows, cols] = aff.reshape(-1)
    dense[cols, rows] = aff.reshape(-1)
    dense.fill_diagonal_(1)
    return dense


def affinity_loss(aff, bg_label, fg_label, neg_label, sum_over_processes=None, world_size=1):
    """PSA's AffinityNet loss (psa/train_aff.py:101-113): label-weighted means over the batch of
    -log(aff + 1e-5) on background pairs, on same-foreground pairs, and -log(1 + 1e-5 - aff) on
    different-class pairs, each divided by (label count + 1e-5); total = bg/4 + fg/4 + neg/2.

    aff and the three float labels share a shape, e.g. (N, 34, n_src). Returns dict(bg, fg, neg,
    total). Under DDP, as net.resnet50_irn.irn_loss: sum_over_processes sums a tensor over the
    world_size processes; the counts are then those of the global batch and each process's total
    is scaled by world_size, so DDP's mean of the gradients is the global-batch gradient; bg, fg,
    neg are the global values (detached), total is this process's share for backward."""
    eps = 1e-5
    aff = aff.float()  # near 1, bf16 steps by 0.004: keep the logs in fp32 under autocast
    pos = -torch.log(aff + eps)
    num = torch.stack([(bg_label * pos).sum(), (fg_label * pos).sum(),
                       (neg_label * -torch.log(1.0 + eps - aff)).sum()])
    count = torch.stack([bg_label.sum(), fg_label.sum(), neg_label.sum()]).to(num.dtype)
    if sum_over_processes is None:
        return _combine(num / (count + eps))
    both = sum_over_processes(torch.cat([num.detach(), count]))
    num_all, count_all = both[:3], both[3:]
    share = _combine(world_size * num / (count_all + eps))
    logged = _combine(num_all / (count_all + eps))
    return dict(bg=logged["bg"], fg=logged["fg"], neg=logged["neg"], total=share["total"])


def _combine(means):
    bg, fg, neg = means.unbind()
    return dict(bg=bg, fg=fg, neg=neg, total=bg / 4 + fg / 4 + neg / 2)
