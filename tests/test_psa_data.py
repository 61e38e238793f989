"""AffinityNet (PSA) data pieces against outputs of PSA's own code (tests/fixtures/psa_data_*.npz, see
README_psa_data.md): pair indices, affinity labels, la/ha CRF, the affinity training sample, the random
walk, crops and colour jitter (SPEC_RESNET38 section 6, checks 9, 10, 11, 14, 20)."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dense_walk
from misc import imutils, indexing, pyutils
from step import cam_to_crf
from voc12 import CAT_LIST, CLASS_NAMES, dataloader as dl

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture(name):
    with np.load(os.path.join(FIXTURES, f"psa_data_{name}.npz"), allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


class Draws:
    """A stand-in for a numpy Generator that returns scripted draws: integers() pops `ints`,
    random() pops `floats`."""

    def __init__(self, ints=(), floats=()):
        self.ints, self.floats = list(ints), list(floats)

    def integers(self, n):
        v = self.ints.pop(0)
        assert 0 <= v < n, (v, n)
        return v

    def random(self):
        return self.floats.pop(0)


# ---------------------------------------------------------------- pair indices and affinity labels (check 10)

def test_pair_indices_equal_psa():
    f = fixture("aff_labels")
    for j in range(3):
        size, radius = tuple(f[f"pairs{j}_size"]), int(f[f"pairs{j}_radius"])
        src, dst = indexing.pair_indices(radius, size)
        assert src.dtype == dst.dtype == np.int64
        assert np.array_equal(src, f[f"pairs{j}_src"])
        assert np.array_equal(dst.reshape(-1), f[f"pairs{j}_dst"])  # PSA concatenates the directions
    # the same pairs as IRNet's PathIndex, whose directions are grouped by path length
    src, dst = indexing.pair_indices(5, (56, 56))
    pi = indexing.PathIndex(radius=5, default_size=(56, 56))
    order = [[tuple(d) for d in pi.search_dst.tolist()].index(d) for d in indexing._search_directions(5)]
    assert np.array_equal(src, pi.src_indices) and np.array_equal(dst, pi.dst_indices[order])
    with pytest.raises(ValueError, match="too small"):
        indexing.pair_indices(5, (4, 20))


def test_affinity_labels_equal_psa():
    f = fixture("aff_labels")
    src, dst = indexing.pair_indices(5, (56, 56))
    for j in range(3):
        ours = indexing.affinity_labels(f[f"map{j}"], src, dst, len(CLASS_NAMES))
        for name, t in zip(("bg", "fg", "neg"), ours):
            assert t.dtype == torch.float32 and t.shape == (34, 52 * 48)
            assert np.array_equal(t.numpy() == 1, f[f"{name}{j}"]), (j, name)
            assert np.all((t.numpy() == 0) | (t.numpy() == 1))
        assert all(f[f"{n}{j}"].any() for n in ("bg", "fg", "neg"))  # every kind occurs


# ---------------------------------------------------------------- la/ha CRF (check 9)

def test_crf_scores_bit_identical_to_psa():
    f = fixture("crf")
    for j in range(3):
        for alpha in (4, 24, 32):
            ours = cam_to_crf.crf_scores(f[f"img{j}"], f[f"cams{j}"], alpha)
            assert ours.dtype == np.float32
            assert np.array_equal(ours, f[f"crf{j}_a{alpha}"]), (j, alpha)


def _write_cams(devkit, cam_dir, names, seed=0):
    labels = dl.load_cls_labels(str(devkit / "cls_labels.txt"))
    rng = np.random.default_rng(seed)
    for n in names:
        h, w = imutils.image_size(dl.get_img_path(n, str(devkit)))
        keys = np.flatnonzero(labels[n]).astype(np.int64)
        high = rng.random((len(keys), h, w), dtype=np.float32)
        pyutils.save_npz(os.path.join(cam_dir, n + ".npz"), keys=keys, high_res=high)  # PSA's format: no `cam`


def _crf_args(devkit, tmp_path, *flags):
    """cam_to_crf's stage I namespace as the driver resolves it."""
    from misc import config, stages
    d = str(devkit)
    argv = ["--method", "psa", "--voc12_root", d, "--train_list", f"{d}/train.txt", "--val_list", f"{d}/val.txt",
            "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(tmp_path), "--cam_out_dir", str(tmp_path / "cam"),
            "--la_crf_dir", str(tmp_path / "crf_la"), "--ha_crf_dir", str(tmp_path / "crf_ha"), "--num_workers", "1",
            "--device", "cpu", *flags]
    return stages.stage_args(config.resolve(argv), stages.STAGES[0])


