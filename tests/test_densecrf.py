"""misc.densecrf (the dense CRF in torch) against pydensecrf, and the backends of misc.imutils' CRFs.

The images are small, natural-looking scenes (smooth colour regions, a gradient, noise); the unaries come
from a noisy version of the scene's own labels, so the CRF has real work to do.
"""
import numpy as np
import pytest
import torch

import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

from misc import densecrf, imutils
from misc.pyutils import UserError

# the project's three parameter sets (imutils.crf_inference_label, imutils.crf_inference, step/eval_seg.py)
IRNET = dict(gaussian=dict(sxy=3, compat=3), bilateral=dict(sxy=50, srgb=5, compat=10))
PSA = dict(gaussian=dict(sxy=3, compat=3), bilateral=dict(sxy=80, srgb=13, compat=10))
DEEPLAB = dict(gaussian=dict(sxy=1, compat=3), bilateral=dict(sxy=67, srgb=3, compat=4))


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread, as in a pool worker: these tensors are small, and on a busy machine torch's thread
    pool spends far longer waiting at its barriers than computing."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def natural_scene(h, w, n_labels, seed, black_corner=False):
    """uint8 (H, W, 3) image of a few smooth colour regions, and its (H, W) label map."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    region = np.zeros((h, w), np.int64)
    for k in range(1, 6):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.15, 0.45) * h, rng.uniform(0.15, 0.45) * w
        region[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k
    colours = rng.uniform(20, 235, (6, 3))
    shade = 12 * np.sin(yy / h * 3 + xx / w * 2)[..., None]
    img = np.clip(colours[region] + shade + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    if black_corner:
        img[0, 0] = 0
    region_label = rng.integers(0, n_labels, 6)
    region_label[0] = 0
    return img, region_label[region]


def noisy_labels(truth, n_labels, seed, rate=0.2):
    rng = np.random.default_rng(seed + 100)
    flip = rng.random(truth.shape) < rate
    out = truth.copy()
    out[flip] = rng.integers(0, n_labels, int(flip.sum()))
    return out


def noisy_softmax(truth, n_labels, seed):
    rng = np.random.default_rng(seed + 200)
    logits = 2.5 * (np.arange(n_labels)[:, None, None] == truth[None]) + rng.normal(0, 1, (n_labels,) + truth.shape)
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def pydensecrf_marginals(img, unary, t, gaussian=None, bilateral=None):
    c, h, w = unary.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(c, -1), dtype=np.float32))
    if gaussian:
        d.addPairwiseGaussian(sxy=gaussian["sxy"], compat=gaussian["compat"])
    if bilateral:
        d.addPairwiseBilateral(sxy=bilateral["sxy"], srgb=bilateral["srgb"], rgbim=np.ascontiguousarray(img),
                               compat=bilateral["compat"])
    return np.asarray(d.inference(t)).reshape(c, h, w)


def make_case(h, w, n_labels, unary, seed, black_corner=False):
    img, truth = natural_scene(h, w, n_labels, seed, black_corner)
    if unary == "labels":
        u = unary_from_labels(noisy_labels(truth, n_labels, seed), n_labels, gt_prob=0.7, zero_unsure=False)
    else:
        u = unary_from_softmax(noisy_softmax(truth, n_labels, seed))
    return img, u.reshape(n_labels, h, w)


def only(params, *terms):
    return {k: (v if k in terms else None) for k, v in params.items()}


# (H, W, labels, unary, iterations, terms): odd sizes, H*W % 4 in {0, 1, 3}, 2/3/21 labels, both unaries,
# 1 and 10 iterations, each kernel alone and both, the three parameter sets
CASES = [
    (31, 40, 3, "softmax", 10, PSA),
    (33, 41, 2, "labels", 10, IRNET),
    (37, 29, 21, "softmax", 10, DEEPLAB),
    (29, 23, 21, "labels", 1, IRNET),
    (40, 31, 3, "softmax", 1, only(PSA, "gaussian")),
    (35, 27, 3, "softmax", 10, only(IRNET, "bilateral")),
    (27, 35, 2, "softmax", 10, DEEPLAB),
    (44, 52, 21, "labels", 10, IRNET),
    (45, 33, 2, "softmax", 1, PSA),
    (17, 13, 3, "labels", 10, only(DEEPLAB, "gaussian")),
    (23, 19, 21, "softmax", 10, only(DEEPLAB, "bilateral")),
    (39, 45, 3, "labels", 10, only(IRNET, "bilateral")),
    (21, 30, 2, "labels", 1, only(IRNET, "gaussian")),
    (90, 120, 21, "softmax", 10, DEEPLAB),
    (75, 101, 3, "labels", 10, IRNET),
]


@pytest.mark.parametrize("h,w,n_labels,unary,t,terms", CASES)
def test_matches_pydensecrf(h, w, n_labels, unary, t, terms):
    img, u = make_case(h, w, n_labels, unary, seed=h * w + n_labels)
    ref = pydensecrf_marginals(img, u, t, **terms)
    q = densecrf.dense_crf(img, torch.from_numpy(u), t, **terms)
    assert q.dtype == torch.float32 and q.shape == (n_labels, h, w)
    q = q.numpy()
    agree = np.mean(np.argmax(q, 0) == np.argmax(ref, 0))
    assert agree >= 0.999, agree
    assert np.abs(q - ref).max() < 1e-4


def test_black_top_left_and_batch_of_cases_match_pydensecrf():
    """One call on images of different sizes and label counts; one with a black top-left pixel (the SSE
    padding then adds no lattice point) and pixel counts that are and are not multiples of 4."""
    specs = [(31, 40, 3, "softmax"), (33, 41, 2, "labels"), (23, 19, 21, "softmax"), (29, 23, 3, "labels")]
    cases = [make_case(h, w, c, kind, seed=i, black_corner=i == 3) for i, (h, w, c, kind) in enumerate(specs)]
    qs = densecrf.dense_crf_batch([img for img, _ in cases], [torch.from_numpy(u) for _, u in cases], 10, **IRNET)
    for (img, u), q in zip(cases, qs):
        ref = pydensecrf_marginals(img, u, 10, **IRNET)
        single = densecrf.dense_crf(img, u, 10, **IRNET).numpy()
        assert q.shape == ref.shape
        assert np.array_equal(np.argmax(q.numpy(), 0), np.argmax(ref, 0))
        assert np.abs(q.numpy() - ref).max() < 1e-4
        assert np.abs(q.numpy() - single).max() < 1e-6  # the batch does not mix images


def test_unary_helpers_match_pydensecrf():
    img, truth = natural_scene(9, 11, 4, seed=0)
    labels = noisy_labels(truth, 4, 0)
    assert np.array_equal(densecrf.unary_from_labels(labels, 4, 0.7).numpy().reshape(4, -1),
                          unary_from_labels(labels, 4, gt_prob=0.7, zero_unsure=False))
    probs = noisy_softmax(truth, 4, 0)
    probs[0, 0, 0] = 0  # clipped to 1e-5
    ours = densecrf.unary_from_softmax(probs).numpy().reshape(4, -1)
    theirs = unary_from_softmax(probs)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)  # torch's log and numpy's: ~1 ulp
    np.testing.assert_allclose(densecrf.unary_from_softmax(probs.astype(np.float64)).numpy().reshape(4, -1),
                               unary_from_softmax(probs.astype(np.float64)), rtol=1e-7)


# ---------------------------------------------------------------- the lattice, against a straightforward one

class StraightforwardLattice:
    """permutohedral.cpp's lattice (SSE build) point by point, with float32 scalars and a dict for a hash."""

    def __init__(self, features):
        n, d = features.shape
        f32 = np.float32
        inv_std = f32(np.sqrt(2.0 / 3.0) * (d + 1))
        scale = [f32(1.0 / np.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
        down, up = f32(1) / f32(d + 1), f32(d + 1)
        self.ids, self.keys = {}, []
        self.offsets, self.weights = [], []
        pad = (-n) % 4  # zero-feature points that fill the last block of four
        for k in range(n + pad):
            x = features[k] if k < n else np.zeros(d, np.float32)
            elevated = [f32(0)] * (d + 1)
            sm = f32(0)
            for j in range(d, 0, -1):
                cf = f32(x[j - 1]) * scale[j - 1]
                elevated[j] = sm - f32(j) * cf
                sm = sm + cf
            elevated[0] = sm
            rem0, total = [], 0
            for i in range(d + 1):
                v = np.rint(down * elevated[i])  # ties to even
                rem0.append(int(v * up))
                total += int(v)
            rank = [0] * (d + 1)
            for i in range(d):
                for j in range(i + 1, d + 1):
                    if elevated[i] - f32(rem0[i]) < elevated[j] - f32(rem0[j]):
                        rank[i] += 1
                    else:
                        rank[j] += 1
            for i in range(d + 1):
                rank[i] += total
                if rank[i] < 0:
                    rank[i] += d + 1
                    rem0[i] += d + 1
                elif rank[i] > d:
                    rank[i] -= d + 1
                    rem0[i] -= d + 1
            bary = [f32(0)] * (d + 2)
            for i in range(d + 1):
                v = (elevated[i] - f32(rem0[i])) * down
                bary[d - rank[i]] += v
                bary[d - rank[i] + 1] -= v
            bary[0] += f32(1) + bary[d + 1]
            offs = []
            for r in range(d + 1):
                key = tuple(rem0[i] + (r if rank[i] <= d - r else r - (d + 1)) for i in range(d))
                if key not in self.ids:
                    self.ids[key] = len(self.keys)
                    self.keys.append(key)
                offs.append(self.ids[key])
            if k < n:
                self.offsets.append(offs)
                self.weights.append(bary[:d + 1])
        self.n, self.d, self.m = n, d, len(self.keys)
        self.offsets = np.array(self.offsets)
        self.weights = np.array(self.weights, np.float32)

    def blur(self, values):
        d = self.d
        values = values.astype(np.float32)
        for j in range(d + 1):
            new = values.copy()
            for i, key in enumerate(self.keys):
                n1 = tuple(key[k] + (d if k == j else -1) for k in range(d))
                n2 = tuple(key[k] - (d if k == j else -1) for k in range(d))
                v1 = values[self.ids[n1]] if n1 in self.ids else 0
                v2 = values[self.ids[n2]] if n2 in self.ids else 0
                new[i] = values[i] + np.float32(0.5) * (v1 + v2)
            values = new
        return values

    def compute(self, values):
        d = self.d
        lattice = np.zeros((self.m, values.shape[1]), np.float32)
        for i in range(self.n):
            for r in range(d + 1):
                lattice[self.offsets[i, r]] += self.weights[i, r] * values[i]
        lattice = self.blur(lattice)
        alpha = np.float32(1) / (np.float32(1) + np.float32(2.0 ** -d))
        out = np.zeros_like(values)
        for i in range(self.n):
            for r in range(d + 1):
                if values.shape[1] <= 2:
                    out[i] += self.weights[i, r] * lattice[self.offsets[i, r]] * alpha
                else:
                    out[i] += (self.weights[i, r] * alpha) * lattice[self.offsets[i, r]]
        return out


def tiny_features(kind, black_corner=False):
    img, _ = natural_scene(5, 7, 2, seed=3, black_corner=black_corner)  # 35 pixels: 35 % 4 == 3
    if kind == "gaussian":
        return densecrf._features(5, 7, 1.5)
    return densecrf._features(5, 7, 4, torch.from_numpy(img), 9)


def id_map(ref, lat):
    """Our lattice index of each reference point that a pixel touches (-1 for padding-only points)."""
    mapping = np.full(ref.m, -1)
    mapping[ref.offsets.ravel()] = lat.offsets.numpy().ravel()
    pairs = set(zip(ref.offsets.ravel().tolist(), lat.offsets.numpy().ravel().tolist()))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})  # one-to-one
    return mapping


