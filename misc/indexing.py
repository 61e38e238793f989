"""Pixel pairs and the random walk: IRNet's path indices and boundary affinities, AffinityNet's (PSA's)
pair set, affinity labels, and one sparse walk for both.

Names, argument meanings, shapes and dtypes of the IRNet part follow IRNet's misc/indexing.py so that
code written against it (AffinityDisplacementLoss, make_sem_seg_labels) works unchanged.

A "direction" is an offset (dy, dx) to a partner pixel within `radius`, taken from one half-plane
(dy > 0, or dy == 0 and dx > 0) so every unordered pair is counted once. Its "path" is the set of
pixels lying within distance 1 of the segment from (0, 0) to (dy, dx); the IRNet affinity of the pair is
1 - (largest boundary score on the path). AffinityNet predicts the affinity of each pair directly.

The walk: pair weights (IRNet: path affinity ** beta for every pair inside the grid; PSA: predicted
affinity ** beta for pairs whose source lies in rows [0, h - rf) and columns [rf, w - rf)) make one
symmetric matrix with ones on the diagonal, normalised by its column sums (pair_transition), applied
2^t times as a sparse product (_apply_steps).
"""
import contextlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F


def _search_directions(radius):
    """Half-plane offsets (dy, dx) with 0 < dy^2 + dx^2 < radius^2, in IRNet's enumeration order."""
    reach = int(np.ceil(radius) - 1)
    dirs = [(0, dx) for dx in range(1, reach + 1) if dx * dx < radius * radius]
    for dy in range(1, reach + 1):
        dirs += [(dy, dx) for dx in range(-reach, reach + 1) if dx * dx + dy * dy < radius * radius]
    return dirs


def _path_coords(dy, dx):
    """Pixels of the bounding box closer than 1 to the line through (0,0) and (dy,dx).

    Ordered far-to-near (by |y| + |x|, ties in scan order), so coords[0] is the destination
    and coords[-1] the source (0, 0).
    """
    len_sq = dy * dy + dx * dx
    coords = [(y, x)
              for y in range(min(0, dy), max(0, dy) + 1)
              for x in range(min(0, dx), max(0, dx) + 1)
              if (dy * x - dx * y) ** 2 < len_sq]  # squared distance to the line < 1
    coords.sort(key=lambda c: -(abs(c[0]) + abs(c[1])))
    return coords


class PathIndex:
    """Every pixel pair within `radius` on a (height, width) grid, with the pixels of its path.

    Attributes (IRNet's):
      radius, radius_floor = ceil(radius) - 1 (largest |offset| component),
      search_paths: list, one int64 array (n_dirs_of_len, path_len, 2) of path offsets per path length
        (ascending), destination first in each path,
      search_dst: int64 (n_dirs, 2), the destination offset of every direction, same order,
      path_indices: list of int64 arrays (n_dirs_of_len, path_len, n_src) of flat pixel indices,
      src_indices: int64 (n_src,), dst_indices: int64 (n_dirs, n_src), for default_size.
    Sources are the pixels of the grid cropped by radius_floor at the bottom, left and right, so
    each destination stays inside the grid.
    """

    def __init__(self, radius, default_size):
        self.radius = radius
        self.radius_floor = int(np.ceil(radius) - 1)
        self.search_paths, self.search_dst = self.get_search_paths_dst(radius)
        self.default_size = tuple(int(s) for s in default_size)
        self.path_indices, self.src_indices, self.dst_indices = self.get_path_indices(self.default_size)
        # same arrays under the names some IRNet-derived code uses
        self.default_path_indices = self.path_indices
        self.default_src_indices = self.src_indices
        self.default_dst_indices = self.dst_indices

    def get_search_paths_dst(self, max_radius=5):
        by_length = {}
        for dy, dx in _search_directions(max_radius):
            coords = _path_coords(dy, dx)
            by_length.setdefault(len(coords), []).append(coords)
        search_paths = [np.asarray(by_length[n], dtype=np.int64) for n in sorted(by_length)]
        search_dst = np.concatenate([p[:, 0] for p in search_paths], axis=0)
        return search_paths, search_dst

    def crop_size(self, size):
        """(height, width) of the source grid for a full grid of `size`."""
        return size[0] - self.radius_floor, size[1] - 2 * self.radius_floor

    def get_path_indices(self, size):
        height, width = size
        crop_h, crop_w = self.crop_size(size)
        if crop_h <= 0 or crop_w <= 0:
            raise ValueError(f"grid {size} too small for radius {self.radius}")
        ys, xs = np.meshgrid(np.arange(crop_h), np.arange(crop_w), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1) + self.radius_floor
        # flat index of source pixel + path offset, for every (direction, path pixel, source)
        path_indices = [(p[:, :, 0, None] + ys) * width + (p[:, :, 1, None] + xs) for p in self.search_paths]
        src_indices = ys * width + xs
        dst_indices = np.concatenate([p[:, 0] for p in path_indices], axis=0)
        return path_indices, src_indices.astype(np.int64), dst_indices.astype(np.int64)


