import json
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import TINY_CLASSES, write_tiny_devkit
from misc import imutils
from misc.pyutils import UserError
from voc12 import CAT_LIST, CAT_NAME_TO_IDX, N_CAT
from voc12 import dataloader as dl
from voc12 import make_cls_labels, synth


def _ids(path):
    return path.read_text().split()


def _files(root):
    out = {}
    for d, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


# ---------------------------------------------------------------- classes and the toy devkit

def test_class_list():
    assert N_CAT == 20 and CAT_LIST[0] == "aeroplane" and CAT_LIST[-1] == "tvmonitor"
    assert CAT_NAME_TO_IDX["person"] == 14


def test_devkit_layout_and_lists(tiny_devkit):
    root = tiny_devkit
    train_aug, train, val = _ids(root / "train_aug.txt"), _ids(root / "train.txt"), _ids(root / "val.txt")
    heldout = _ids(root / "heldout.txt")
    assert (len(train_aug), len(train), len(val), len(heldout)) == (10, 5, 2, 2)
    assert set(train) <= set(train_aug) and not set(val) & set(train_aug)
    assert _ids(root / "ImageSets" / "Segmentation" / "train.txt") == train
    assert _ids(root / "ImageSets" / "Segmentation" / "val.txt") == val
    labels = dl.load_cls_labels(str(root / "cls_labels.txt"))
    assert set(labels) == set(train_aug + val + heldout)
    allowed = {CAT_NAME_TO_IDX[c] for c in TINY_CLASSES}
    for name in train_aug + val + heldout:
        img = imutils.read_image(str(root / "JPEGImages" / f"{name}.jpg"))
        assert img.shape == (48, 64, 3)
        seg = imutils.read_label_png(str(root / "SegmentationClass" / f"{name}.png"))
        assert seg.shape == (48, 64)
        present = set(np.unique(seg)) - {0, 255}
        # the segmentation classes are exactly the image-level labels, from the chosen subset
        assert present == {i + 1 for i in np.flatnonzero(labels[name])}
        assert set(np.flatnonzero(labels[name])) <= allowed
        assert 255 in seg  # boundary band
        fg = (seg != 0).mean()
        assert 0.08 <= fg <= 0.75


def test_labels_agree_with_xml(tiny_devkit):
    lists = [str(tiny_devkit / f) for f in ("train_aug.txt", "val.txt", "heldout.txt")]
    rebuilt = make_cls_labels.build_cls_labels(str(tiny_devkit), lists)
    stored = dl.load_cls_labels(str(tiny_devkit / "cls_labels.txt"))
    assert set(rebuilt) == set(stored)
    for name, classes in rebuilt.items():
        vec = np.zeros(20, np.float32)
        vec[[CAT_NAME_TO_IDX[c] for c in classes]] = 1
        assert np.array_equal(vec, stored[name])


