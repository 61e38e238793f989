"""CDA: instance selection, the pool on disk, the paste augmentation, the paired data set."""
import json
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from cda.dataset import PairedDataset, sample_grid
from cda.paste import paste_instances, paste_with, shrink_size
from cda.pool import InstancePool, build_pool, crop_instance, select_instances
from misc.datasets import as_data
from misc.pyutils import UserError

K = 20
NAMES = [f"c{i}" for i in range(K)]


def onehot(*classes):
    v = np.zeros(K, np.float32)
    v[list(classes)] = 1
    return v


def blob(h, w, seed):
    """An irregular instance: random colours, an elliptic mask touching every side of its box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2 <= 1.0
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mask


def make_pool(sizes=None):
    """Classes 0..4 with a couple of instances each, of the given (h, w) sizes."""
    sizes = sizes or [(6, 5), (9, 13)]
    return InstancePool({c: [blob(h, w, 10 * c + i) for i, (h, w) in enumerate(sizes)] for c in range(5)}, NAMES)


def pasted_bbox(pasted):
    ys, xs = np.nonzero(pasted)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


# ---------------------------------------------------------------- selection and crop

def test_select_single_class_and_two_classes():
    m = np.zeros((10, 10), np.uint8)
    m[:4, :5] = 7
    assert select_instances(m) == 6  # 0-based class index
    m[8:, 8:] = 3
    assert select_instances(m) is None
    assert select_instances(np.zeros((10, 10), np.uint8)) is None
    assert select_instances(np.full((10, 10), 255, np.uint8)) is None  # ignore is not a class


@pytest.mark.parametrize("n_fg, kept", [(9, False), (10, True), (70, True), (71, False)])
def test_select_ratio_bounds_are_inclusive(n_fg, kept):
    m = np.zeros(100, np.uint8)
    m[:n_fg] = 2
    assert (select_instances(m.reshape(10, 10), 0.1, 0.7) == 1) is kept


def test_ignore_pixels_count_in_the_area_not_the_foreground():
    m = np.zeros(100, np.uint8)
    m[:10] = 5
    m[10:90] = 255  # 10 % foreground of the whole image, though 50 % of the non-ignored pixels
    assert select_instances(m.reshape(10, 10), 0.1, 0.7) == 4
    assert select_instances(m.reshape(10, 10), 0.11, 0.7) is None


def test_crop_instance_is_the_exact_bounding_box():
    img = np.random.default_rng(0).integers(0, 256, (12, 15, 3), dtype=np.uint8)
    m = np.zeros((12, 15), np.uint8)
    m[3, 4] = 9
    m[7, 10] = 9
    m[5, 6] = 255  # inside the box but ignored: transparent
    rgba = crop_instance(img, m)
    assert rgba.shape == (5, 7, 4)
    assert (rgba[..., :3] == img[3:8, 4:11]).all()
    alpha = np.zeros((5, 7), np.uint8)
    alpha[0, 0] = alpha[4, 6] = 255
    assert (rgba[..., 3] == alpha).all()


# ---------------------------------------------------------------- the pool on disk

def write_fake_masks(root, specs, size=(20, 30)):
    """specs: id -> list of (class value, y0, y1, x0, x1). Writes root/img/<id>.jpg-like PNGs and masks."""
    (root / "img").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, boxes in specs.items():
        m = np.zeros(size, np.uint8)
        for v, y0, y1, x0, x1 in boxes:
            m[y0:y1, x0:x1] = v
        Image.fromarray(m, "L").save(root / "masks" / f"{name}.png")
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / "img" / f"{name}.png")


def test_build_pool_writes_and_loads(tmp_path):
    specs = {
        "a": [(3, 2, 10, 5, 20)],                  # class 2, 120/600 = 20 %: kept
        "b": [(3, 0, 20, 0, 30)],                  # 100 %: too large
        "c": [(3, 2, 10, 5, 20), (4, 12, 14, 0, 3)],  # two classes
        "d": [(5, 5, 15, 10, 25)],                 # class 4, 150/600: kept
        "e": [(3, 0, 10, 0, 10)],                  # class 2, 100/600: kept
        "f": [],                                   # background only
    }
    write_fake_masks(tmp_path, specs)
    out = tmp_path / "pool"
    meta = build_pool(list(specs), tmp_path / "masks", tmp_path / "img", out, 0.1, 0.7,
                      class_names=NAMES, source="toy", image_ext=".png")
    assert meta["counts"]["c2"] == 2 and meta["counts"]["c4"] == 1 and meta["num_instances"] == 3
    assert "c0" in meta["classes_without_instances"] and "c2" not in meta["classes_without_instances"]
    assert meta["rejected"] == {"no_foreground": 1, "several_classes": 1, "too_small": 0, "too_large": 1}
    on_disk = json.loads((out / "pool.json").read_text())
    assert on_disk["source"] == "toy" and on_disk["min_ratio"] == 0.1 and on_disk["max_ratio"] == 0.7
    assert (out / "preview.png").is_file() and (out / "c2" / "a.png").is_file()
    assert sorted(os.listdir(tmp_path)) == ["img", "masks", "pool"]  # no temporary folder left

    rgba = np.asarray(Image.open(out / "c2" / "a.png"))
    assert rgba.shape == (8, 15, 4) and (rgba[..., 3] == 255).all()
    src = np.asarray(Image.open(tmp_path / "img" / "a.png"))
    assert (rgba[..., :3] == src[2:10, 5:20]).all()

    pool = InstancePool.load(out)
    assert pool.classes_with_instances() == [2, 4]
    rgb, mask = pool.get(2, 0)
    assert rgb.dtype == np.uint8 and mask.dtype == np.uint8 and rgb.shape[:2] == mask.shape
    # the reference's class-valued mask (class index + 1 on the object), rebuilt from alpha and the folder
    assert (mask == np.where(rgba[..., 3] == 255, 3, 0)).all()
    assert on_disk["list"] is None

    # a rebuild with other thresholds replaces the old pool entirely
    meta = build_pool(list(specs), tmp_path / "masks", tmp_path / "img", out, 0.2, 0.7,
                      class_names=NAMES, source="toy", image_ext=".png")
    assert meta["num_instances"] == 2 and not (out / "c2" / "e.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["img", "masks", "pool"]


def test_empty_pool_is_a_user_error(tmp_path):
    write_fake_masks(tmp_path, {"a": [(3, 0, 20, 0, 30)], "b": []})
    with pytest.raises(UserError) as e:
        build_pool(["a", "b"], tmp_path / "masks", tmp_path / "img", tmp_path / "pool", 0.1, 0.7,
                   class_names=NAMES, source="sem_seg", image_ext=".png")
    msg = str(e.value)
    assert "sem_seg" in msg and "0.1" in msg and "0.7" in msg and "--pool_source gt" in msg
    assert not (tmp_path / "pool").exists()
    with pytest.raises(UserError):
        InstancePool.load(tmp_path / "pool")


def test_missing_mask_is_a_user_error(tmp_path):
    write_fake_masks(tmp_path, {"a": [(3, 2, 10, 5, 20)]})
    with pytest.raises(UserError, match="nope"):
        build_pool(["a", "nope"], tmp_path / "masks", tmp_path / "img", tmp_path / "pool",
                   class_names=NAMES, image_ext=".png")


# ---------------------------------------------------------------- the paste

def test_trimmed_paste_without_rotation_copies_the_instance_exactly():
    pool = InstancePool({3: [blob(7, 9, 1)]}, NAMES)
    rgb, mask = pool.get(3, 0)
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for seed in range(20):
        aug, label, pasted = paste_instances(img, onehot(0), pool, np.random.default_rng(seed), rotation=(0, 0),
                                             geometry="trimmed")
        y0, y1, x0, x1 = pasted_bbox(pasted)
        assert (y1 - y0, x1 - x0) == mask.shape  # small enough: never shrunk
        mask = mask > 0
        assert (pasted[y0:y1, x0:x1] == np.where(mask, 4, 0)).all()
        assert (aug[y0:y1, x0:x1][mask] == rgb[mask]).all()
        assert (aug[pasted == 0] == img[pasted == 0]).all()
        assert (label == onehot(0, 3)).all()


def test_label_is_the_union_and_present_classes_are_never_pasted():
    pool = make_pool()
    img = np.zeros((30, 30, 3), np.uint8)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(300):
        present = rng.choice(K, size=rng.integers(1, 4), replace=False)
        label = onehot(*present)
        label_in = label.copy()
        aug, new_label, pasted = paste_instances(img, label, pool, rng, num_instances=int(rng.integers(1, 3)))
        assert (label == label_in).all()  # input untouched
        added = set(np.flatnonzero(new_label > 0)) - set(present)
        assert set(np.flatnonzero(new_label > 0)) == set(present) | added
        assert added and added <= set(range(5)) - set(present)
        assert set(np.unique(pasted)) - {0} <= {c + 1 for c in added}
        seen |= added
    assert seen == set(range(5))  # every pool class gets drawn


def test_num_instances_draws_distinct_absent_classes():
    pool = make_pool()
    for seed in range(50):
        _, new_label, _ = paste_instances(np.zeros((30, 30, 3), np.uint8), onehot(1), pool,
                                          np.random.default_rng(seed), num_instances=3)
        assert new_label.sum() == 4 and new_label[1] == 1
    # more than available: every absent class with instances once
    _, new_label, _ = paste_instances(np.zeros((30, 30, 3), np.uint8), onehot(1), pool,
                                      np.random.default_rng(0), num_instances=10)
    assert set(np.flatnonzero(new_label)) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("geometry", ["reference", "trimmed"])
@pytest.mark.parametrize("blend, jitter", [("none", None), ("gaussian", None), ("none", (0.8, 1.2))])
def test_pasted_object_fits_and_respects_max_size(blend, jitter, geometry):
    pool = make_pool([(6, 5), (40, 13), (90, 120), (25, 25)])  # some larger than the image
    rng = np.random.default_rng(0)
    for _ in range(150):
        H, W = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        aug, _, pasted = paste_instances(img, onehot(9), pool, rng, blend=blend, scale_jitter=jitter,
                                         geometry=geometry)
        assert aug.shape == img.shape and aug.dtype == np.uint8
        y0, y1, x0, x1 = pasted_bbox(pasted)
        limit = 1.0 if jitter else 0.7  # jitter may enlarge, but never beyond the image
        assert y1 - y0 <= limit * H and x1 - x0 <= limit * W
        assert (aug[pasted == 0] == img[pasted == 0]).all()


def test_no_absent_class_with_instances_leaves_the_image_unchanged():
    pool = make_pool()
    img = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    label = onehot(0, 1, 2, 3, 4, 11)
    aug, new_label, pasted = paste_instances(img, label, pool, np.random.default_rng(0))
    assert (aug == img).all() and (new_label == label).all() and not pasted.any()
    aug, new_label, pasted = paste_instances(img, onehot(3), InstancePool({}, NAMES), np.random.default_rng(0))
    assert (aug == img).all() and (new_label == onehot(3)).all() and not pasted.any()


def test_paste_is_a_pure_function_of_its_generator():
    pool = make_pool()
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    img_in = img.copy()
    a = paste_instances(img, onehot(7), pool, np.random.default_rng(5), blend="gaussian")
    b = paste_instances(img, onehot(7), pool, np.random.default_rng(5), blend="gaussian")
    assert (img == img_in).all()
    assert all((x == y).all() for x, y in zip(a, b))


# ---------------------------------------------------------------- the paired data set

class FakeBase:
    """The interface PairedDataset needs, with a transform of exact geometry (flip + crop, pad 0):
    pixels outside the pasted object must then match between original and copy bit for bit."""

    def __init__(self, n=8, size=(36, 44), crop=32, seed=0, same_image=False):
        self.n, self.size, self.crop, self.seed, self.same_image = n, size, crop, seed, same_image
        self.epoch = 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def rng_for(self, idx):
        return np.random.default_rng([self.seed, self.epoch, idx])

    def load_example(self, idx):
        rng = np.random.default_rng(0 if self.same_image else 100 + idx)
        img = rng.integers(0, 256, self.size + (3,), dtype=np.uint8)
        return f"img{idx}", img, onehot(5 + idx % 3)

    def transform(self, img, rng):
        if rng.random() < 0.5:
            img = img[:, ::-1]
        x = img.astype(np.float32) / 255 - 0.5
        H, W = x.shape[:2]
        out = np.zeros((self.crop, self.crop, 3), np.float32)
        y0, x0 = int(rng.integers(H - self.crop + 1)), int(rng.integers(W - self.crop + 1))
        out[:] = x[y0:y0 + self.crop, x0:x0 + self.crop]
        return out.transpose(2, 0, 1).copy()


def test_paired_item_differs_only_where_pasted():
    paired = PairedDataset(FakeBase(), make_pool(), seed=3, views="shared")
    n_diff = 0
    for idx in range(len(paired)):
        item = paired[idx]
        assert item["name"] == f"img{idx}" and item["num_pasted"] == 1
        assert item["label_aug"].sum() == item["label"].sum() + 1 and (item["label_aug"] >= item["label"]).all()
        # the pasted region after the same transform: a white-on-black picture of it
        _, _, _, _, _, pasted = paired.augment(idx)
        region = paired.base.transform(np.repeat((pasted > 0)[..., None] * 255, 3, 2).astype(np.uint8),
                                       paired.base.rng_for(idx))[0] > 0
        assert (item["img"][:, ~region] == item["img_aug"][:, ~region]).all()
        n_diff += (item["img"] != item["img_aug"]).any()
    assert n_diff >= len(paired) - 1  # the object may fall outside the crop, but not every time


def batches(loader):
    return [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in b.items()} for b in loader]


def test_same_seed_same_augmentations_with_and_without_workers():
    def run(seed, workers):
        paired = PairedDataset(FakeBase(same_image=True), make_pool(), seed=seed)
        loader = torch.utils.data.DataLoader(paired, batch_size=2, num_workers=workers, shuffle=False)
        return batches(loader)

    a, b, w2 = run(0, 0), run(0, 0), run(0, 2)
    for x, y, z in zip(a, b, w2):
        for k in ("img", "img_aug", "label_aug", "num_pasted"):
            assert torch.equal(x[k], y[k]) and torch.equal(x[k], z[k])
    other = run(1, 0)
    assert any(not torch.equal(x["img_aug"], y["img_aug"]) for x, y in zip(a, other))
    # one image everywhere, yet each item draws its own paste, not only its own crop
    paired = PairedDataset(FakeBase(same_image=True), make_pool(), seed=0)
    pastes = {paired.augment(i)[3].tobytes() for i in range(len(paired))}
    assert len(pastes) == len(paired)


def test_draws_change_with_the_epoch():
    paired = PairedDataset(FakeBase(), make_pool(), seed=0)
    first = [paired.augment(i)[3] for i in range(4)]  # before the base transform: the paste alone
    paired.set_epoch(1)
    assert paired.base.epoch == 1
    assert not any(np.array_equal(f, paired.augment(i)[3]) for i, f in enumerate(first))
    paired.set_epoch(0)
    assert all(np.array_equal(f, paired.augment(i)[3]) for i, f in enumerate(first))


def test_no_paste_is_reported():
    pool = InstancePool({5: [blob(5, 5, 0)]}, NAMES)
    paired = PairedDataset(FakeBase(n=3), pool, seed=0, views="shared")  # labels 5, 6, 7: item 0 already has class 5
    counts = [paired[i]["num_pasted"] for i in range(3)]
    assert counts == [0, 1, 1]
    item = paired[0]
    assert np.array_equal(item["img"], item["img_aug"]) and np.array_equal(item["label"], item["label_aug"])


def test_sample_grid_writes_a_picture(tmp_path):
    path = sample_grid(PairedDataset(FakeBase(n=5), make_pool(), seed=0), 3, tmp_path / "cda_samples.png")
    im = Image.open(path)
    assert im.size[1] >= 3 * 160 and im.mode == "RGB"


# ---------------------------------------------------------------- on the toy VOC devkit

def pool_args(devkit, tmp_path, **kw):  # the driver flags make_instance_pool reads
    args = dict(pool_source="gt", pool_mask_dir=None, pool_list=os.path.join(devkit, "train_aug.txt"),
                data=as_data(str(devkit)), cls_labels=os.path.join(devkit, "cls_labels.txt"), pool_min_ratio=0.05, pool_max_ratio=0.9, pool_dir=str(tmp_path / "pool"))
    args.update(kw)
    return types.SimpleNamespace(**args)


def test_make_instance_pool_step_and_paired_voc_data(tiny_devkit, tmp_path):
    from step import make_instance_pool
    from voc12 import CAT_LIST
    from voc12.dataloader import VOC12ClassificationDataset

    meta = make_instance_pool.run(pool_args(tiny_devkit, tmp_path))
    assert meta["num_instances"] > 0 and meta["class_names"] == list(CAT_LIST)
    pool = InstancePool.load(tmp_path / "pool")
    assert len(pool) == meta["num_instances"]

    # flip + crop only (no resize): the original and its copy then agree bit for bit off the object
    base = VOC12ClassificationDataset(os.path.join(tiny_devkit, "train_aug.txt"), str(tiny_devkit),
                                      os.path.join(tiny_devkit, "cls_labels.txt"), hor_flip=True,
                                      crop_size=64, crop_method="random", seed=4)
    paired = PairedDataset(base, pool, views="shared")
    assert paired.seed == 4
    mean = base.transform(np.zeros((8, 8, 3), np.uint8), np.random.default_rng(0))[:, 0, 0]
    for idx in range(min(6, len(paired))):
        item = paired[idx]
        assert item["img"].shape == item["img_aug"].shape == (3, 64, 64)
        assert ((item["label_aug"] > 0) >= (item["label"] > 0)).all()
        assert item["num_pasted"] == (item["label_aug"] > item["label"]).sum()
        pasted = paired.augment(idx)[5]
        region = base.transform(np.repeat((pasted > 0)[..., None] * 255, 3, 2).astype(np.uint8),
                                base.rng_for(idx))
        off = np.isclose(region, mean[:, None, None]).all(axis=0)
        assert (item["img"][:, off] == item["img_aug"][:, off]).all()

    def run(workers):
        loader = torch.utils.data.DataLoader(paired, batch_size=4, num_workers=workers)
        return batches(loader)

    for a, b in zip(run(0), run(2)):
        assert a["name"] == b["name"]
        for k in ("img", "img_aug", "label", "label_aug", "num_pasted"):
            assert torch.equal(a[k], b[k])
    assert sample_grid(paired, 4, tmp_path / "cda_samples.png") == tmp_path / "cda_samples.png"


def test_classes_never_pasted_names_only_classes_of_the_list():
    from step.make_instance_pool import classes_never_pasted
    from voc12 import CAT_LIST
    labels = {"a": np.eye(20, dtype=np.float32)[CAT_LIST.index("cow")],
              "b": np.eye(20, dtype=np.float32)[CAT_LIST.index("car")] + np.eye(20, dtype=np.float32)[0]}
    meta = {"classes_without_instances": ["aeroplane", "bicycle", "car", "sheep"]}
    assert classes_never_pasted(meta, ["a", "b"], labels, CAT_LIST) == ["aeroplane", "car"]
    assert classes_never_pasted(meta, ["a"], labels, CAT_LIST) == []


def test_make_instance_pool_user_errors(tiny_devkit, tmp_path):
    from step import make_instance_pool
    with pytest.raises(UserError, match="no_such_dir"):
        make_instance_pool.run(pool_args(tiny_devkit, tmp_path, pool_source="sem_seg",
                                         pool_mask_dir=str(tmp_path / "no_such_dir")))
    with pytest.raises(UserError, match="wider --pool_min_ratio"):  # nothing covers 99.9 % with one class
        make_instance_pool.run(pool_args(tiny_devkit, tmp_path, pool_min_ratio=0.999, pool_max_ratio=1.0))
    assert not (tmp_path / "pool").exists()


def test_trimmed_rotated_object_keeps_its_colour_at_the_border():
    """Ours: bilinear rotation must not darken the object's edge with the canvas fill (a dark fringe)."""
    colour = np.array([200, 120, 40], np.uint8)
    pool = InstancePool({2: [(np.broadcast_to(colour, (20, 30, 3)).copy(), np.ones((20, 30), bool))]}, NAMES)
    img = np.zeros((60, 80, 3), np.uint8)
    for seed in range(5):
        aug, _, pasted = paste_instances(img, onehot(0), pool, np.random.default_rng(seed), rotation=(30, 60),
                                         geometry="trimmed")
        assert pasted.any()
        assert np.abs(aug[pasted > 0].astype(int) - colour).max() <= 1