def test_cam_to_crf_step_writes_resumes_and_feeds_the_aff_dataset(tiny_devkit, tmp_path):
    args = _crf_args(tiny_devkit, tmp_path)
    names = dl.load_img_name_list(args.train_list)
    _write_cams(tiny_devkit, args.cam_out_dir, names)
    cam_to_crf.run(args)
    n = names[1]
    img = imutils.read_image(dl.get_img_path(n, args.data))
    cam = pyutils.load_npz(os.path.join(args.cam_out_dir, n + ".npz"))
    for d, alpha in ((args.la_crf_dir, 4), (args.ha_crf_dir, 32)):
        keys, crf = dl.load_crf(d, n, img.shape[:2])
        assert np.array_equal(keys, np.concatenate([[0], cam["keys"] + 1]))
        assert np.array_equal(crf, cam_to_crf.crf_scores(img, cam["high_res"], alpha))
    # resumable: fresh outputs are kept; another alpha or --force redoes them
    mtimes = {p: os.path.getmtime(os.path.join(args.la_crf_dir, p)) for p in os.listdir(args.la_crf_dir)}
    la_path = os.path.join(args.la_crf_dir, n + ".npz")
    os.utime(la_path, (1e9, mtimes[n + ".npz"]))
    cam_to_crf.run(args)
    assert {p: os.path.getmtime(os.path.join(args.la_crf_dir, p)) for p in os.listdir(args.la_crf_dir)} == mtimes
    cam_to_crf.run(_crf_args(tiny_devkit, tmp_path, "--low_alpha", "2"))
    assert np.array_equal(dl.load_crf(args.la_crf_dir, n)[1], cam_to_crf.crf_scores(img, cam["high_res"], 2))

    # the AffinityNet data set reads them: shapes, labels, determinism per (seed, epoch, idx)
    ds = dl.PSAAffinityDataset(args.train_list, args.la_crf_dir, args.ha_crf_dir, 80, args.data, seed=3)
    item = ds[1]
    assert item["img"].shape == (3, 80, 80) and item["img"].dtype == np.float32
    assert item["label"].shape == (10, 10) and item["label"].dtype == np.uint8
    assert set(np.unique(item["label"])) <= {0, 255} | set((cam["keys"] + 1).tolist())
    assert (item["label"] == 255).sum() >= 100 - 7 * 9  # a 48x64 image covers at most 7x9 of the 10x10 cells
    for k in ("aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label"):
        assert item[k].shape == (34, 6 * 2)
    again = ds[1]
    assert all(np.array_equal(np.asarray(item[k]), np.asarray(again[k])) for k in item if k != "name")
    ds.set_epoch(1)
    assert not np.array_equal(ds[1]["img"], item["img"])


def test_cam_to_crf_errors(tiny_devkit, tmp_path):
    args = _crf_args(tiny_devkit, tmp_path)
    with pytest.raises(pyutils.UserError, match="CAM file not found"):
        cam_to_crf.run(args)
    names = dl.load_img_name_list(args.train_list)
    _write_cams(tiny_devkit, args.cam_out_dir, names)
    pyutils.save_npz(os.path.join(args.cam_out_dir, names[0] + ".npz"), keys=np.array([0], np.int64),
                     high_res=np.zeros((1, 5, 5), np.float32))
    with pytest.raises(pyutils.UserError, match="does not fit"):
        cam_to_crf.run(args)
    with pytest.raises(pyutils.UserError, match="CRF folder not found"):
        dl.PSAAffinityDataset(args.train_list, str(tmp_path / "nope"), args.ha_crf_dir, 80, args.data)


# ---------------------------------------------------------------- the affinity training sample (check 11)