@pytest.mark.parametrize("kind,black_corner", [("gaussian", False), ("bilateral", False), ("bilateral", True)])
@pytest.mark.parametrize("packed", [True, False])
def test_lattice_points_weights_and_blur(kind, black_corner, packed, monkeypatch):
    if not packed:
        monkeypatch.setattr(densecrf, "_PACKED_LIMIT", 0)  # the row-sorting path for wide key ranges
    f = tiny_features(kind, black_corner)
    ref = StraightforwardLattice(f.numpy())
    lat = densecrf.PermutohedralLattice(f)
    assert lat.num_points == ref.m
    assert np.array_equal(lat.weights.numpy(), ref.weights)
    mapping = id_map(ref, lat)
    # padding points: the zero feature's vertices, new ones unless it is a pixel's own feature
    pad_only = int((mapping < 0).sum())
    if kind == "bilateral" and not black_corner:
        assert pad_only > 0
    else:
        assert pad_only == 0

    # one blur, from random values at the points that pixels touch (padding points start at zero)
    rng = np.random.default_rng(0)
    values = np.zeros((ref.m, 3), np.float32)
    values[mapping >= 0] = rng.random(((mapping >= 0).sum(), 3), dtype=np.float32)
    ours = torch.zeros(lat.num_points + 1, 3)
    ours[torch.from_numpy(mapping[mapping >= 0])] = torch.from_numpy(values[mapping >= 0])
    blurred = lat.blur(ours).numpy()
    assert np.array_equal(blurred[mapping[mapping >= 0]], ref.blur(values)[mapping >= 0])
    assert not blurred[-1].any()  # the absent neighbour stays zero

    # splat, blur and slice, for 1, 2 (seqCompute's rounding) and 3 channels: the same up to the splat's
    # summation order, and bit for bit when the splat adds pixel after pixel as the C++ does
    for c in (1, 2, 3):
        v = torch.from_numpy(rng.random((f.shape[0], c), dtype=np.float32))
        expected = ref.compute(v.numpy())
        np.testing.assert_allclose(lat.compute(v, seq=c <= 2).numpy(), expected, rtol=2e-6, atol=0)
        in_order = torch.zeros(lat.num_points + 1, c)  # one CPU thread: index_add_ goes in index order
        in_order.index_add_(0, lat.offsets.reshape(-1), (lat.weights[:, :, None] * v[:, None]).reshape(-1, c))
        blurred = lat.blur(in_order)
        assert np.array_equal(lat.slice(blurred, seq=c <= 2).numpy(), expected)
        per_point = torch.full((f.shape[0],), c <= 2)  # the batch's per-image choice gives the same
        assert np.array_equal(lat.slice(blurred, seq=per_point).numpy(), expected)


