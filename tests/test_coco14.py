"""COCO 2014: the description, the toy download (coco14/synth.py) and coco14.prepare's masks, labels and lists,
checked against pycocotools' own COCO.annToMask on the toy."""
import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import coco14
from coco14 import prepare as prep
from coco14 import synth
from misc import imutils
from misc.datasets import Data
from misc.pyutils import UserError
from voc12 import dataloader as dl

TOY = dict(num_images=20, size=(64, 48), classes=["airplane", "boat", "car", "tv"], num_heldout=2, progress=False)


def _coco(path):
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        return COCO(str(path))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(root, out_dir, summary): a toy download and coco14.prepare's output. Treat both as read-only."""
    root = tmp_path_factory.mktemp("toy_coco")
    synth.write_devkit(str(root), **TOY)
    out = root / "labels"
    summary = prep.prepare(str(root), str(out), num_workers=1, log=lambda _: None)
    return root, out, summary


def _small(tmp_path, name="coco"):
    root = tmp_path / name
    synth.write_devkit(str(root), num_images=8, size=(48, 40), classes=["cow", "train"], progress=False)
    return root


def _files(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(root) for f in fs}


# ---------------------------------------------------------------- the description


def test_description():
    assert coco14.N_CAT == len(coco14.CAT_IDS) == len(coco14.CAT_LIST) == len(set(coco14.CAT_LIST))
    assert coco14.CAT_IDS == sorted(coco14.CAT_IDS) and coco14.CAT_IDS[0] == 1 and coco14.CAT_IDS[-1] == 90
    assert not {12, 26, 29, 30, 45, 66, 68, 69, 71, 83} & set(coco14.CAT_IDS)  # COCO's gaps
    assert coco14.CLASS_NAMES == ["background"] + coco14.CAT_LIST
    for name in ("traffic_light", "fire_hydrant", "hair_drier", "teddy_bear", "tv", "couch", "dining_table"):
        assert name in coco14.CAT_NAME_TO_IDX
    assert all(" " not in c for c in coco14.CAT_LIST)
    assert coco14.CAT_LIST[coco14.CAT_ID_TO_IDX[90]] == "toothbrush"
    assert coco14.SPLITS == ("train2014", "val2014")


def test_image_path_parses_the_stem():
    assert coco14.image_path("/c", "COCO_train2014_000000000009") == "/c/train2014/COCO_train2014_000000000009.jpg"
    assert coco14.image_path("/c", "COCO_val2014_000000581929") == "/c/val2014/COCO_val2014_000000581929.jpg"
    data = Data("coco14", "/c", "/c/labels")
    assert data.gt_path("COCO_val2014_000000000042") == "/c/labels/SegmentationClass/COCO_val2014_000000000042.png"
    assert data.eval_list_path("train") == "/c/labels/train14.txt" and data.num_classes == coco14.N_CAT
    for bad in ("2007_000032", "COCO_test2014_000000000001", "COCO_train2014_9", "COCO_train2014_000000000009.jpg",
                "coco_train2014_000000000009", ""):
        with pytest.raises(UserError) as e:
            coco14.image_path("/c", bad)
        assert "\n" not in str(e.value) and repr(bad) in str(e.value)


# ---------------------------------------------------------------- the toy download


def test_toy_has_every_case(toy):
    root, _, _ = toy
    kinds, crowd, overlap, empty = set(), [], False, False
    for split in coco14.SPLITS:
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert [c["id"] for c in data["categories"]] == coco14.CAT_IDS
        assert [c["name"].replace(" ", "_") for c in data["categories"]] == coco14.CAT_LIST
        ids = [im["id"] for im in data["images"]]
        assert ids != sorted(ids)  # COCO's files are not in id order either
        for im in data["images"]:
            assert (root / split / im["file_name"]).is_file() and im["file_name"].startswith(f"COCO_{split}_")
            assert Image.open(root / split / im["file_name"]).size == (im["width"], im["height"])
        for a in data["annotations"]:
            assert {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"} <= set(a)
            s = a["segmentation"]
            kinds.add("polygon" if isinstance(s, list) else "rle" if isinstance(s["counts"], str) else "raw_rle")
            if a["iscrowd"]:
                crowd.append(a)
        coco = _coco(root / "annotations" / f"instances_{split}.json")
        for img_id in coco.getImgIds():
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=False))
            empty |= not coco.getAnnIds(imgIds=img_id)
            masks = [(coco.annToMask(a), a["category_id"]) for a in anns]
            overlap |= any((m1 & m2).any() and c1 != c2
                           for i, (m1, c1) in enumerate(masks) for m2, c2 in masks[i + 1:])
    assert kinds == {"polygon", "rle", "raw_rle"}
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    assert overlap and empty
    heldout = (root / "heldout.txt").read_text().split()
    assert len(heldout) == 2 and all((root / "val2014" / f"{s}.jpg").is_file() for s in heldout)