# ---------------------------------------------------------------- the reference paste, pixel for pixel

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "cda_paste_reference.npz")


def reference_cases():
    """14 cases made by CDA's misc/imutils.py (data_aug_rotation, data_aug, data_aug_rotation_blur) with
    random.randint / random.random patched to fixed draws and scipy.misc.imresize shimmed with PIL's
    bilinear resize (tests/fixtures/README_cda_paste.md). Angles include 0 and 90; positions (0, 0), the
    far corner, the middle and mixed corners."""
    d = np.load(FIXTURE)
    return [{k.split("_", 1)[1]: d[k] for k in d.files if k.startswith(f"{i}_")} for i in range(int(d["n"]))]


@pytest.mark.parametrize("case", reference_cases(), ids=lambda c: f"{c['bg'].shape[0]}x{c['bg'].shape[1]}")
def test_paste_with_equals_the_reference_functions(case):
    bg, fg, seg = case["bg"], case["fg"], case["seg"]
    assert set(np.unique(seg)) == {0, int(seg.max())}  # class index + 1 on the object
    out = paste_with(bg, fg, seg, int(case["angle"]), int(case["row"]), int(case["col"]))
    assert out.dtype == np.uint8 and out.shape == bg.shape
    assert (out != bg).any()
    assert (out == case["rotation"]).mean() == 1.0  # data_aug_rotation
    out = paste_with(bg, fg, seg, None, int(case["scale_row"]), int(case["scale_col"]), factor=float(case["factor"]))
    assert (out == case["scale"]).mean() == 1.0  # data_aug
    out = paste_with(bg, fg, seg, int(case["angle"]), int(case["blur_row"]), int(case["blur_col"]), blend="gaussian")
    assert (out == case["blur"]).mean() == 1.0  # data_aug_rotation_blur
    assert (bg == case["bg"]).all()  # input untouched


