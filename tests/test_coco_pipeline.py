"""--dataset coco14 end to end on a tiny COCO-layout folder: the driver prepares the labels from the annotations,
then runs both stages and the segmentation network with 80 classes (background + 80 segmentation labels)."""
from conftest import SEG_TINY, TINY_CLASSES
import json
import re

import numpy as np
import pytest

import run_sample
from coco14 import CAT_LIST, CLASS_NAMES, synth
from misc import pyutils
from misc.datasets import Data
from misc.imutils import read_image, read_label_png
from voc12.dataloader import load_cls_labels, load_img_name_list


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_coco")
    synth.write_devkit(str(root), num_images=14, size=(64, 48), classes=TINY_CLASSES, num_val=4, progress=False)
    work = tmp_path_factory.mktemp("coco_work")
    flags = ["--dataset", "coco14", "--data_root", str(root), "--work_dir", str(work),
             "--backbone_weights", "none", "--from_scratch", "--cam_momentum", "0.9", "--cam_learning_rate", "0.01",
             "--cam_crop_size", "64", "--cam_resize_long", "48", "80", "--cam_batch_size", "4",
             "--cam_num_epoches", "1", "--cam_scales", "1.0", "0.5", "--irn_crop_size", "96",
             "--irn_batch_size", "4", "--irn_num_epoches", "1", "--irn_backbone_weights", "cam",
             "--num_workers", "0", "--device", "cpu", "--pool_source", "gt", "--exp_times", "4"] + SEG_TINY
    assert run_sample.main(flags) == 0
    return root, work


def test_prepared_labels_and_lists(coco_run):
    root, _ = coco_run
    labels_dir = root / "cda_labels"  # the default --label_root
    train = load_img_name_list(str(labels_dir / "train14.txt"))
    val = load_img_name_list(str(labels_dir / "val14.txt"))
    assert len(train) == 10 and len(val) == 4 and all(n.startswith("COCO_train2014_") for n in train)
    assert (labels_dir / "prepare.json").is_file()
    labels = load_cls_labels(str(labels_dir / "cls_labels.txt"), CAT_LIST)
    assert all(v.shape == (len(CAT_LIST),) for v in labels.values()) and set(labels) == set(train + val)


def test_stage_outputs_use_80_classes(coco_run):
    root, work = coco_run
    data = Data("coco14", str(root), str(root / "cda_labels"))
    labels = load_cls_labels(str(root / "cda_labels" / "cls_labels.txt"), CAT_LIST)
    train = load_img_name_list(str(root / "cda_labels" / "train14.txt"))
    seen = set()
    for suffix in ("", "_aug"):
        for name in train:
            h, w = read_image(data.image_path(name)).shape[:2]
            keys = np.nonzero(labels[name])[0]
            cam = pyutils.load_npz(str(work / "result" / f"cam{suffix}" / f"{name}.npz"))
            assert np.array_equal(cam["keys"], keys) and cam["high_res"].shape == (len(keys), h, w)
            mask = read_label_png(str(work / "result" / f"sem_seg{suffix}" / f"{name}.png"))
            assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, *(keys + 1)}
            seen |= set(keys.tolist())
    assert CAT_LIST.index("cat") in seen  # COCO's index of cat (15; VOC's is 7) reaches the CAMs and masks


def test_results_name_the_data_set_and_its_classes(coco_run):
    _, work = coco_run
    results = json.loads((work / "results.json").read_text())
    assert results["dataset"] == "coco14" and results["class_names"] == CLASS_NAMES
    for stage in ("stage1", "stage2"):
        for metric in ("cam", "sem_seg", "seg"):
            assert 0 <= results[stage][metric]["miou"] <= 1
            assert sorted(results[stage][metric]["iou"]) == sorted(CLASS_NAMES)  # results.json sorts its keys
    pool = json.loads((work / "instance_pool" / "pool.json").read_text())
    assert pool["class_names"] == CAT_LIST and set(pool["counts"]) == set(CAT_LIST)
    log = (work / "run.log").read_text()
    assert "MS COCO 2014" in log and "33.2" in log  # the table names the data set and shows the listed figure
    report = (work / "report.html").read_text()
    assert "MS COCO 2014" in report and "traffic_light" not in report.split("Per-class")[0]
    # per-class rows in the data set's order (background first), not results.json's sorted keys
    rows = re.findall(r"<tr><td>([a-z_ ]+)</td><td>", report.split("Per-class")[1].split("</table>")[0])
    assert rows[0] == "background" and rows == [n for n in CLASS_NAMES if n in rows] and len(rows) >= 3
    # the pool's counts in one line: the classes that have instances, and how many of the 80 have none
    have = [c for c in CAT_LIST if pool["counts"][c]]
    line = f"{pool['num_instances']} instances from {pool['num_masks']} masks: " + ", ".join(
        f"{c} {pool['counts'][c]}" for c in have)
    assert line in report and f"{len(CAT_LIST) - len(have)} of {len(CAT_LIST)} classes have none" in report