def edge_to_affinity(edge, paths_indices):
    """Affinity of each pair = 1 - max boundary score along its path.

    edge: (B, ...) tensor whose trailing dims flatten to the grid the indices refer to.
    paths_indices: list of (n_dirs_of_len, path_len, n_src) int arrays or tensors.
    Returns (B, n_dirs, n_src), directions in the order of the list.
    """
    edge = edge.reshape(edge.size(0), -1)
    aff = []
    for ind in paths_indices:
        ind = torch.as_tensor(ind, device=edge.device)
        vals = edge[:, ind.reshape(-1)].view(edge.size(0), *ind.shape)
        # max (not amax): on ties the gradient goes to one path pixel, as a max-pool's does
        aff.append(1 - vals.max(dim=2).values)
    return torch.cat(aff, dim=1)


def affinity_labels(segm_label, indices_from, indices_to, num_labels):
    """Pair labels from a segmentation label map (IRNet's GetAffinityLabelFromIndices).

    segm_label: (h, w) class indices; values >= num_labels (the data set's 1 + classes, so 255) are ignored.
    indices_from: (n_src,), indices_to: (n_dirs, n_src) flat indices (PathIndex.src/dst_indices).
    Returns float32 tensors (n_dirs, n_src): bg_pos (both background), fg_pos (both the same
    foreground class), neg (different classes); a pair touching an ignored pixel is in none.
    """
    flat = np.asarray(segm_label).reshape(-1)
    lab_from = flat[np.asarray(indices_from)][None, :]
    lab_to = flat[np.asarray(indices_to)]
    valid = (lab_from < num_labels) & (lab_to < num_labels)
    same = lab_from == lab_to
    pos = same & valid
    bg_pos = pos & (lab_from == 0)
    fg_pos = pos & (lab_from > 0)
    neg = ~same & valid
    return tuple(torch.from_numpy(a.astype(np.float32)) for a in (bg_pos, fg_pos, neg))


def _edge_grid(x, edge, dtype=None):
    height, width = x.shape[-2:]
    if edge.numel() != height * width:
        raise ValueError(f"edge has {tuple(edge.shape)}, expected {height}x{width} values")
    return edge.reshape(1, height, width).to(dtype or x.dtype)