def test_paste_with_rejects_positions_that_do_not_fit():
    case = reference_cases()[1]  # pasted at the far corner: one more row or column leaves the image
    bg, fg, seg, angle, row, col = (case[k] for k in ("bg", "fg", "seg", "angle", "row", "col"))
    paste_with(bg, fg, seg, int(angle), int(row), int(col))
    for r, c in ((row + 1, col), (row, col + 1), (-1, 0), (0, -1)):
        with pytest.raises(ValueError, match="does not fit"):
            paste_with(bg, fg, seg, int(angle), int(r), int(c))


def test_shrink_size_keeps_the_aspect_ratio_and_truncates():
    assert shrink_size((10, 20), (100, 100)) == (10, 20)  # fits: unchanged (still resized to itself)
    assert shrink_size((100, 50), (100, 100)) == (70, 35)  # height capped at 0.7 H
    assert shrink_size((50, 100), (100, 100)) == (35, 70)  # width capped at 0.7 W
    assert shrink_size((90, 200), (100, 100)) == (31, 70)  # height first (70 x 155.6), then width: 31.5 -> 31
    assert shrink_size((10, 20), (100, 100), factor=1.15) == (11, 23)


def test_reference_paste_draws_integer_angles_and_keeps_a_class_dependent_rim():
    """The reference resizes the class-valued mask bilinearly and pastes where it is non-zero: a brighter
    class value keeps more of the interpolated rim than class 1 does, with the same draws."""
    img = np.zeros((80, 80, 3), np.uint8)
    rgb = np.full((40, 40, 3), 200, np.uint8)
    area = {}
    for c in (0, 19):
        pool = InstancePool({c: [(rgb, np.pad(np.ones((30, 30), bool), 5))]}, NAMES)
        _, _, pasted = paste_instances(img, onehot(5), pool, np.random.default_rng(3), rotation=(-90, 90))
        area[c] = (pasted > 0).sum()
    assert area[19] > area[0] > 0  # about 1000 vs 900 pixels
    with pytest.raises(ValueError, match="no paste with both"):
        paste_instances(img, onehot(5), make_pool(), np.random.default_rng(0), blend="gaussian",
                        scale_jitter=(0.8, 1.2))


def test_independent_views_give_the_copy_its_own_crop():
    paired = PairedDataset(FakeBase(same_image=True), InstancePool({}, NAMES), seed=1)  # nothing to paste
    assert paired.views == "independent"
    differ = 0
    for idx in range(len(paired)):
        item = paired[idx]
        # the original is exactly the base's own view; the copy is the same image through another draw
        assert np.array_equal(item["img"], paired.base.transform(paired.base.load_example(idx)[1],
                                                                 paired.base.rng_for(idx)))
        assert np.array_equal(item["img_aug"], paired.base.transform(paired.base.load_example(idx)[1],
                                                                     paired.copy_view_rng(idx)))
        differ += not np.array_equal(item["img"], item["img_aug"])
    assert differ >= len(paired) - 2
    with pytest.raises(ValueError, match="views"):
        PairedDataset(FakeBase(), make_pool(), views="same")