def test_synth_same_arguments_same_bytes_and_voc_names(tmp_path):
    kw = dict(num_images=6, size=(40, 32), seed=3, num_heldout=1, progress=False)
    synth.write_devkit(str(tmp_path / "a"), classes=["aeroplane", "tvmonitor"], **kw)  # the VOC demo's names
    synth.write_devkit(str(tmp_path / "b"), classes=["airplane", "tv"], **kw)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "synth.json").read_text())["classes"] == ["airplane", "tv"]
    with pytest.raises(UserError, match="unknown class 'giraffe'"):
        synth.write_devkit(str(tmp_path / "c"), classes=["giraffe"], **kw)
    assert synth.main(["--out", str(tmp_path / "d"), "--num_images", "1"]) == 2


# ---------------------------------------------------------------- prepare


def test_masks_are_pycocotools_painting(toy):
    """Non-crowd annotations in the file's order, later over earlier, category id -> 1..N in sorted-id order."""
    root, out, _ = toy
    reversed_differs = False
    for split in coco14.SPLITS:
        coco = _coco(root / "annotations" / f"instances_{split}.json")
        label_of = {cat_id: i + 1 for i, cat_id in enumerate(sorted(coco.getCatIds()))}
        for img in coco.loadImgs(coco.getImgIds()):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=False))
            expected = np.zeros((img["height"], img["width"]), np.uint8)
            for a in anns:
                expected[coco.annToMask(a) == 1] = label_of[a["category_id"]]
            backwards = np.zeros_like(expected)
            for a in reversed(anns):
                backwards[coco.annToMask(a) == 1] = label_of[a["category_id"]]
            reversed_differs |= not np.array_equal(expected, backwards)
            path = out / "SegmentationClass" / (img["file_name"][:-4] + ".png")
            with Image.open(path) as im:
                assert im.mode == "P" and bytes(im.getpalette()[:768]) == imutils.voc_palette().tobytes()
            np.testing.assert_array_equal(imutils.read_label_png(str(path)), expected)
    assert reversed_differs  # the toy's overlaps make the order matter


def test_labels_and_lists(toy):
    root, out, summary = toy
    labels = dl.load_cls_labels(str(out / "cls_labels.txt"), coco14.CAT_LIST)
    lines = {line.split()[0]: line.split()[1:] for line in (out / "cls_labels.txt").read_text().splitlines()}
    crowd_only = False
    for split, list_name in (("train2014", "train14.txt"), ("val2014", "val14.txt")):
        coco = _coco(root / "annotations" / f"instances_{split}.json")
        stems = [coco.imgs[i]["file_name"][:-4] for i in sorted(coco.getImgIds())]
        assert (out / list_name).read_text().split() == stems  # every image, by id, annotated or not
        for img_id, stem in zip(sorted(coco.getImgIds()), stems):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))  # crowd included
            names = [coco14.CAT_LIST[coco14.CAT_ID_TO_IDX[c]] for c in sorted({a["category_id"] for a in anns})]
            assert lines[stem] == names
            assert set(np.flatnonzero(labels[stem])) == {coco14.CAT_NAME_TO_IDX[n] for n in names}
            painted = set(np.unique(imutils.read_label_png(str(out / "SegmentationClass" / f"{stem}.png")))) - {0}
            crowd_only |= painted < {coco14.CAT_NAME_TO_IDX[n] + 1 for n in names}
        assert summary["splits"][split]["images"] == len(stems)
    assert crowd_only  # a class annotated only as a crowd: in the label, not in the mask
    assert any(not names for names in lines.values())  # an unannotated image: its stem alone
    assert sum(v["crowd_annotations"] for v in summary["splits"].values()) >= 1
    assert not set((root / "heldout.txt").read_text().split()) & set(lines)