def pair_transition(weights, directions, valid=None):
    """The random walk's one-step operator from forward pair weights, without the n x n matrix.

    weights: (n_dirs, h, w); weights[d, y, x] is the weight of the pair ((y, x), (y, x) + directions[d]).
    directions: (n_dirs, 2) half-plane offsets (dy, dx), dy >= 0. valid: optional bool, broadcastable to
    weights, marking the pairs that exist; a pair whose partner lies outside the grid never does.
    The operator is T = A / (column sums of A), A the symmetric matrix with A[p, q] = A[q, p] = the pair's
    weight and A[p, p] = 1. Returns (neighbors, weights), both (D, h*w), D = 1 + 2 * n_dirs (self, each
    direction, its opposite): one step is  x_new[:, j] = sum_d weights[d, j] * x[:, neighbors[d, j]],
    i.e. x @ T. Missing pairs get weight 0 (their neighbour index is clamped into the grid).
    """
    n_dirs, height, width = weights.shape
    dev = weights.device
    if n_dirs == 0:  # no pairs (radius <= 1): each pixel keeps its value
        return (torch.arange(height * width, device=dev).view(1, -1),
                torch.ones(1, height * width, dtype=weights.dtype, device=dev))
    dirs = torch.as_tensor(np.asarray(directions), device=dev).view(n_dirs, 2)
    dy, dx = dirs[:, 0].view(-1, 1, 1), dirs[:, 1].view(-1, 1, 1)
    ys = torch.arange(height, device=dev).view(-1, 1)
    xs = torch.arange(width, device=dev).view(1, -1)
    exists = (ys + dy < height) & (xs + dx >= 0) & (xs + dx < width)  # dy >= 0 always
    if valid is not None:
        exists = exists & torch.as_tensor(valid, device=dev)
    w_fwd = weights * exists
    # the opposite direction: the pair (p - d, p) seen from p, same weight by symmetry
    rf = int(dirs.abs().max())
    pad_w = width + 2 * rf
    w_pad = F.pad(w_fwd, (rf, rf, rf, rf))
    rev_idx = ((ys + rf - dy) * pad_w + (xs + rf - dx)).reshape(n_dirs, -1)
    w_rev = torch.gather(w_pad.reshape(n_dirs, -1), 1, rev_idx)

    ones = torch.ones(1, height * width, dtype=weights.dtype, device=dev)
    weights = torch.cat([ones, w_fwd.reshape(n_dirs, -1), w_rev], dim=0)
    weights = weights / weights.sum(dim=0, keepdim=True)  # column normalisation, self-loop included

    def flat(oy, ox):
        return ((ys + oy).clamp(0, height - 1) * width + (xs + ox).clamp(0, width - 1)).reshape(len(oy), -1)

    neighbors = torch.cat([(ys * width + xs).reshape(1, -1), flat(dy, dx), flat(-dy, -dx)], dim=0)
    return neighbors, weights


def path_affinity(edge, radius=5):
    """IRNet's pair affinities for every in-grid source: 1 - the largest boundary score on the pair's path.

    edge: (h, w). Returns (aff (n_dirs, h, w), directions (n_dirs, 2)) in PathIndex.search_dst order;
    entries of pairs that leave the grid are meaningless (pair_transition drops them).
    """
    height, width = edge.shape[-2:]
    edge = edge.reshape(height, width)
    dev = edge.device
    reach = int(np.ceil(radius) - 1)
    path_index = PathIndex(radius=radius, default_size=(reach + 1, 2 * reach + 1))  # only its paths are used
    rf = path_index.radius_floor
    # a grid padded by rf on all sides (any pad value works: the pad is only on paths of pairs that
    # leave the grid)
    pad_w = width + 2 * rf
    edge_padded = F.pad(edge, (rf, rf, rf, rf), value=1.0).reshape(1, -1)
    ys = torch.arange(height, device=dev).view(-1, 1)
    xs = torch.arange(width, device=dev).view(1, -1)
    src = ((ys + rf) * pad_w + xs + rf).reshape(-1)
    aff = []
    for p in path_index.search_paths:
        offs = torch.as_tensor(p, device=dev)
        ind = src + (offs[:, :, 0, None] * pad_w + offs[:, :, 1, None])
        aff.append(1 - edge_padded[0, ind.reshape(-1)].view(ind.shape).amax(dim=1))
    return torch.cat(aff, dim=0).view(-1, height, width), path_index.search_dst


def sparse_transition(edge, radius=5, beta=10):
    """IRNet's one-step operator on an (h, w) grid: pair weights aff^beta for every pair inside the grid
    (the padding trick of the dense reference walk, tests/dense_walk.py: every in-image pixel is a source). See pair_transition."""
    aff, directions = path_affinity(edge, radius)
    return pair_transition(torch.pow(aff, beta), directions)


