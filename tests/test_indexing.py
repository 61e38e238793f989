"""misc.indexing: pixel-pair indices, affinity labels, and the sparse random walk against the dense one."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dense_walk
from misc import indexing
from voc12 import CLASS_NAMES


def brute_force_dirs(radius):
    """Half-plane offsets within the radius, counted by hand: dy > 0, or dy == 0 and dx > 0."""
    r = int(np.ceil(radius))
    return {(dy, dx) for dy in range(0, r + 1) for dx in range(-r, r + 1)
            if (dy > 0 or (dy == 0 and dx > 0)) and dy * dy + dx * dx < radius * radius}


@pytest.mark.parametrize("radius, n_dirs", [(5, 34), (10, 152)])
def test_path_index_neighbour_counts(radius, n_dirs):
    size = (3 * radius, 4 * radius)
    pi = indexing.PathIndex(radius=radius, default_size=size)
    dirs = {tuple(d) for d in pi.search_dst.tolist()}
    assert dirs == brute_force_dirs(radius)
    assert len(pi.search_dst) == n_dirs  # the counts IRNet's loss is built for
    assert pi.radius_floor == radius - 1

    crop_h, crop_w = size[0] - pi.radius_floor, size[1] - 2 * pi.radius_floor
    assert pi.src_indices.shape == (crop_h * crop_w,)
    assert pi.dst_indices.shape == (n_dirs, crop_h * crop_w)
    assert sum(p.shape[0] for p in pi.path_indices) == n_dirs
    assert all(p.dtype == np.int64 for p in pi.path_indices)
    assert pi.default_src_indices is pi.src_indices

    # each path starts at the destination, ends at the source, and stays inside the grid
    width = size[1]
    offset = pi.search_dst[:, 0:1] * width + pi.search_dst[:, 1:2]
    assert np.array_equal(pi.dst_indices - pi.src_indices[None], np.broadcast_to(offset, pi.dst_indices.shape))
    for p in pi.path_indices:
        assert np.all(p[:, -1] == pi.src_indices)
        assert p.min() >= 0 and p.max() < size[0] * size[1]
    assert np.array_equal(np.concatenate([p[:, 0] for p in pi.path_indices]), pi.dst_indices)


def test_paths_are_thin_lines():
    pi = indexing.PathIndex(radius=5, default_size=(10, 20))
    for paths in pi.search_paths:
        for coords in paths:
            dy, dx = coords[0]
            assert tuple(coords[-1]) == (0, 0)
            for y, x in coords:  # every path pixel is closer than 1 to the segment's line
                assert (dy * x - dx * y) ** 2 < dy * dy + dx * dx


def test_edge_to_affinity_is_one_minus_max_on_path():
    gen = torch.Generator().manual_seed(0)
    size = (9, 13)
    pi = indexing.PathIndex(radius=4, default_size=size)
    edge = torch.rand(2, 1, *size, generator=gen)
    aff = indexing.edge_to_affinity(edge, pi.path_indices)
    assert aff.shape == (2, len(pi.search_dst), len(pi.src_indices))
    flat = edge.reshape(2, -1)
    k = 0
    for paths in pi.search_paths:
        for coords in paths:
            for s, src in enumerate(pi.src_indices[:20]):
                on_path = [src + cy * size[1] + cx for cy, cx in coords]
                assert torch.allclose(aff[:, k, s], 1 - flat[:, on_path].amax(dim=1))
            k += 1


def test_affinity_labels_on_crafted_map():
    # background 0, two objects of classes 3 and 7, an ignored (255) band
    label = np.zeros((8, 10), dtype=np.uint8)
    label[1:4, 1:5] = 3
    label[4:7, 5:9] = 7
    label[:, 9] = 255
    pi = indexing.PathIndex(radius=3, default_size=label.shape)
    bg_pos, fg_pos, neg = indexing.affinity_labels(label, pi.src_indices, pi.dst_indices, len(CLASS_NAMES))
    for t in (bg_pos, fg_pos, neg):
        assert t.dtype == torch.float32 and t.shape == pi.dst_indices.shape

    flat = label.reshape(-1)
    a = flat[np.broadcast_to(pi.src_indices, pi.dst_indices.shape)]
    b = flat[pi.dst_indices]
    ignored = (a == 255) | (b == 255)
    assert np.array_equal(bg_pos.numpy() == 1, (a == 0) & (b == 0) & ~ignored)
    assert np.array_equal(fg_pos.numpy() == 1, (a == b) & (a > 0) & ~ignored)
    assert np.array_equal(neg.numpy() == 1, (a != b) & ~ignored)
    # the three kinds are disjoint, every ignored pair is in none, and each kind occurs
    total = bg_pos + fg_pos + neg
    assert total.max() == 1 and total[torch.from_numpy(ignored)].sum() == 0
    assert bg_pos.sum() > 0 and fg_pos.sum() > 0 and neg.sum() > 0
    # a 3-7 pair is negative, a 3-3 pair positive foreground
    w = label.shape[1]
    k = [tuple(d) for d in pi.search_dst.tolist()].index((1, 0))
    s = list(pi.src_indices).index(3 * w + 4)     # (3,4) is class 3, (4,4) background
    assert neg[k, s] == 1
    s = list(pi.src_indices).index(1 * w + 2)     # (1,2) and (2,2) both class 3
    assert fg_pos[k, s] == 1 and neg[k, s] == 0


def test_dense_affinity_and_transition():
    pi = indexing.PathIndex(radius=3, default_size=(6, 8))
    aff = torch.rand(1, len(pi.search_dst), len(pi.src_indices), dtype=torch.float64)
    dense = dense_walk.affinity_sparse2dense(aff, pi.src_indices, pi.dst_indices, 48)
    assert torch.equal(dense, dense.t()) and torch.all(dense.diagonal() == 1)
    trans = dense_walk.to_transition_matrix(dense, beta=10, times=0)
    assert torch.allclose(trans.sum(dim=0), torch.ones(48, dtype=torch.float64))


def ring_edge(h, w, top, left, bottom, right):
    edge = torch.zeros(1, h, w)
    edge[0, top, left:right + 1] = 1
    edge[0, bottom, left:right + 1] = 1
    edge[0, top:bottom + 1, left] = 1
    edge[0, top:bottom + 1, right] = 1
    return edge


@pytest.mark.parametrize("walk", [indexing.propagate_to_edge, dense_walk.propagate_to_edge_dense])
def test_random_walk_does_not_cross_closed_boundary(walk):
    h, w = 24, 28
    edge = ring_edge(h, w, 5, 6, 16, 19)
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[6:16, 7:19] = True
    outside = ~inside & (edge[0] == 0)
    x = torch.zeros(2, h, w)
    x[0, 10, 10] = 1.0    # class 0 seeded inside the ring
    x[1, 1, 1] = 1.0      # class 1 seeded outside
    rw = walk(x, edge)[:, 0]
    assert rw[0][inside].min() > 0          # it spread over the whole inside ...
    assert rw[0][~inside].abs().max() == 0  # ... and not a bit of it leaked out
    assert rw[1][outside].min() > 0
    assert rw[1][inside].abs().max() == 0

    # the same seed with one gap in the ring does get out: the test above can fail
    edge[0, 5, 12] = 0
    rw = walk(x, edge)[:, 0]
    assert rw[0][outside].max() > 0


def test_constant_cam_stays_constant():
    # T is column-normalised, so x @ T averages: a constant map is a fixed point
    gen = torch.Generator().manual_seed(1)
    x = torch.full((1, 12, 15), 0.5, dtype=torch.float64)
    edge = torch.rand(1, 12, 15, generator=gen, dtype=torch.float64) * 0.2
    x = x / (1 - edge)  # so that x * (1 - edge) is exactly constant
    rw = indexing.propagate_to_edge(x, edge)
    assert torch.allclose(rw, torch.full_like(rw, 0.5), atol=1e-10)


def sem_seg_labels(rw, keys, bg_thres=0.25):
    """make_sem_seg_labels' decision: upsample x4, divide by the max, background threshold, argmax."""
    up = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
    up = up / up.max()
    up = F.pad(up, (0, 0, 0, 0, 1, 0), value=bg_thres)
    return np.pad(np.asarray(keys) + 1, (1, 0))[up.argmax(dim=0).numpy()]