def test_lattice_of_a_batch_keeps_images_apart():
    f = tiny_features("bilateral")
    one = densecrf.PermutohedralLattice(f)
    both = densecrf.PermutohedralLattice(torch.cat([f, f]), torch.tensor([0] * 35 + [1] * 35), 2)
    assert both.num_points == 2 * one.num_points
    v = torch.rand(35, 3)
    np.testing.assert_array_equal(both.compute(torch.cat([v, v]))[35:].numpy(), one.compute(v).numpy())


@pytest.mark.parametrize("sxy,srgb", [(3, None), (1, None), (50, 5), (80, 13), (67, 3)])
def test_lattice_of_a_natural_image(sxy, srgb):
    """Points, weights and vertices of 1353 pixels (1353 % 4 == 1) with the project's kernels."""
    img, _ = natural_scene(33, 41, 2, seed=0)
    f = densecrf._features(33, 41, sxy, None if srgb is None else torch.from_numpy(img), srgb)
    ref, lat = StraightforwardLattice(f.numpy()), densecrf.PermutohedralLattice(f)
    assert lat.num_points == ref.m
    assert np.array_equal(lat.weights.numpy(), ref.weights)
    id_map(ref, lat)


# ---------------------------------------------------------------- misc.imutils backends

def test_imutils_backends_agree():
    img, truth = natural_scene(33, 41, 3, seed=5)
    labels = noisy_labels(truth, 3, 5)
    a = imutils.crf_inference_label(img, labels, t=10, n_labels=3)
    b = imutils.crf_inference_label(img, labels, t=10, n_labels=3, backend="torch")
    assert a.shape == b.shape == (33, 41) and b.dtype == a.dtype
    assert np.array_equal(a, b)

    probs = noisy_softmax(truth, 3, 5)
    for fn, kw in ((imutils.crf_inference, dict(labels=3)), (imutils.dense_crf, {})):
        p = fn(img, probs, **kw)
        q = fn(img, probs, backend="torch", **kw)
        assert p.dtype == q.dtype == np.float32 and p.shape == q.shape == (3, 33, 41)
        assert np.abs(p - q).max() < 1e-4


