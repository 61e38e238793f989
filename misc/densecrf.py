"""Dense CRF (Krähenbühl & Koltun, NIPS 2011) in PyTorch tensor operations: what pydensecrf computes.

pydensecrf.densecrf.DenseCRF2D, as the project calls it (Potts compatibility, DIAG_KERNEL,
NORMALIZE_SYMMETRIC, a Gaussian and/or a bilateral term, `inference(t)`), rewritten with plain tensor
operations so that it runs on the GPU (and on the CPU) without a compiled extension, and so that one call
refines a batch of images of different sizes: the image index is part of every lattice key, so the images
share one lattice without touching each other and small images do not each pay the kernel-launch cost.

Facts matched (file names are pydensecrf's C++, pydensecrf/densecrf/src/; the pydensecrf2 package this
project installs ships the same C++ and utils.py, byte for byte, as lucasb-eyer/pydensecrf):
- features (densecrf.cpp, addPairwiseGaussian / addPairwiseBilateral): x / sx, y / sy and r / sr, g / sg,
  b / sb in float32, the standard deviations rounded to float32 first, pixels in row-major order;
- elevation (permutohedral.cpp, Permutohedral::init): the float32 scale factors
  float(1 / sqrt((i+2)(i+1)) * float(sqrt(2/3) (d+1))) and the same float32 running sum from the last
  coordinate down;
- the remainder-0 point: round(elevated * float(1/(d+1))) * (d+1). On x86 pydensecrf is built with SSE
  (the installed wheel's code has `ldmxcsr` + `cvtps2dq`): the rounding is the MXCSR's round-to-nearest,
  ties to even, which is torch.round's. (The non-SSE build rounds ties down instead; not matched.)
- padding: the SSE build elevates the pixels four at a time and fills the last block with zero-feature
  points, which are hashed like real ones (their d+1 vertices enter the lattice) but are never splatted
  or sliced. They matter only when they add lattice points, i.e. for the bilateral kernel when the
  top-left pixel is not black; their vertices then relay values during the blur. Matched: one
  zero-feature point per image whose pixel count is not a multiple of 4 (all of them give the same keys).
- rank (pairwise `<` on elevated - rem0, ties broken as the C++ loop does), the wrap of the rank by the
  sum of the rounded coordinates, the barycentric weights with the same float32 operations
  (b[p] = v[rank d-p] - v[rank d-p+1], b[0] = v[rank d] + (1 - v[rank 0])), the vertex keys
  rem0 + canonical[r][rank];
- blur: directions 0..d in that order, new = old + 0.5 (n1 + n2) with n1 = key - 1 except key[j] + d,
  n2 = key + 1 except key[j] - d; a neighbour that is not in the lattice reads as zero;
- slicing with alpha = float(1 / (1 + 2^-d)), accumulated over the vertices in order, with the C++'s two
  roundings: (w * v) * alpha when the value has at most 2 channels (seqCompute: the normalisation and
  2-label CRFs), (w * alpha) * v otherwise (sseCompute);
- NORMALIZE_SYMMETRIC (pairwise.cpp, DenseKernel): norm = float(1 / sqrt(double(K 1) + 1e-20)), filter =
  norm * K(norm * Q); Potts (labelcompatibility.cpp): the pairwise energy is -compat * filter, so a term
  adds fl(compat * filter) to the negative energy;
- mean field (densecrf.cpp, DenseCRF::inference): Q = softmax(-U), then t times
  Q = softmax(-U + sum over the terms in the order added (Gaussian, then bilateral)), softmax as
  expAndNormalize (subtract the max, exp, divide by the sum);
- unaries (pydensecrf/utils.py): unary_from_labels with zero_unsure=False (energies computed in float64,
  stored in float32) and unary_from_softmax (clip to [clip, 1] and log in the input's precision, then
  float32).

Not matched, and why the results still agree on practically every pixel:
- the summation order of the splat: the C++ adds pixel after pixel into each lattice point; here the
  splat is a sparse (CSR) matrix product, whose order and use of fused multiply-adds belong to MKL or
  cuSPARSE. Every other step repeats the C++'s float32 operations in its order, so the lattice (its
  points, weights and neighbours) is the same and values differ by a few ulps;
- Eigen's vectorised exp and label sum in expAndNormalize, and numpy's log in the unary helpers
  (torch's differ by about 1 ulp);
- the C++ stores lattice keys as 16-bit shorts and would wrap coordinates beyond +-32767 (images tens of
  thousands of pixels wide at sxy 1); keys here are int64 and do not wrap.
Checked during development against permutohedral.cpp itself, compiled on its own (105 feature sets:
the project's five kernels on natural images from 5x7 to 500x375, H W % 4 in {0, 1, 3}): the same number
of lattice points, the same barycentric weights bit for bit, the same vertices and neighbours, and with
a splat that adds in the C++'s order the same output bit for bit; tests/test_densecrf.py checks the same
against a straightforward Python lattice. Issue 22 agrees with the C++ on every point it names; what it
leaves out was taken from the C++: the 1e-20 and the square root in double precision, the slice's two
roundings, the rank's tie rule (the earlier coordinate ranks first), and padding points that hold no
value of their own but pass values on in the blur.

Memory, measured on the CPU (benchmarks/bench_crf.py, unaries included): at the peak about 1.3 KB per
pixel with 21 labels and 0.7 KB with 3. The two lattices keep about 350 bytes per pixel; building one,
and the mean field's (pixels x labels) buffers, take the rest for a while. A batch of 32 VOC images
(500x375) at 21 labels needs about 8 GB.
"""
import math
import warnings