def toy_scene(h, w, gen):
    """Blob CAMs and a boundary map around two rectangles, like a small image at stride 4."""
    edge = torch.rand(1, h, w, generator=gen) * 0.1
    cams = torch.zeros(2, h, w)
    boxes = [(h // 6, w // 8, h // 2, w // 2), (h // 2 - 2, w // 2, h - 3, w - 4)]
    for c, (t, l, b, r) in enumerate(boxes):
        edge[0, t:b + 1, l:r + 1][[0, -1]] = 0.9
        edge[0, t:b + 1, l:r + 1][:, [0, -1]] = 0.9
        cy, cx = (t + b) // 2, (l + r) // 2
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cams[c] = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * (min(b - t, r - l) / 3) ** 2))
    return cams, edge


@pytest.mark.parametrize("h, w, kind", [(7, 9, "random"), (20, 30, "random"), (48, 64, "random"),
                                         (24, 32, "toy"), (48, 64, "toy")])
def test_sparse_walk_equals_dense(h, w, kind):
    gen = torch.Generator().manual_seed(h * 1000 + w)
    if kind == "random":
        cams = torch.rand(3, h, w, generator=gen)
        edge = torch.rand(1, h, w, generator=gen) ** 3
    else:
        cams, edge = toy_scene(h, w, gen)
    dense = dense_walk.propagate_to_edge_dense(cams, edge)
    sparse = indexing.propagate_to_edge(cams, edge)
    assert sparse.shape == dense.shape == (cams.shape[0], 1, h, w)
    assert sparse.dtype == torch.float32
    rel = ((sparse - dense).abs().max() / dense.abs().max()).item()
    assert rel <= 1e-4, rel
    keys = np.arange(cams.shape[0]) * 2
    same = (sem_seg_labels(sparse, keys) == sem_seg_labels(dense, keys)).mean()
    assert same >= 0.999, same