def _psa_sample_devkit(root, f):
    os.makedirs(root / "JPEGImages")
    names = []
    for j in range(4):
        name = f"2007_{j:06d}"
        names.append(name)
        # PNG bytes under the .jpg name, as in the fixture run: no JPEG codec between the two sides
        Image.fromarray(f[f"img{j}"]).save(root / "JPEGImages" / (name + ".jpg"), format="PNG")
        keys = np.concatenate([[0], f[f"keys{j}"] + 1]).astype(np.int64)
        for part in ("la", "ha"):
            crf = f[f"{part}{j}"].astype(np.float32) / np.float32(255)
            pyutils.save_npz(str(root / part / (name + ".npz")), keys=keys, crf=crf)
    (root / "list.txt").write_text("".join(n + "\n" for n in names))
    return names


def test_aff_sample_equals_psa(tmp_path):
    f = fixture("aff_sample")
    crop = int(f["crop"])
    names = _psa_sample_devkit(tmp_path, f)
    ds = dl.PSAAffinityDataset(str(tmp_path / "list.txt"), str(tmp_path / "la"), str(tmp_path / "ha"), crop,
                            str(tmp_path), radius=5, color_jitter=None, hor_flip=True)
    worst = 0.0
    for j, name in enumerate(names):
        dh, dw, flip = (int(v) for v in f[f"draws{j}"])
        ds.rng_for = lambda idx, _d=(dh, dw, flip): Draws(ints=_d[:2], floats=[0.25 if _d[2] else 0.75])
        item = ds[j]
        assert item["name"] == name
        assert item["img"].shape == f[f"out_img{j}"].shape == (3, crop, crop)
        worst = max(worst, float(np.abs(item["img"] - f[f"out_img{j}"]).max()))
        # PSA's label map holds channel indices (0 = background, i = i-th class); ours VOC labels
        keys = np.concatenate([[0], f[f"keys{j}"] + 1])
        psa = f[f"out_label{j}"]
        want = np.where(psa == 255, 255, keys[np.minimum(psa, len(keys) - 1)])
        assert np.array_equal(item["label"], want), j
        for ours, ref in (("aff_bg_pos_label", "bg"), ("aff_fg_pos_label", "fg"), ("aff_neg_label", "neg")):
            assert np.array_equal(item[ours].numpy() == 1, f[f"out_{ref}{j}"]), (j, ours)
    assert worst <= 1e-6, worst


# ---------------------------------------------------------------- the random walk (check 14)

def _walk_inputs(f, j, junk_seed=0):
    """Scores as cam_walk_scores builds them, and PSA's pair affinities on the grid with junk elsewhere."""
    size = tuple(int(v) for v in f[f"size{j}"])
    alpha, beta, logt = (int(v) for v in f[f"params{j}"])
    cams = f[f"cams{j}"].astype(np.float32) / np.float32(255)
    scores = indexing.cam_walk_scores(cams, f[f"keys{j}"], alpha, len(CAT_LIST))
    grid = scores.shape[1:]
    aff = indexing.pairs_to_grid(torch.from_numpy(f[f"aff{j}"]), grid)
    junk = torch.rand(aff.shape, generator=torch.Generator().manual_seed(junk_seed))
    aff = torch.where(indexing.source_mask(grid), aff, junk)  # non-sources must not matter
    return size, scores, aff, beta, logt