# ---------------------------------------------------------------- PSA's pair set and walk

def pair_indices(radius, size):
    """Flat indices of AffinityNet's pixel pairs on an (h, w) grid (PSA's get_indices_of_pairs).

    Sources: the grid without its bottom rf rows and its left and right rf columns (rf = ceil(radius) - 1),
    row-major; dst[d] = each source moved by the d-th offset of _search_directions(radius).
    Returns int64 src (n_src,), dst (n_dirs, n_src); the same arrays as PathIndex's src/dst_indices,
    but in _search_directions order (PathIndex groups directions by path length).
    """
    height, width = int(size[0]), int(size[1])
    directions = _search_directions(radius)
    if not directions:  # radius <= 1: no pairs (PSA slices full[:-0, 0:-0], which is empty)
        return np.zeros(0, np.int64), np.zeros((0, 0), np.int64)
    rf = int(np.ceil(radius) - 1)
    crop_h, crop_w = height - rf, width - 2 * rf
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"grid {height}x{width} too small for radius {radius}: it needs at least "
                         f"{rf + 1} rows and {2 * rf + 1} columns")
    full = np.arange(height * width, dtype=np.int64).reshape(height, width)
    src = full[:crop_h, rf:rf + crop_w].reshape(-1)
    dst = np.stack([full[dy:dy + crop_h, rf + dx:rf + dx + crop_w].reshape(-1)
                    for dy, dx in directions])
    return src, dst


def source_mask(size, radius=5, device=None):
    """bool (h, w): the sources of PSA's pairs, rows [0, h - rf) and columns [rf, w - rf)."""
    height, width = int(size[0]), int(size[1])
    rf = max(int(np.ceil(radius) - 1), 0)
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    mask[:max(height - rf, 0), rf:max(width - rf, rf)] = True
    return mask


def pairs_to_grid(aff, size, radius=5):
    """(..., n_dirs, n_src) affinities of PSA's pairs (the training form) -> (..., n_dirs, h, w) per source
    pixel, as random_walk takes them; pixels that are no source get 0."""
    height, width = int(size[0]), int(size[1])
    rf = int(np.ceil(radius) - 1)
    grid = aff.new_zeros(aff.shape[:-1] + (height, width))
    if aff.shape[-2] == 0:  # no directions (radius <= 1)
        return grid
    grid[..., :height - rf, rf:width - rf] = aff.reshape(aff.shape[:-1] + (height - rf, width - 2 * rf))
    return grid


def cam_walk_scores(high_res, keys, alpha, num_classes, stride=8):
    """The scores PSA's walk propagates (psa infer_aff.py:96-110), float32 (1 + num_classes, h, w).

    high_res: (K, H, W) CAMs of the 0-based classes `keys` at image size. Channel k + 1 holds class k
    (0 for absent classes), channel 0 the background (1 - max over the class channels) ** alpha; the maps
    are zero-padded at the bottom and right to a multiple of `stride` (padding is 0 in every channel,
    background included) and averaged over stride x stride blocks: h, w = ceil(H / stride), ceil(W / stride).
    """
    high_res = np.asarray(high_res, dtype=np.float32)
    height, width = high_res.shape[-2:]
    full = np.zeros((num_classes + 1, height, width), np.float32)
    full[np.asarray(keys, dtype=np.int64).reshape(-1) + 1] = high_res
    full[0] = (1 - np.max(full[1:], axis=0)) ** alpha
    pad_h, pad_w = -height % stride, -width % stride
    full = np.pad(full, ((0, 0), (0, pad_h), (0, pad_w)))
    return F.avg_pool2d(torch.from_numpy(full), stride, stride)


@contextlib.contextmanager
def _single_thread_on(device):
    if device.type != "cpu":
        yield
        return
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