def test_imutils_batches():
    scenes = [natural_scene(h, w, c, seed=i) for i, (h, w, c) in enumerate([(21, 30, 2), (17, 13, 3), (23, 19, 4)])]
    imgs = [img for img, _ in scenes]
    labels = [noisy_labels(t, c, i) for i, ((_, t), c) in enumerate(zip(scenes, (2, 3, 4)))]
    probs = [noisy_softmax(t, c, i) for i, ((_, t), c) in enumerate(zip(scenes, (2, 3, 4)))]
    for backend in imutils.CRF_BACKENDS:
        out = imutils.crf_inference_label_batch(imgs, labels, t=5, n_labels=[2, 3, 4], backend=backend)
        for img, lab, n, o in zip(imgs, labels, (2, 3, 4), out):
            assert np.array_equal(o, imutils.crf_inference_label(img, lab, t=5, n_labels=n))
        for batch, single in ((imutils.crf_inference_batch, lambda i, p: imutils.crf_inference(i, p, labels=len(p))),
                              (imutils.dense_crf_batch, imutils.dense_crf)):
            for img, p, o in zip(imgs, probs, batch(imgs, probs, backend=backend)):
                assert np.abs(o - single(img, p)).max() < 1e-4
    assert imutils.dense_crf_batch([], [], backend="torch") == []