import numpy as np
import torch

from misc.pyutils import UserError


class CRFInputError(UserError, ValueError):
    """Input the dense CRF cannot use (wrong dtype or shape, NaN or infinite values).

    A UserError so that the driver prints it as one line; a ValueError for code that catches those."""


# ---------------------------------------------------------------- input checks (shared with misc.imutils)

def _is_tensor(x):
    return isinstance(x, torch.Tensor)


def check_image(img, what="image"):
    """(H, W) of a uint8 (H, W, 3) RGB image (numpy array or tensor); CRFInputError otherwise."""
    if _is_tensor(img):
        uint8 = img.dtype == torch.uint8
    else:
        uint8 = isinstance(img, np.ndarray) and img.dtype == np.uint8
    shape = tuple(img.shape) if hasattr(img, "shape") else None
    if not uint8:
        raise CRFInputError(f"dense CRF: {what} must be a uint8 RGB image (H, W, 3), got "
                            f"{getattr(img, 'dtype', type(img).__name__)} {shape}")
    if len(shape) != 3 or shape[2] != 3 or shape[0] == 0 or shape[1] == 0:
        raise CRFInputError(f"dense CRF: {what} must be a uint8 RGB image (H, W, 3), got shape {shape}")
    return shape[:2]


def check_scores(scores, hw, what="unary"):
    """Check a (C, H, W) float array or tensor of unary energies or probabilities for an (H, W) image."""
    shape = tuple(scores.shape) if hasattr(scores, "shape") else None
    floating = scores.is_floating_point() if _is_tensor(scores) else (
        isinstance(scores, np.ndarray) and scores.dtype.kind == "f")
    if not floating:
        raise CRFInputError(f"dense CRF: {what} must be a float array (C, H, W), got "
                            f"{getattr(scores, 'dtype', type(scores))}")
    if shape is None or len(shape) != 3 or shape[1:] != tuple(hw) or shape[0] == 0:
        raise CRFInputError(f"dense CRF: {what} of shape {shape} does not fit a {hw[0]}x{hw[1]} (H x W) image; "
                            "expected (C, H, W) with C >= 1")
    finite = bool(torch.isfinite(scores).all()) if _is_tensor(scores) else bool(np.isfinite(scores).all())
    if not finite:
        raise CRFInputError(f"dense CRF: {what} holds NaN or infinite values")


