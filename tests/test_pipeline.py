"""The whole pipeline, stage I and stage II, on the tiny devkit: every output written, right shapes and values."""
from conftest import SEG_ON, SEG_TINY, devkit_flags
import json
import os

import numpy as np
import pytest

import run_sample
from misc import config, pyutils, stages
from misc.imutils import read_image, read_label_png
from voc12.dataloader import load_cls_labels, load_img_name_list


def tiny_flags(devkit, work_dir):
    return devkit_flags(devkit, work_dir) + [
            "--backbone_weights", "none", "--from_scratch", "--cam_momentum", "0.9", "--cam_learning_rate", "0.01",
            "--cam_crop_size", "64", "--cam_resize_long", "48", "80", "--cam_batch_size", "4",
            "--cam_num_epoches", "1", "--cam_scales", "1.0", "0.5", "--irn_crop_size", "96",
            "--irn_batch_size", "4", "--irn_num_epoches", "1", "--irn_backbone_weights", "cam",
            "--num_workers", "0", "--device", "cpu", "--pool_source", "gt", "--exp_times", "4"] + SEG_ON + SEG_TINY


@pytest.fixture(scope="module")
def pipeline_run(tiny_devkit, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    assert run_sample.main(tiny_flags(tiny_devkit, work)) == 0
    return tiny_devkit, work


def test_stage_outputs(pipeline_run):
    devkit, work = pipeline_run
    labels = load_cls_labels(str(devkit / "cls_labels.txt"))
    train = load_img_name_list(str(devkit / "train_aug.txt"))
    infer = load_img_name_list(str(devkit / "train.txt"))
    for suffix in ("", "_aug"):
        for name in train:
            h, w = read_image(str(devkit / "JPEGImages" / f"{name}.jpg")).shape[:2]
            cam = pyutils.load_npz(str(work / "result" / f"cam{suffix}" / f"{name}.npz"))
            keys = np.nonzero(labels[name])[0]
            assert np.array_equal(cam["keys"], keys)
            assert cam["cam"].shape == (len(keys), (h - 1) // 4 + 1, (w - 1) // 4 + 1)
            assert cam["high_res"].shape == (len(keys), h, w)
            assert cam["high_res"].dtype == np.float32 and cam["high_res"].min() >= 0
            assert cam["high_res"].max(initial=0) <= 1 and cam["cam"].max(initial=0) <= 1
            ir = read_label_png(str(work / "result" / f"ir_label{suffix}" / f"{name}.png"))
            assert ir.shape == (h, w)
            assert set(np.unique(ir)) <= {0, 255, *(keys + 1)}
        for name in infer:
            h, w = read_image(str(devkit / "JPEGImages" / f"{name}.jpg")).shape[:2]
            mask = read_label_png(str(work / "result" / f"sem_seg{suffix}" / f"{name}.png"))
            assert mask.shape == (h, w)
            assert set(np.unique(mask)) <= {0, *(np.nonzero(labels[name])[0] + 1)}
    for weights in ("res50_cam.pth", "res50_irn.pth", "cam_aug.pth", "irn_aug.pth"):
        assert os.path.getsize(work / "sess" / weights) > 0


def test_results_and_report(pipeline_run):
    devkit, work = pipeline_run
    results = json.loads((work / "results.json").read_text())
    for stage in ("stage1", "stage2"):
        for metric in ("cam", "sem_seg"):
            assert 0 <= results[stage][metric]["miou"] <= 1
            assert len(results[stage][metric]["iou"]) == 21
    assert "stage II: train_cam" in results["seconds"]
    # the segmentation network after each stage: val mIoU, per-class IoU, and the test submission
    for stage, suffix in (("stage1", ""), ("stage2", "_aug")):
        assert 0 <= results[stage]["seg"]["miou"] <= 1 and len(results[stage]["seg"]["iou"]) == 21
        assert os.path.getsize(work / "sess" / f"deeplab{suffix}.pth") > 0
        heldout = load_img_name_list(str(devkit / "heldout.txt"))
        sub = work / f"seg_test{suffix}" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
        assert sorted(p.stem for p in sub.iterdir()) == sorted(heldout)
        assert (work / f"seg_test{suffix}" / "results.tar").stat().st_size > 0
    assert "segmentation (val)" in (work / "run.log").read_text()
    pool = json.loads((work / "instance_pool" / "pool.json").read_text())
    assert pool["source"] == "gt" and sum(pool["counts"].values()) > 0
    assert pool["list"] == str(devkit / "train_aug.txt")  # --pool_list defaults to the training list
    # CDA's schedule: max_step (10 // 4) * 1 = 2 from the full batch, 5 steps of 2 pairs taken
    log = (work / "run.log").read_text()
    stage2 = log[log.index("=== stage II: train_cam ==="):]
    assert "5 steps, poly max_step 2 (--cda_max_step reference)" in stage2
    assert "the lr stays at its floor" in stage2
    for f in ("report.html", "cda_samples.png", "run.log", "instance_pool/preview.png"):
        assert (work / f).stat().st_size > 0
    assert "pseudo mask" in (work / "report.html").read_text()
    # no temporary file left behind anywhere
    assert not [p for p in work.rglob("*") if ".tmp" in p.name]


def test_rerun_skips_finished_images(pipeline_run, capsys):
    devkit, work = pipeline_run
    flags = tiny_flags(devkit, work) + ["--train_cam_pass", "False", "--no-train_irn_pass", "--stage2", "False",
                                        "--train_seg_pass", "False", "--eval_seg_pass", "False"]
    before = {p: p.stat().st_mtime_ns for p in (work / "result" / "cam").iterdir()}
    assert run_sample.main(flags) == 0
    assert "make_cam: 0 of" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in (work / "result" / "cam").iterdir()}


def test_stage_one_masks_the_pool_list_in_the_same_pass(tiny_devkit, tmp_path):
    stage1, stage2 = stages.STAGES
    args = config.resolve(devkit_flags(tiny_devkit, tmp_path) + ["--pool_source", "sem_seg"])
    assert args.pool_list == args.train_list
    assert stages.stage_args(args, stage1).sem_seg_lists == [args.infer_list, args.train_list]
    assert stages.stage_args(args, stage2).sem_seg_lists == [args.infer_list]
    for off in (["--stage2", "False"], ["--pool_source", "gt"], ["--no-make_instance_pool_pass"]):
        args = config.resolve(devkit_flags(tiny_devkit, tmp_path) + ["--pool_source", "sem_seg"] + off)
        assert stages.stage_args(args, stage1).sem_seg_lists == [args.infer_list]
    # the union, each image once, in order of first appearance
    train, infer = (load_img_name_list(str(tiny_devkit / f)) for f in ("train_aug.txt", "train.txt"))
    assert load_img_name_list([str(tiny_devkit / "train.txt"), str(tiny_devkit / "train_aug.txt")]) == \
        infer + [n for n in train if n not in infer]