def test_resumable(tmp_path):
    root, out = _small(tmp_path), tmp_path / "out"
    assert prep.needed(str(root), str(out))
    first = prep.prepare(str(root), str(out), num_workers=2, log=lambda _: None)  # through the process pool
    assert first["masks_written"] == 8 and not prep.needed(str(root), str(out))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    second = prep.prepare(str(root), str(out), num_workers=1, log=lambda _: None)
    assert (second["masks_written"], second["masks_kept"]) == (0, 8)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before
    victim = sorted((out / "SegmentationClass").iterdir())[3]
    victim.unlink()
    (out / "SegmentationClass" / ".x.abcd1234.tmp.png").write_bytes(b"half")  # what a killed run leaves
    assert prep.prepare(str(root), str(out), num_workers=1, log=lambda _: None)["masks_written"] == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == {p: b for p, (_, b) in before.items()}
    assert prep.prepare(str(root), str(out), num_workers=1, force=True, log=lambda _: None)["masks_written"] == 8
    # changed annotation files: needed again, and every mask is rewritten
    ann = root / "annotations" / "instances_val2014.json"
    ann.write_text(ann.read_text() + " ")
    assert prep.needed(str(root), str(out))
    assert prep.prepare(str(root), str(out), num_workers=1, log=lambda _: None)["masks_written"] == 8
    assert not prep.needed(str(root), str(out))


def test_description_hooks(tmp_path):
    root = _small(tmp_path)
    data = Data("coco14", str(root), coco14.default_label_root(str(root)))
    coco14.check_root(data.root, data.label_root)
    coco14.prepare_data(data, 1, lambda _: None)
    assert not prep.needed(data.root, data.label_root)
    assert (root / "cda_labels" / "train14.txt").is_file()


def _break_root(root):
    shutil.rmtree(root / "annotations")
    return "annotations folder not found"


def _break_json(root):
    path = root / "annotations" / "instances_val2014.json"
    path.write_bytes(path.read_bytes()[:-40])
    return "cannot parse"


def _break_image(root):
    data = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    (root / "train2014" / data["images"][0]["file_name"]).unlink()
    return "not found"


def _break_category(root):
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 12  # one of COCO's gaps
    path.write_text(json.dumps(data))
    return "category id 12"


@pytest.mark.parametrize("breaker, file", [(_break_root, "annotations"), (_break_json, "instances_val2014.json"),
                                           (_break_image, "COCO_train2014_"), (_break_category, "instances_train2014")])
def test_bad_input_is_one_line(tmp_path, capsys, breaker, file):
    root, out = _small(tmp_path), tmp_path / "out"
    what = breaker(root)
    with pytest.raises(UserError) as e:
        prep.prepare(str(root), str(out), num_workers=1, log=lambda _: None)
    msg = str(e.value)
    assert "\n" not in msg and what in msg and file in msg
    assert prep.main(["--coco_root", str(root), "--out_dir", str(out), "--num_workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {msg}"
    assert not out.exists()  # everything is checked before anything is written


def test_bad_segmentation_in_a_worker(tmp_path):
    """Segmentations are decoded in the workers: an error there is still one line naming file and annotation."""
    root = _small(tmp_path)
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    ann = next(a for a in data["annotations"] if not a["iscrowd"])
    ann["segmentation"] = {"size": [3, 3], "counts": [2, 7]}
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as e:
        prep.prepare(str(root), str(tmp_path / "out"), num_workers=2, log=lambda _: None)
    assert "\n" not in str(e.value) and f"annotation {ann['id']} is a 3x3 mask" in str(e.value)
    assert str(path) in str(e.value)
    assert not (tmp_path / "out" / "prepare.json").exists()