def check_labels(labels, hw, n_labels, gt_prob, what="labels"):
    """Check an integer (H, W) label map with values in [0, n_labels) and gt_prob in (0, 1)."""
    shape = tuple(labels.shape) if hasattr(labels, "shape") else None
    if shape != tuple(hw):
        raise CRFInputError(f"dense CRF: {what} {shape} do not match image {tuple(hw)}")
    kind_ok = (not labels.is_floating_point() and not labels.is_complex()) if _is_tensor(labels) else (
        isinstance(labels, np.ndarray) and labels.dtype.kind in "iub")
    if not kind_ok:
        raise CRFInputError(f"dense CRF: {what} must be an integer label map, got {labels.dtype}")
    if not (isinstance(n_labels, (int, np.integer)) and n_labels >= 2):
        raise CRFInputError(f"dense CRF: n_labels must be an integer >= 2, got {n_labels!r}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= n_labels:
        raise CRFInputError(f"dense CRF: {what} hold values in [{lo}, {hi}], outside [0, {n_labels - 1}]")
    if not 0 < gt_prob < 1:
        raise CRFInputError(f"dense CRF: gt_prob must be in (0, 1), got {gt_prob}")


def _check_params(t, gaussian, bilateral):
    if not (isinstance(t, (int, np.integer)) and t >= 0):
        raise CRFInputError(f"dense CRF: the number of iterations must be an integer >= 0, got {t!r}")
    for name, term, keys in (("gaussian", gaussian, ("sxy", "compat")),
                             ("bilateral", bilateral, ("sxy", "srgb", "compat"))):
        if term is None:
            continue
        if set(term) != set(keys):
            raise CRFInputError(f"dense CRF: {name} takes exactly {keys}, got {sorted(term)}")
        for key in keys[:-1]:
            values = np.atleast_1d(np.asarray(term[key], np.float64))
            if not (np.isfinite(values).all() and (values > 0).all()):
                raise CRFInputError(f"dense CRF: {name} {key} must be positive, got {term[key]!r}")
        if not np.isfinite(term["compat"]):
            raise CRFInputError(f"dense CRF: {name} compat must be finite, got {term['compat']!r}")


# ---------------------------------------------------------------- unaries (pydensecrf/utils.py)

def unary_from_labels(labels, n_labels, gt_prob, device=None):
    """Unary energies (n_labels, H, W) float32 of a label map trusted with probability gt_prob.

    pydensecrf.utils.unary_from_labels with zero_unsure=False: -log(gt_prob) at the label,
    -log((1 - gt_prob) / (n_labels - 1)) elsewhere, both computed in float64 and stored in float32."""
    labels = torch.as_tensor(labels, device=device).long()
    n_energy = float(np.float32(-np.log((1.0 - gt_prob) / (n_labels - 1))))
    p_energy = float(np.float32(-np.log(gt_prob)))
    u = torch.full((n_labels,) + tuple(labels.shape), n_energy, dtype=torch.float32, device=labels.device)
    return u.scatter_(0, labels[None], p_energy)


def unary_from_softmax(probs, clip=1e-5, device=None):
    """Unary energies (C, H, W) float32 of probabilities: -log(clip(probs, clip, 1)).

    pydensecrf.utils.unary_from_softmax (scale=None): clipped and logged in the input's precision, then
    cast to float32, whether or not the probabilities sum to 1."""
    probs = torch.as_tensor(probs, device=device)
    return (-torch.log(probs.clamp(clip, 1.0))).float()


# ---------------------------------------------------------------- the permutohedral lattice

_SSE_BLOCK = 4  # permutohedral.cpp elevates sizeof(__m128) / sizeof(float) features at a time
_PACKED_LIMIT = 2 ** 62  # keys whose coordinate ranges fit below this are packed into one int64


def _scale_factors(d):
    """float32 diagonal of the elevation matrix E, as permutohedral.cpp rounds it."""
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * (d + 1)))
    return np.array([1.0 / math.sqrt((i + 2) * (i + 1)) * inv_std_dev for i in range(d)], np.float32)