def test_make_cls_labels_ignores_parts_and_writes(tmp_path):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>person</name><part><name>head</name></part></object>"
        "<object><name>dog</name></object><object><name>person</name></object></annotation>")
    (tmp_path / "list.txt").write_text("a\n")
    out = tmp_path / "cls.txt"
    make_cls_labels.main(["--voc12_root", str(tmp_path), "--lists", str(tmp_path / "list.txt"), "--out", str(out)])
    assert out.read_text() == "a dog person\n"
    (tmp_path / "list.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="b.xml"):
        make_cls_labels.build_cls_labels(str(tmp_path), [str(tmp_path / "list.txt")])


def test_same_seed_same_bytes_other_seed_differs(tiny_devkit, tmp_path):
    again = write_tiny_devkit(tmp_path / "again", seed=0)
    assert _files(again) == _files(tiny_devkit)
    other = _files(write_tiny_devkit(tmp_path / "other", seed=1))
    jpg = "JPEGImages/2007_000000.jpg"
    assert other[jpg] != _files(tiny_devkit)[jpg]


def test_context_bias_controls_background(tmp_path):
    synth.write_devkit(str(tmp_path / "b1"), 6, (32, 32), seed=3, context_bias=1.0, progress=False)
    meta = json.loads((tmp_path / "b1" / "synth.json").read_text())
    assert all(v["home"] for v in meta["images"].values())
    synth.write_devkit(str(tmp_path / "b0"), 40, (32, 32), seed=3, context_bias=0.0, progress=False)
    meta = json.loads((tmp_path / "b0" / "synth.json").read_text())
    assert sum(v["home"] for v in meta["images"].values()) < 20  # home about 1 in 9


def test_synth_bad_arguments(tmp_path):
    with pytest.raises(UserError, match="unknown class 'unicorn'"):
        synth.write_devkit(str(tmp_path / "x"), 4, classes=["cat", "unicorn"], progress=False)
    with pytest.raises(UserError, match="num_images"):
        synth.write_devkit(str(tmp_path / "x"), 1, progress=False)


# ---------------------------------------------------------------- list / label files and bad input

def test_list_and_label_file_errors(tmp_path):
    with pytest.raises(UserError, match="image list not found"):
        dl.load_img_name_list(str(tmp_path / "none.txt"))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(UserError, match="empty"):
        dl.load_img_name_list(str(tmp_path / "empty.txt"))
    (tmp_path / "cls.txt").write_text("a cat\nb dog kitten\n")
    with pytest.raises(UserError, match=r"line 2: unknown class name 'kitten'"):
        dl.load_cls_labels(str(tmp_path / "cls.txt"))


def test_missing_devkit_folder(tiny_devkit, tmp_path):
    with pytest.raises(UserError, match="JPEGImages folder of --data_root not found: .*nowhere"):
        dl.VOC12ImageDataset(str(tiny_devkit / "train.txt"), str(tmp_path / "nowhere"))


def test_id_without_image(tiny_devkit, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("2007_000000\n2099_123456\n")
    with pytest.raises(UserError, match=r"2099_123456 .*JPEGImages/2099_123456\.jpg"):
        dl.VOC12ImageDataset(str(lst), str(tiny_devkit))


def test_id_without_cls_label(tiny_devkit, tmp_path):
    cls = tmp_path / "cls.txt"
    cls.write_text("2007_000000 cat\n")
    with pytest.raises(UserError, match="has no line in"):
        dl.VOC12ClassificationDataset(str(tiny_devkit / "train.txt"), str(tiny_devkit), str(cls))


def test_unreadable_image(tiny_devkit, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(tiny_devkit / "JPEGImages", root / "JPEGImages")
    (root / "JPEGImages" / "2007_000001.jpg").write_bytes(b"\xff\xd8 not really")
    ds = dl.VOC12ImageDataset(str(tiny_devkit / "train.txt"), str(root))
    assert ds[0]["img"].shape == (48, 64, 3)
    with pytest.raises(UserError, match="cannot read image .*2007_000001.jpg"):
        ds[1]


# ---------------------------------------------------------------- data sets

def _cls_ds(root, **kw):
    return dl.VOC12ClassificationDataset(str(root / "train_aug.txt"), str(root), str(root / "cls_labels.txt"), **kw)


def test_image_dataset(tiny_devkit):
    ds = dl.VOC12ImageDataset(str(tiny_devkit / "train.txt"), str(tiny_devkit))
    item = ds[0]
    assert len(ds) == 5 and item["name"] == "2007_000000"
    assert item["img"].dtype == np.uint8 and item["img"].shape == (48, 64, 3)


def test_classification_dataset_train(tiny_devkit):
    ds = _cls_ds(tiny_devkit, resize_long=(40, 80), hor_flip=True, crop_size=56, crop_method="random", seed=0)
    labels = dl.load_cls_labels(str(tiny_devkit / "cls_labels.txt"))
    for i in range(len(ds)):
        item = ds[i]
        assert item["img"].shape == (3, 56, 56) and item["img"].dtype == np.float32
        assert -3 < item["img"].min() and item["img"].max() < 3  # normalised
        assert item["label"].dtype == np.float32 and item["label"].shape == (20,)
        assert np.array_equal(item["label"], labels[item["name"]])
    a, b = ds[3]["img"], ds[3]["img"]
    assert np.array_equal(a, b)  # rng_for(idx) is deterministic
    ds.set_epoch(1)
    assert not np.array_equal(ds[3]["img"], a)


def test_classification_dataset_top_left_pads_zero(tiny_devkit):
    ds = _cls_ds(tiny_devkit, crop_size=80, crop_method="top_left")
    img = ds[0]["img"]
    assert img.shape == (3, 80, 80)
    assert np.all(img[:, 48:, :] == 0) and np.all(img[:, :, 64:] == 0)
    assert np.any(img[:, :48, :64] != 0)
    raw = ds.load_example(0)[1]
    assert np.allclose(img[:, :48, :64], imutils.HWC_to_CHW(imutils.Normalize()(raw)))


def test_transform_depends_only_on_generator(tiny_devkit):
    ds = _cls_ds(tiny_devkit, resize_long=(40, 80), hor_flip=True, crop_size=56, crop_method="random")
    name, img, label = ds.load_example(2)
    assert img.dtype == np.uint8 and label.shape == (20,)
    assert np.array_equal(ds.transform(img, ds.rng_for(2)), ds.transform(img, ds.rng_for(2)))
    r1, r2 = ds.rng_for(2).random(), dl.VOC12ClassificationDataset.rng_for(ds, 2).random()
    assert r1 == r2 == np.random.default_rng([0, 0, 2]).random()


def test_loader_results_do_not_depend_on_workers(tiny_devkit):
    ds = _cls_ds(tiny_devkit, resize_long=(40, 80), hor_flip=True, crop_size=48, crop_method="random", seed=7)

    def run(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers)
        return torch.cat([b["img"] for b in loader])

    assert torch.equal(run(0), run(2))


def test_msf_dataset(tiny_devkit):
    scales = (1.0, 0.5, 1.5)
    ds = dl.VOC12ClassificationDatasetMSF(str(tiny_devkit / "train.txt"), str(tiny_devkit),
                                          str(tiny_devkit / "cls_labels.txt"), scales=scales)
    item = ds[1]
    assert item["size"] == (48, 64) and item["label"].shape == (20,)
    assert len(item["img"]) == 3
    for s, x in zip(scales, item["img"]):
        assert x.shape == (2, 3, round(48 * s), round(64 * s)) and x.dtype == np.float32
        assert np.array_equal(x[1], x[0][:, :, ::-1])
    raw = ds.load_example(1)[1]
    assert np.allclose(item["img"][0][0], imutils.HWC_to_CHW(imutils.Normalize()(raw)))


def _seg_ds(root, **kw):
    return dl.VOC12SegmentationDataset(str(root / "train.txt"), str(root / "SegmentationClass"),
                                       root=str(root), **kw)


def test_segmentation_dataset_pads_255_and_keeps_values(tiny_devkit):
    ds = _seg_ds(tiny_devkit, crop_size=80, rescale=(0.9, 1.1), hor_flip=True)
    for i in range(len(ds)):
        item = ds[i]
        assert item["img"].shape == (3, 80, 80) and item["img"].dtype == np.float32
        assert item["label"].shape == (80, 80) and item["label"].dtype == np.uint8
        seg = imutils.read_label_png(str(tiny_devkit / "SegmentationClass" / f"{item['name']}.png"))
        assert set(np.unique(item["label"])) <= set(np.unique(seg)) | {255}
        pad = np.all(item["img"] == 0, axis=0)
        assert pad.any() and np.all(item["label"][pad] == 255)


def test_segmentation_image_and_label_stay_aligned(tiny_devkit, tmp_path):
    # a "label" equal to the red channel lets us check that crop and flip hit both the same way
    names = _ids(tiny_devkit / "train.txt")
    for n in names:
        red = imutils.read_image(str(tiny_devkit / "JPEGImages" / f"{n}.jpg"))[..., 0]
        imutils.save_label_png(str(tmp_path / f"{n}.png"), red)
    ds = dl.VOC12SegmentationDataset(str(tiny_devkit / "train.txt"), str(tmp_path), 40, str(tiny_devkit),
                                     hor_flip=True, seed=1)
    for i in range(len(ds)):
        item = ds[i]
        r = item["img"][0] * imutils.IMAGENET_STD[0] * 255 + imutils.IMAGENET_MEAN[0] * 255
        assert np.array_equal(np.round(r).astype(np.uint8), item["label"])


def test_segmentation_missing_label(tiny_devkit, tmp_path):
    with pytest.raises(UserError, match="label PNG of id 2007_000000 not found"):
        dl.VOC12SegmentationDataset(str(tiny_devkit / "train.txt"), str(tmp_path), 32, str(tiny_devkit))


def test_affinity_dataset(tiny_devkit):
    indexing = pytest.importorskip("misc.indexing")
    crop = 64
    path_index = indexing.PathIndex(radius=5, default_size=(crop // 4, crop // 4))
    ds = dl.VOC12AffinityDataset(str(tiny_devkit / "train.txt"), str(tiny_devkit / "SegmentationClass"), crop,
                                 str(tiny_devkit), path_index.src_indices, path_index.dst_indices,
                                 rescale=(0.9, 1.1), hor_flip=True)
    item = ds[0]
    bg, fg, neg = (np.asarray(item[k]) for k in ("aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label"))
    assert bg.shape == fg.shape == neg.shape == path_index.dst_indices.shape
    total = bg + fg + neg
    assert set(np.unique(total)) <= {0.0, 1.0}  # each pair in at most one group
    assert bg.sum() > 0 and neg.sum() > 0


def test_image_lists_in_psa_format_and_unions(tmp_path):
    """PSA's lists name file paths; ours take the ids. A list of lists is their union, each id once."""
    from voc12.dataloader import load_img_name_list
    psa = tmp_path / "psa.txt"
    psa.write_text("/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
                   "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n")
    ours = tmp_path / "ours.txt"
    ours.write_text("2007_000039\n2008_000002 extra column\n\n")
    assert load_img_name_list(str(psa)) == ["2007_000032", "2007_000039"]
    assert load_img_name_list([str(ours), str(psa)]) == ["2007_000039", "2008_000002", "2007_000032"]