def test_resolve_crf_backend():
    assert imutils.resolve_crf_backend("auto", "cuda:0") == "torch"
    assert imutils.resolve_crf_backend("auto", "cpu") == "pydensecrf"
    assert imutils.resolve_crf_backend("torch", "cpu") == "torch"
    with pytest.raises(UserError, match="unknown CRF backend"):
        imutils.resolve_crf_backend("gpu")


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("backend", imutils.CRF_BACKENDS)
def test_bad_input_is_one_clear_error(backend):
    img, truth = natural_scene(9, 11, 3, seed=1)
    probs = noisy_softmax(truth, 3, 1)
    for bad, match in ((np.where(probs > 0.5, np.nan, probs), "NaN or infinite"),
                       (np.where(probs > 0.5, np.inf, probs), "NaN or infinite"),
                       (probs[:, :8], "does not fit a 9x11"),
                       (probs[0], "does not fit")):
        with pytest.raises(densecrf.CRFInputError, match=match):
            imutils.dense_crf(img, bad, backend=backend)
    with pytest.raises(densecrf.CRFInputError, match="uint8 RGB image"):
        imutils.crf_inference(img.astype(np.float32), probs, labels=3, backend=backend)
    with pytest.raises(densecrf.CRFInputError, match="uint8 RGB image"):
        imutils.dense_crf(img[..., 0], probs, backend=backend)
    with pytest.raises(densecrf.CRFInputError, match="do not match image"):
        imutils.crf_inference_label(img, truth[:, :5], n_labels=3, backend=backend)
    with pytest.raises(densecrf.CRFInputError, match=r"outside \[0, 2\]"):
        imutils.crf_inference_label(img, np.where(truth == truth[0, 0], 3, truth), n_labels=3, backend=backend)
    with pytest.raises(densecrf.CRFInputError, match="expected 21"):
        imutils.crf_inference(img, probs, 21, backend=backend)
    # one line for the driver (a UserError), and still a ValueError for code that catches those
    assert issubclass(densecrf.CRFInputError, UserError) and issubclass(densecrf.CRFInputError, ValueError)


def test_bad_parameters():
    img, truth = natural_scene(9, 11, 3, seed=1)
    u = unary_from_softmax(noisy_softmax(truth, 3, 1)).reshape(3, 9, 11)
    with pytest.raises(densecrf.CRFInputError, match="positive"):
        densecrf.dense_crf(img, u, 5, gaussian=dict(sxy=0, compat=3))
    with pytest.raises(densecrf.CRFInputError, match="iterations"):
        densecrf.dense_crf(img, u, -1, gaussian=dict(sxy=3, compat=3))
    with pytest.raises(densecrf.CRFInputError, match="2 images and 1 unaries"):
        densecrf.dense_crf_batch([img, img], [u])