def _simplices(features):
    """Vertex keys (P, d+1, d) int32 and barycentric weights (P, d+1) float32 of P feature vectors (P, d).

    Vertex r of a point is the lattice point of remainder r of the simplex enclosing its elevation
    (Adams et al. 2010); the float32 operations are permutohedral.cpp's (SSE build), in its order, so
    that points on a simplex boundary land on the same side."""
    p, d = features.shape
    dev = features.device
    down = float(np.float32(1) / np.float32(d + 1))  # 1.0f / (d+1): exact as a Python float
    cf = features * torch.from_numpy(_scale_factors(d)).to(dev)

    # elevated[j] = sum_{k >= j} cf[k] - j cf[j-1], with the running sum taken from the last coordinate
    elevated = torch.empty(p, d + 1, device=dev)
    sm = torch.zeros(p, device=dev)
    for j in range(d, 0, -1):
        elevated[:, j] = sm - j * cf[:, j - 1]
        sm = sm + cf[:, j - 1]
    elevated[:, 0] = sm

    # nearest remainder-0 point: round to nearest, ties to even (the SSE build's cvtps2dq)
    v = torch.round(elevated * down)
    rem0 = (v * (d + 1)).int()
    total = v.sum(1).int()  # small integers: exact in any order

    # rank[i]: place of coordinate i in the descending order of elevated - rem0; ties go to the
    # earlier coordinate, exactly as the C++ double loop counts them
    diff = elevated - rem0.float()
    rank = torch.zeros(p, d + 1, dtype=torch.int32, device=dev)
    for j in range(1, d + 1):  # pairs (i < j): rank[i]++ if diff[i] < diff[j], else rank[j]++
        smaller = diff[:, :j] < diff[:, j:j + 1]
        rank[:, :j] += smaller
        rank[:, j] += (~smaller).sum(1, dtype=torch.int32)

    # the rounded point may be off the plane x . 1 = 0: shift it back by whole steps of d+1
    rank = rank + total[:, None]
    wrap = (rank < 0).int() - (rank > d).int()
    rank = rank + (d + 1) * wrap
    rem0 = rem0 + (d + 1) * wrap

    # barycentric coordinates: b[p] gets +v from the coordinate of rank d-p and -v from that of rank
    # d-p+1 (one rounding, whichever comes first); then b[0] += 1 + b[d+1], float32 as in the SSE code
    v = (elevated - rem0.float()) * down
    by_rank = torch.zeros_like(v).scatter_(1, rank.long(), v).flip(1)  # [:, p]: v of the rank d-p one
    bary = torch.empty_like(v)
    bary[:, 1:] = by_rank[:, 1:] - by_rank[:, :-1]
    bary[:, 0] = by_rank[:, 0] + (1 - by_rank[:, d])

    # vertex r: rem0 + canonical[r][rank] with canonical[r][k] = r if k <= d - r else r - (d+1)
    keys = torch.empty(p, d + 1, d, dtype=torch.int32, device=dev)
    for r in range(d + 1):
        keys[:, r] = rem0[:, :d] + r - (d + 1) * (rank[:, :d] > d - r).int()
    return keys, bary


def _neighbour_steps(d, device):
    """(d+1, d) key offsets of the blur's n1 neighbour along each direction j (n2 is minus it):
    -1 on every coordinate, +d on coordinate j (permutohedral.cpp: n1[j] = key[j] + d); direction d has
    no key coordinate of its own, so it is -1 everywhere."""
    steps = torch.full((d + 1, d), -1, dtype=torch.int64, device=device)
    steps[torch.arange(d), torch.arange(d)] = d
    return steps


def _find_rows(table, queries):
    """Index in `table` (M, k) of unique rows of each query row, or M where absent: one sort of both."""
    m = table.shape[0]
    _, inverse = torch.unique(torch.cat([table, queries]), dim=0, return_inverse=True)
    where = torch.full((int(inverse.max()) + 1,), m, dtype=torch.int64, device=table.device)
    where[inverse[:m]] = torch.arange(m, device=table.device)
    return where[inverse[m:]]


