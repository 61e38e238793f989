"""The dense reference random walk (IRNet's formulation): the n x n affinity matrix, its column-normalised power
T^(2^t) by repeated squaring, and the CAMs times T. O(n^3) time and several n x n matrices, so it lives here,
for the tests and benchmarks that check the sparse walk of misc/indexing.py against it."""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from misc.indexing import PathIndex, _edge_grid, edge_to_affinity  # noqa: E402


def affinity_sparse2dense(affinity_sparse, ind_from, ind_to, n_vertices):
    """Dense symmetric (n, n) affinity with ones on the diagonal, on the device of the input."""
    aff = affinity_sparse.reshape(-1)
    ind_from = torch.as_tensor(ind_from, device=aff.device).reshape(1, -1)
    ind_to = torch.as_tensor(ind_to, device=aff.device)
    ind_from = ind_from.expand_as(ind_to).reshape(-1)
    ind_to = ind_to.reshape(-1)
    diag = torch.arange(n_vertices, device=aff.device)
    rows = torch.cat([ind_from, diag, ind_to])
    cols = torch.cat([ind_to, diag, ind_from])
    vals = torch.cat([aff, torch.ones(n_vertices, dtype=aff.dtype, device=aff.device), aff])
    dense = torch.zeros(n_vertices, n_vertices, dtype=aff.dtype, device=aff.device)
    dense.index_put_((rows, cols), vals, accumulate=True)  # sums duplicates, as a sparse->dense would
    return dense


def to_transition_matrix(affinity_dense, beta, times):
    """aff^beta normalised so each column sums to 1, then squared `times` times (T^(2^times))."""
    scaled = torch.pow(affinity_dense, beta)
    trans = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(times):
        trans = trans @ trans
    return trans


def propagate_to_edge_dense(x, edge, radius=5, beta=10, exp_times=8):
    """Reference random walk: dense n x n transition matrix squared exp_times times.

    O(n^3) time, several n x n matrices: only for tests and benchmarks.
    x: (K, h, w) CAMs, edge: (1, h, w) boundary probability. Returns (K, 1, h, w).
    """
    height, width = x.shape[-2:]
    edge = _edge_grid(x, edge)
    # pad so every in-image pixel can be a source; the padding never lies on an in-image pair's path
    pad_h, pad_w = height + radius, width + 2 * radius
    path_index = PathIndex(radius=radius, default_size=(pad_h, pad_w))
    edge_padded = F.pad(edge, (radius, radius, 0, radius), mode="constant", value=1.0)
    aff = edge_to_affinity(edge_padded[None], path_index.path_indices)
    dense = affinity_sparse2dense(aff, path_index.src_indices, path_index.dst_indices, pad_h * pad_w)
    dense = dense.view(pad_h, pad_w, pad_h, pad_w)[:-radius, radius:-radius, :-radius, radius:-radius]
    dense = dense.reshape(height * width, height * width)
    trans = to_transition_matrix(dense, beta=beta, times=exp_times)
    x = x.reshape(-1, height, width) * (1 - edge)
    rw = x.reshape(-1, height * width) @ trans
    return rw.view(rw.size(0), 1, height, width)