@pytest.mark.parametrize("j", [0, 1])
def test_random_walk_equals_psa(j):
    f = fixture("walk")
    size, scores, aff, beta, logt = _walk_inputs(f, j)
    assert torch.equal(scores, torch.from_numpy(f[f"scores_in{j}"]))  # background row, padding, 8x8 means
    rw = indexing.random_walk(scores, aff, radius=5, beta=beta, logt=logt)
    assert rw.dtype == torch.float32 and rw.shape == scores.shape
    ref = torch.from_numpy(f[f"scores{j}"])
    rel = ((rw - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-4, rel
    assert torch.allclose(rw, ref, rtol=1e-4, atol=1e-6 * ref.abs().max().item())
    # PSA's labels: bilinear to the padded size, argmax over the 21 channels, crop
    up = F.interpolate(rw[None], (scores.shape[1] * 8, scores.shape[2] * 8), mode="bilinear", align_corners=False)
    label = up[0].argmax(dim=0).numpy()[:size[0], :size[1]]
    same = (label == f[f"label{j}"]).mean()
    assert same >= 0.999, same

    # our dense path (the n x n matrix of PSA's construction) in float64: the same walk
    src, dst = indexing.pair_indices(5, scores.shape[1:])
    n = scores.shape[1] * scores.shape[2]
    dense = dense_walk.affinity_sparse2dense(torch.from_numpy(f[f"aff{j}"]).double(), src, dst, n)
    want = scores.double().reshape(21, n) @ dense_walk.to_transition_matrix(dense, beta=beta, times=logt)
    got = indexing.random_walk(scores.double(), aff, radius=5, beta=beta, logt=logt)
    assert torch.allclose(got.reshape(21, n), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("h, w, radius, logt", [(5, 9, 5, 3), (7, 9, 5, 2), (10, 12, 5, 4), (9, 8, 3, 3), (12, 7, 4, 5)])
def test_random_walk_equals_dense_on_random_grids(h, w, radius, logt):
    gen = torch.Generator().manual_seed(h * 100 + w)
    n_dirs = len(indexing._search_directions(radius))
    rf = radius - 1
    aff_pairs = torch.rand(n_dirs, (h - rf) * (w - 2 * rf), generator=gen, dtype=torch.float64)
    x = torch.rand(3, h, w, generator=gen, dtype=torch.float64)
    aff = indexing.pairs_to_grid(aff_pairs, (h, w), radius)
    aff = aff + (~indexing.source_mask((h, w), radius)) * torch.rand(aff.shape, generator=gen, dtype=torch.float64)
    src, dst = indexing.pair_indices(radius, (h, w))
    dense = dense_walk.affinity_sparse2dense(aff_pairs, src, dst, h * w)
    for beta in (1, 8):
        want = x.reshape(3, -1) @ dense_walk.to_transition_matrix(dense, beta=beta, times=logt)
        got = indexing.random_walk(x, aff, radius=radius, beta=beta, logt=logt)
        assert torch.allclose(got.reshape(3, -1), want, rtol=0, atol=1e-12)


def test_random_walk_grid_too_small_for_pairs_is_identity():
    x = torch.rand(2, 4, 20, dtype=torch.float64)
    aff = torch.rand(34, 4, 20, dtype=torch.float64)
    assert torch.allclose(indexing.random_walk(x, aff, logt=3), x)
    with pytest.raises(ValueError, match="expected"):
        indexing.random_walk(x, aff[:10])
    src, dst = indexing.pair_indices(1, (5, 5))  # radius 1 (SEAM's rule on tiny maps can reach it): no pairs
    assert src.shape == (0,) and dst.shape == (0, 0)
    none = indexing.pairs_to_grid(torch.zeros(0, 0, dtype=torch.float64), (4, 20), 1)
    assert torch.equal(indexing.random_walk(x, none, radius=1, logt=2), x)


# ---------------------------------------------------------------- transforms (check 20)

def test_random_and_center_crop_equal_psa():
    f = fixture("transforms")
    for (h, w, crop, dh, dw), ref in zip(f["rand_cases"], f["rand_out"]):
        img = np.arange(1, h * w + 1, dtype=np.float32).reshape(h, w, 1)
        out = imutils.random_crop(img, int(crop), 0, Draws(ints=[int(dh), int(dw)]))[..., 0]
        assert np.array_equal(out, ref[:crop, :crop]), (h, w, crop, dh, dw)
    for (h, w, crop), ref in zip(f["center_cases"], f["center_out"]):
        img = np.arange(1, h * w + 1, dtype=np.float32).reshape(h, w)
        assert np.array_equal(imutils.center_crop(img, int(crop), 0), ref[:crop, :crop]), (h, w, crop)


def test_resize_long_sizes_against_psa(monkeypatch):
    """IRNet's rule (round(side * (target / long))) against PSA's (round(side * target / long)): equal but
    for float ties; the count is reported (SPEC_RESNET38 check 20)."""
    f = fixture("transforms")
    got = []
    monkeypatch.setattr(imutils, "pil_resize", lambda img, size_hw, order: got.append(size_hw))

    class Target:
        def __init__(self, t):
            self.t = t

        def integers(self, lo, hi):
            return self.t

    sides, targets, ref = f["resize_sides"], f["resize_targets"], f["resize_hw"]
    for h in sides:
        for w in sides:
            img = np.empty((h, w, 0), np.uint8)
            for t in targets:
                imutils.random_resize_long(img, 256, 512, Target(int(t)))
    ours = np.asarray(got).reshape(ref.shape)
    differ = np.any(ours != ref, axis=-1)
    print(f"resize_long: {differ.sum()} of {differ.size} sizes differ from PSA's")
    assert np.abs(ours.astype(int) - ref).max() <= 1 and differ.mean() < 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_color_jitter_equals_torchvision(seed):
    from torchvision import transforms as T

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    img[:5] = [250, 10, 10]  # saturated and grey areas, where the adjustments clip
    img[5:8] = 128
    cj = T.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)
    torch.manual_seed(seed)
    want = np.asarray(cj(Image.fromarray(img)))
    torch.manual_seed(seed)
    order, *factors = T.ColorJitter.get_params(cj.brightness, cj.contrast, cj.saturation, cj.hue)
    got = imutils.apply_color_jitter(img, order.tolist(), factors)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    # our own draws: factors in torchvision's ranges, the order a permutation, arguments of 0 not drawn
    order, factors = imutils.color_jitter_params(np.random.default_rng(seed))
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert all(0.7 <= v <= 1.3 for v in factors[:3]) and -0.1 <= factors[3] <= 0.1
    assert np.array_equal(imutils.color_jitter(img, np.random.default_rng(seed)),
                          imutils.apply_color_jitter(img, order, factors))
    assert imutils.color_jitter_params(np.random.default_rng(0), 0, 0.3, 0, 0)[1][::2] == (None, None)


def test_block_mean():
    rng = np.random.default_rng(0)
    x = rng.random((20, 27, 3), dtype=np.float32)
    out = imutils.block_mean(x, 8)
    assert out.shape == (3, 4, 3) and out.dtype == np.float32
    padded = np.zeros((24, 32, 3), np.float64)
    padded[:20, :27] = x
    want = padded.reshape(3, 8, 4, 8, 3).mean(axis=(1, 3))  # a partial block counts zeros
    assert np.allclose(out, want, rtol=1e-6)
    assert imutils.block_mean(x[..., 0], 4).shape == (5, 7)
    skimage = pytest.importorskip("skimage.measure")
    for a in (x, x[:16, :24], np.fliplr(x).copy()):
        assert np.array_equal(imutils.block_mean(a, 8), skimage.block_reduce(a, (8, 8, 1), np.mean))


# ---------------------------------------------------------------- classification data set additions

def _cls_ds(root, **kw):
    return dl.VOC12ClassificationDataset(str(root / "train_aug.txt"), str(root), str(root / "cls_labels.txt"), **kw)


def test_classification_dataset_jitter_and_center_crop(tiny_devkit):
    ds = _cls_ds(tiny_devkit, resize_long=(40, 80), hor_flip=True, crop_size=56, crop_method="random",
                 color_jitter=(0.3, 0.3, 0.3, 0.1))
    _, img, _ = ds.load_example(4)
    rng = ds.rng_for(4)  # by hand: resize, flip, jitter, normalise, crop, with the same draws
    x = imutils.random_resize_long(img, 40, 80, rng)
    x = imutils.random_lr_flip(x, rng)
    x = imutils.color_jitter(x, rng, 0.3, 0.3, 0.3, 0.1)
    x = imutils.HWC_to_CHW(imutils.random_crop(imutils.Normalize()(x), 56, 0, rng))
    assert np.array_equal(ds[4]["img"], x)
    plain = _cls_ds(tiny_devkit, resize_long=(40, 80), hor_flip=True, crop_size=56, crop_method="random")
    assert not np.array_equal(plain[4]["img"], x)

    ds = _cls_ds(tiny_devkit, crop_size=50, crop_method="center")  # 48x64 image: rows padded 1 above, 1 below
    out = ds[0]["img"]
    raw = imutils.HWC_to_CHW(imutils.Normalize()(ds.load_example(0)[1]))
    assert np.all(out[:, 0] == 0) and np.all(out[:, 49] == 0)
    assert np.array_equal(out[:, 1:49], raw[:, :, 7:57])
    with pytest.raises(ValueError, match="center"):
        _cls_ds(tiny_devkit, crop_size=50, crop_method="middle")