def _index_keys(keys, segment, n_segments):
    """Number the lattice points of the vertex keys (P, d+1, d) of points of images `segment` (P,).

    Returns index (P, d+1), each vertex's lattice point; order (P (d+1),), the vertices sorted by lattice
    point, stably (so in point order within a lattice point); neighbours (d+1, 2, M+1), the blur's n1 and
    n2 of each lattice point along each direction (M where absent, and entry M is the zero row itself);
    M. The C++ hash table becomes one sort: a key, with the image index in front, is packed into one
    int64 when the coordinate ranges allow, so that the sort is of integers and a neighbour is found at
    a constant offset by a binary search; otherwise whole rows are sorted."""
    p, d1, d = keys.shape
    dev = keys.device
    flat = keys.reshape(-1, d)
    seg = segment.repeat_interleave(d1)
    steps = _neighbour_steps(d, dev)
    # one digit per coordinate, with room for a step of d either way so a neighbour never carries
    lo = [int(x) - d for x in flat.amin(0).tolist()]
    radix = [int(x) + d - l + 1 for x, l in zip(flat.amax(0).tolist(), lo)]
    if math.prod(radix) * n_segments < _PACKED_LIMIT:
        strides = [math.prod(radix[c + 1:]) for c in range(d)]
        code = seg * math.prod(radix)
        for c in range(d):
            code += (flat[:, c].long() - lo[c]) * strides[c]
        sorted_code, order = torch.sort(code, stable=True)
        points, counts = torch.unique_consecutive(sorted_code, return_counts=True)
        m = points.numel()
        index = torch.empty_like(order)
        index[order] = torch.repeat_interleave(torch.arange(m, device=dev), counts)
        found = []
        for step in steps.tolist():
            delta = sum(s * st for s, st in zip(step, strides))
            for query in (points + delta, points - delta):
                at = torch.searchsorted(points, query).clamp_(max=m - 1)
                found.append(torch.where(points[at] == query, at, m))
    else:
        points, index = torch.unique(torch.cat([seg[:, None], flat.long()], 1), dim=0, return_inverse=True)
        order = torch.sort(index, stable=True).indices
        m = points.shape[0]
        found = []
        for step in steps:
            step = torch.cat([step.new_zeros(1), step])  # the image index does not move
            found += [_find_rows(points, points + step), _find_rows(points, points - step)]
    pad = torch.full((1,), m, dtype=torch.int64, device=dev)
    neighbours = torch.stack([torch.cat([f, pad]) for f in found]).view(d1, 2, m + 1)
    return index.view(p, d1), order, neighbours, m