@pytest.mark.parametrize("exp_times", [0, 1, 4])
def test_sparse_walk_exact_in_float64(exp_times):
    gen = torch.Generator().manual_seed(exp_times)
    cams = torch.rand(2, 11, 14, generator=gen, dtype=torch.float64)
    edge = torch.rand(1, 11, 14, generator=gen, dtype=torch.float64)
    for beta in (1, 10):
        dense = dense_walk.propagate_to_edge_dense(cams, edge, beta=beta, exp_times=exp_times)
        sparse = indexing.propagate_to_edge(cams, edge, beta=beta, exp_times=exp_times)
        assert sparse.dtype == torch.float64
        assert torch.allclose(sparse, dense, rtol=0, atol=1e-12 * dense.abs().max().item())


def test_sparse_walk_other_radius_and_edge_shapes():
    gen = torch.Generator().manual_seed(3)
    cams = torch.rand(1, 13, 10, generator=gen, dtype=torch.float64)
    edge = torch.rand(1, 13, 10, generator=gen, dtype=torch.float64)
    dense = dense_walk.propagate_to_edge_dense(cams, edge, radius=3, exp_times=3)
    for e in (edge, edge[0], edge[None]):
        sparse = indexing.propagate_to_edge(cams, e, radius=3, exp_times=3)
        assert torch.allclose(sparse, dense, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sparse_walk_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(4)
    cams = torch.rand(3, 30, 40, generator=gen)
    edge = torch.rand(1, 30, 40, generator=gen) ** 3
    cpu = indexing.propagate_to_edge(cams, edge)
    gpu = indexing.propagate_to_edge(cams.cuda(), edge.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert torch.allclose(gpu.cpu(), cpu, rtol=0, atol=1e-5 * cpu.abs().max().item())