def propagate_to_edge(x, edge, radius=5, beta=10, exp_times=8, walk_dtype=torch.float64):
    """Random walk of the CAMs over the boundary-aware affinities (IRNet's propagate_to_edge).

    x: (K, h, w) CAMs at stride 4, edge: (1, h, w) boundary probability in [0, 1].
    Returns (K, 1, h, w), dtype and device of x: x * (1 - edge) times T^(2^exp_times).
    Same result as the dense reference walk (tests/dense_walk.py), but T is applied 2^exp_times times as a sparse matrix
    (69 entries per row for radius 5): O(n) memory, O(n * 2^exp_times) time.
    The walk runs in `walk_dtype`: in float32 the rounding of 256 successive sparse products adds up
    to ~1e-4 of the maximum, in float64 it is ~1e-7, and this product is memory-bound, so it costs
    about the same.
    On CPU it runs on one thread (restored afterwards): the walk is 2^exp_times short dependent
    products, and with several threads each one waits at a barrier for a core; on a busy machine
    that wait is a scheduler slice per product (measured 4 s instead of 0.03 s for a 24x28 map).
    """
    with _single_thread_on(x.device):
        return _walk(x, edge, radius, beta, exp_times, walk_dtype)


def _walk(x, edge, radius, beta, exp_times, walk_dtype):
    height, width = x.shape[-2:]
    edge = _edge_grid(x, edge, walk_dtype)
    neighbors, weights = sparse_transition(edge, radius=radius, beta=beta)
    walk = x.reshape(-1, height, width).to(walk_dtype) * (1 - edge)
    return _apply_steps(walk, neighbors, weights, 2 ** exp_times).reshape(-1, 1, height, width).to(x.dtype)


def _apply_steps(x, neighbors, weights, steps):
    """x (C, h, w) times T^steps, T the operator (neighbors, weights) of pair_transition; (C, h*w)."""
    n = neighbors.size(1)
    # x_new^T = M x^T with M[j, neighbors[d, j]] = weights[d, j]: one CSR row per pixel
    n_nb = neighbors.size(0)
    crow = torch.arange(0, n * n_nb + 1, n_nb, device=x.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        mat = torch.sparse_csr_tensor(crow, neighbors.t().reshape(-1), weights.t().reshape(-1),
                                      (n, n), check_invariants=False)
    walk = x.reshape(-1, n).t().contiguous()  # (n, C): the pixel axis is the one M contracts
    for _ in range(steps):
        walk = mat @ walk
    return walk.t()


def random_walk(x, aff, radius=5, beta=8, logt=8, walk_dtype=torch.float64):
    """AffinityNet's random walk (PSA's infer_aff.py:103-114, also SEAM's), without the n x n matrix.

    x: (C, h, w) scores on the affinity grid (cam_walk_scores); aff: (n_dirs, h, w) affinities at that
    grid, aff[d, y, x] = affinity of (y, x) and (y, x) + _search_directions(radius)[d] (pairs_to_grid
    turns the training form into this). Only PSA's pairs are used: sources in rows [0, h - rf) and columns
    [rf, w - rf), rf = ceil(radius) - 1; other entries are ignored. Returns x @ T^(2^logt), (C, h, w) in
    x's dtype and device, T = aff^beta (symmetric, ones on the diagonal) divided by its column sums; every
    channel walks, the background too, and nothing multiplies x first (IRNet's (1 - edge) is not here).
    It runs in `walk_dtype` on one CPU thread, as propagate_to_edge does.
    """
    height, width = x.shape[-2:]
    directions = _search_directions(radius)
    if aff.shape != (len(directions), height, width):
        raise ValueError(f"aff has {tuple(aff.shape)}, expected {(len(directions), height, width)}")
    with _single_thread_on(x.device):
        weights = torch.pow(aff.to(device=x.device, dtype=walk_dtype), beta)
        neighbors, weights = pair_transition(weights, directions, source_mask((height, width), radius, x.device))
        out = _apply_steps(x.reshape(-1, height, width).to(walk_dtype), neighbors, weights, 2 ** logt)
    return out.reshape(-1, height, width).to(x.dtype)