class PermutohedralLattice:
    """The permutohedral lattice of N feature vectors (N, d), possibly of several images (`segment`, the
    image index of each vector; images never share a lattice point): permutohedral.cpp's
    Permutohedral::init, and compute(values) = its splat, blur and slice (no normalisation)."""

    def __init__(self, features, segment=None, n_segments=1):
        features = features.float()
        n, d = features.shape
        dev = features.device
        if segment is None:
            segment = torch.zeros(n, dtype=torch.int64, device=dev)
        # the SSE build's zero-feature padding points: hashed, never splatted or sliced
        counts = torch.bincount(segment, minlength=n_segments)
        padded = torch.nonzero(counts % _SSE_BLOCK != 0).flatten()
        points = torch.cat([features, features.new_zeros(padded.numel(), d)])
        keys, bary = _simplices(points)
        index, order, self.neighbours, self.num_points = _index_keys(keys, torch.cat([segment, padded]), n_segments)
        self.n, self.d = n, d
        self.offsets = index[:n].contiguous()
        self.weights = bary[:n].contiguous()
        self.alpha = float(np.float32(1) / (np.float32(1) + np.float32(2.0 ** -d)))

        # splat as a sparse (M, N) matrix, a row per lattice point; padding points leave no entry
        order = order[order < n * (d + 1)]
        crow = torch.zeros(self.num_points + 1, dtype=torch.int64, device=dev)
        crow[1:] = torch.cumsum(torch.bincount(index.view(-1)[order], minlength=self.num_points), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is all we use
            warnings.simplefilter("ignore", UserWarning)
            self._splat = torch.sparse_csr_tensor(crow, order // (d + 1), self.weights.view(-1)[order],
                                                  (self.num_points, n), check_invariants=False)

    def splat(self, values):
        """(N, C) -> (M+1, C) lattice values; the last row is the absent neighbour, always zero."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out = self._splat @ values
        return torch.cat([out, out.new_zeros(1, out.shape[1])])

    def blur(self, lattice_values):
        """[1 2 1] / 2 along directions 0..d in turn: new = old + 0.5 (n1 + n2).
        torch.add(alpha=0.5) rounds as the C++ does, fused or not: 0.5 x is exact."""
        x = lattice_values
        for j in range(self.d + 1):
            nb = x.index_select(0, self.neighbours[j, 0])
            nb += x.index_select(0, self.neighbours[j, 1])
            x = torch.add(x, nb, alpha=0.5)
        return x

    def slice(self, lattice_values, seq=False):
        """(M+1, C) -> (N, C): sum over the vertices, in order, of w alpha v.

        seq: the C++ rounding for values of at most 2 channels, (w v) alpha (seqCompute), rather than
        (w alpha) v (sseCompute); True, False, or a bool tensor (N,) choosing per point."""
        w = self.weights
        if isinstance(seq, torch.Tensor):
            scale = torch.where(seq, 1.0, self.alpha)[:, None]
            c1, c2 = w * scale, torch.where(seq, self.alpha, 1.0)[:, None]
        elif seq:
            c1, c2 = w, self.alpha
        else:
            c1, c2 = w * self.alpha, None
        out = None
        for r in range(self.d + 1):
            term = lattice_values.index_select(0, self.offsets[:, r]).mul_(c1[:, r, None])
            if c2 is not None:
                term.mul_(c2)
            out = term if out is None else out.add_(term)
        return out

    def compute(self, values, seq=False):
        return self.slice(self.blur(self.splat(values)), seq)


# ---------------------------------------------------------------- mean-field inference

def _features(h, w, sxy, image=None, srgb=None, device=None):
    """(H W, 2) or (H W, 5) float32 features in row-major pixel order: x / sx, y / sy [, rgb / srgb]."""
    sx, sy = (sxy, sxy) if np.isscalar(sxy) else sxy
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    cols, scales = [xs.reshape(-1), ys.reshape(-1)], [sx, sy]
    if image is not None:
        sr, sg, sb = (srgb,) * 3 if np.isscalar(srgb) else srgb
        cols += list(image.reshape(-1, 3).float().unbind(1))
        scales += [sr, sg, sb]
    # a tensor divisor (not a Python scalar, which CUDA would turn into a multiplication by its
    # reciprocal) so that the division is float32's, as the C++'s `i / sx`
    return torch.stack(cols, 1) / torch.tensor(np.float32(scales), device=device)


class _Term:
    """One pairwise term: its lattice, NORMALIZE_SYMMETRIC's norm and the Potts weight."""

    def __init__(self, features, segment, n_segments, compat):
        self.lattice = PermutohedralLattice(features, segment, n_segments)
        ones = features.new_ones(features.shape[0], 1)
        k1 = self.lattice.compute(ones, seq=True)[:, 0]  # one channel: seqCompute
        self.norm = (1.0 / torch.sqrt(k1.double() + 1e-20)).float()[:, None]
        self.compat = float(np.float32(compat))

    def energy(self, q, seq):
        """compat * norm K (norm Q): minus the Potts pairwise energy (labelcompatibility.cpp)."""
        return self.lattice.compute(q * self.norm, seq).mul_(self.norm).mul_(self.compat)


def _exp_normalize(x):
    """expAndNormalize (densecrf.cpp): exp(x - max) / sum over the labels."""
    e = torch.exp(x - x.amax(1, keepdim=True))
    return e / e.sum(1, keepdim=True)


def _device_of(device, *tensor_lists):
    if device is not None:
        return torch.device(device)
    for items in tensor_lists:
        for x in items:
            if _is_tensor(x):
                return x.device
    return torch.device("cpu")


@torch.no_grad()
def dense_crf_batch(images, unaries, t=10, gaussian=None, bilateral=None, device=None):
    """Mean-field marginals of several dense CRFs at once: a list of (C_i, H_i, W_i) float32 tensors.

    images: uint8 RGB (H_i, W_i, 3) arrays or tensors; unaries: (C_i, H_i, W_i) float energies (as
    pydensecrf's setUnaryEnergy; see unary_from_labels / unary_from_softmax); t: mean-field iterations;
    gaussian: dict(sxy=, compat=) or None; bilateral: dict(sxy=, srgb=, compat=) or None (sxy and srgb
    may be per-axis / per-channel tuples, as in pydensecrf). The Gaussian term comes first, as in every
    call of the project. device: where to compute; default the unaries' device if they are tensors, else
    the CPU. Each image's result is DenseCRF2D(W_i, H_i, C_i) with those terms, inference(t). Images with
    fewer labels than the batch's largest are padded with labels of infinite energy, which stay at
    probability 0 and change nothing else.
    """
    images, unaries = list(images), list(unaries)
    if len(images) != len(unaries):
        raise CRFInputError(f"dense CRF: {len(images)} images and {len(unaries)} unaries")
    if not images:
        return []
    _check_params(t, gaussian, bilateral)
    sizes = []
    for i, (img, u) in enumerate(zip(images, unaries)):
        hw = check_image(img, f"image {i}" if len(images) > 1 else "image")
        check_scores(u, hw, f"unary {i}" if len(images) > 1 else "unary")
        sizes.append(hw)
    dev = _device_of(device, unaries, images)
    images = [torch.as_tensor(img, device=dev) for img in images]
    unaries = [torch.as_tensor(u, device=dev).float() for u in unaries]
    labels = [u.shape[0] for u in unaries]
    counts = [h * w for h, w in sizes]
    n_img, n_labels = len(images), max(labels)

    segment = torch.repeat_interleave(torch.arange(n_img, device=dev), torch.tensor(counts, device=dev))
    neg_unary = torch.full((sum(counts), n_labels), -math.inf, device=dev)
    start = 0
    for u, c, n in zip(unaries, labels, counts):
        neg_unary[start:start + n, :c] = -u.reshape(c, n).T
        start += n

    terms = []
    if gaussian is not None:
        feats = torch.cat([_features(h, w, gaussian["sxy"], device=dev) for h, w in sizes])
        terms.append(_Term(feats, segment, n_img, gaussian["compat"]))
    if bilateral is not None:
        feats = torch.cat([_features(h, w, bilateral["sxy"], img, bilateral["srgb"], device=dev)
                           for (h, w), img in zip(sizes, images)])
        terms.append(_Term(feats, segment, n_img, bilateral["compat"]))
    # the C++ picks the slice's rounding by the number of labels of each CRF, not of the padded batch
    few = [c <= 2 for c in labels]
    seq = few[0] if len(set(few)) == 1 else torch.repeat_interleave(
        torch.tensor(few, device=dev), torch.tensor(counts, device=dev))

    q = _exp_normalize(neg_unary)
    for _ in range(t):
        x = neg_unary
        for term in terms:
            x = x + term.energy(q, seq)
        q = _exp_normalize(x)

    out, start = [], 0
    for (h, w), c, n in zip(sizes, labels, counts):
        out.append(q[start:start + n, :c].T.reshape(c, h, w))
        start += n
    return out


def dense_crf(image, unary, t=10, gaussian=None, bilateral=None, device=None):
    """Mean-field marginals (C, H, W) float32 of one dense CRF; see dense_crf_batch."""
    return dense_crf_batch([image], [unary], t, gaussian, bilateral, device)[0]
