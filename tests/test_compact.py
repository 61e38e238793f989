"""--compact_maps: CAMs and la/ha CRF scores stored as float16. Off by default, where the files are the float32
ones of before, byte for byte; on, they take about half the bytes and read back as float32 equal to the float32
maps rounded to float16."""
import os

import numpy as np
import pytest
import torch

from misc import cams, config, imutils, pyutils, stages
from net import resnet50_cam
from step import cam_to_crf, make_cam
from voc12 import dataloader as dl


def _args(devkit, work, method, *flags):
    """A stage I namespace as the driver resolves it, on the tiny devkit's train list (5 images)."""
    d = str(devkit)
    argv = ["--method", method, "--voc12_root", d, "--train_list", f"{d}/train.txt", "--val_list", f"{d}/val.txt",
            "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(work), "--device", "cpu", "--num_workers", "0",
            "--cam_out_dir", str(work / "cam"), "--la_crf_dir", str(work / "la"), "--ha_crf_dir", str(work / "ha"),
            *flags]
    return stages.stage_args(config.resolve(argv), stages.STAGES[0])


def _rounded(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def test_flag_is_off_by_default():
    assert config.parse(["--data_root", "x"]).compact_maps is False
    assert config.parse(["--data_root", "x", "--compact_maps"]).compact_maps is True
    assert config.parse(["--data_root", "x", "--compact_maps", "False"]).compact_maps is False


def test_save_cams_default_is_the_float32_file_and_compact_halves_it(tmp_path):
    rng = np.random.default_rng(0)
    keys = np.array([2, 7, 14])
    high = torch.from_numpy(rng.random((3, 75, 100), dtype=np.float32))
    cam = torch.from_numpy(rng.random((3, 19, 25), dtype=np.float32))
    # the writer of before, by hand
    pyutils.save_npz(str(tmp_path / "ref" / "a.npz"), keys=keys.astype(np.int64), high_res=high.numpy(),
                     cam=cam.numpy())
    cams.save_cams(str(tmp_path / "full"), "a", keys, high, cam)
    cams.save_cams(str(tmp_path / "half"), "a", keys, high, cam, compact=True)
    ref, full, half = ((tmp_path / d / "a.npz") for d in ("ref", "full", "half"))
    assert full.read_bytes() == ref.read_bytes()
    raw = pyutils.load_npz(str(half))
    assert raw["high_res"].dtype == raw["cam"].dtype == np.float16 and raw["keys"].dtype == np.int64
    assert 0.45 < half.stat().st_size / full.stat().st_size < 0.55

    a = cams.load_cam(str(tmp_path / "full"), "a", (75, 100), keys, num_classes=20)
    b = cams.load_cam(str(tmp_path / "half"), "a", (75, 100), keys, num_classes=20)
    for m in ("high_res", "cam"):
        assert a[m].dtype == b[m].dtype == np.float32
        np.testing.assert_array_equal(a[m], (high if m == "high_res" else cam).numpy())
        np.testing.assert_array_equal(b[m], _rounded(a[m]))
    _, scores = cams.load_cam_scores(str(tmp_path / "half"), "a", (75, 100), keys, num_classes=20)
    assert scores.dtype == np.float32 and np.array_equal(scores, b["high_res"])


def test_make_cam_writes_float16_only_with_the_flag(tiny_devkit, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "cam.pth"
    torch.save(resnet50_cam.CAM(20).state_dict(), weights)
    flags = ("--cam_weights_name", str(weights), "--cam_scales", "1.0")
    full = _args(tiny_devkit, tmp_path / "full", "irn", *flags)
    half = _args(tiny_devkit, tmp_path / "half", "irn", *flags, "--compact_maps")
    make_cam.run(full)
    make_cam.run(half)
    for name in dl.load_img_name_list(full.train_list):
        a = pyutils.load_npz(cams.cam_path(full.cam_out_dir, name))
        b = pyutils.load_npz(cams.cam_path(half.cam_out_dir, name))
        np.testing.assert_array_equal(a["keys"], b["keys"])
        for m in ("high_res", "cam"):
            assert a[m].dtype == np.float32 and b[m].dtype == np.float16
            np.testing.assert_array_equal(b[m].astype(np.float32), _rounded(a[m]))
        assert cams.load_cam(half.cam_out_dir, name)["high_res"].dtype == np.float32


@pytest.mark.parametrize("compact_cams", [False, True])
def test_cam_to_crf_writes_float16_only_with_the_flag(tiny_devkit, tmp_path, compact_cams):
    full = _args(tiny_devkit, tmp_path / "full", "psa")
    half = _args(tiny_devkit, tmp_path / "half", "psa", "--compact_maps")
    names = dl.load_img_name_list(full.train_list)
    labels = dl.load_cls_labels(full.cls_labels)
    rng = np.random.default_rng(1)
    for n in names:  # the same CAMs for both (float16 ones too: the CRF then reads them upcast)
        h, w = imutils.image_size(dl.get_img_path(n, full.data))
        keys = np.flatnonzero(labels[n])
        high = torch.from_numpy(rng.random((len(keys), h, w), dtype=np.float32))
        for a in (full, half):
            cams.save_cams(a.cam_out_dir, n, keys, high, compact=compact_cams)
    cam_to_crf.run(full)
    cam_to_crf.run(half)
    for n in names:
        for folder in ("la_crf_dir", "ha_crf_dir"):
            path_a, path_b = dl.crf_path(getattr(full, folder), n), dl.crf_path(getattr(half, folder), n)
            raw_a, raw_b = pyutils.load_npz(path_a), pyutils.load_npz(path_b)
            assert raw_a["crf"].dtype == np.float32 and raw_b["crf"].dtype == np.float16
            assert 0.45 < os.path.getsize(path_b) / os.path.getsize(path_a) < 0.6
            ka, a = dl.load_crf(getattr(full, folder), n)
            kb, b = dl.load_crf(getattr(half, folder), n)
            assert b.dtype == np.float32 and np.array_equal(ka, kb)
            np.testing.assert_array_equal(a, raw_a["crf"])
            np.testing.assert_array_equal(b, _rounded(a))
