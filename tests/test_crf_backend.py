"""--crf_backend: the CRF steps give the same outputs with the torch CRF (batched, in-process) as with pydensecrf
(one image per process), on the tiny devkit with CAMs made from its ground truth."""
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from misc import cams, config, pyutils, stages
from misc.imutils import read_label_png
from step import cam_to_crf, cam_to_ir_label
from voc12.dataloader import crf_path, load_cls_labels, load_img_name_list


@pytest.fixture(scope="module")
def gt_cams(tiny_devkit, tmp_path_factory):
    """CAM files of the training list: each present class's ground-truth mask, blurred and scaled to max 1."""
    out = tmp_path_factory.mktemp("cams")
    labels = load_cls_labels(str(tiny_devkit / "cls_labels.txt"))
    for name in load_img_name_list(str(tiny_devkit / "train_aug.txt")):
        gt = read_label_png(str(tiny_devkit / "SegmentationClass" / f"{name}.png"))
        keys = np.flatnonzero(labels[name])
        high = np.stack([ndimage.gaussian_filter((gt == k + 1).astype(np.float32), 4) for k in keys]) \
            if keys.size else np.zeros((0,) + gt.shape, np.float32)
        high = high / (high.reshape(len(keys), -1).max(axis=1)[:, None, None] + 1e-5) if keys.size else high
        high = torch.from_numpy(high.astype(np.float32))
        cams.save_cams(str(out), name, keys, high, high[:, ::4, ::4])  # cam_to_ir_label reads a stride-4 map too
    return out


def run_crf_steps(devkit, cam_dir, work, backend):
    d = str(devkit)
    argv = ["--voc12_root", d, "--train_list", f"{d}/train_aug.txt", "--val_list", f"{d}/val.txt",
            "--infer_list", f"{d}/train.txt", "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(work),
            "--cam_out_dir", str(cam_dir), "--num_workers", "0", "--crf_backend", backend, "--crf_batch", "3",
            "--device", "cpu"]
    args = stages.stage_args(config.resolve(argv), stages.STAGES[0])
    cam_to_ir_label.run(args)
    cam_to_crf.run(args)
    return args


def test_crf_steps_agree_across_backends(tiny_devkit, gt_cams, tmp_path):
    torch.set_num_threads(1)
    ref = run_crf_steps(tiny_devkit, gt_cams, tmp_path / "pydensecrf", "pydensecrf")
    new = run_crf_steps(tiny_devkit, gt_cams, tmp_path / "torch", "torch")
    names = load_img_name_list(str(tiny_devkit / "train_aug.txt"))
    for name in names:
        a = read_label_png(os.path.join(ref.ir_label_out_dir, f"{name}.png"))
        b = read_label_png(os.path.join(new.ir_label_out_dir, f"{name}.png"))
        assert (a == b).mean() >= 0.999, name
        for folder in ("la_crf_dir", "ha_crf_dir"):
            x = pyutils.load_npz(crf_path(getattr(ref, folder), name), keys=("keys", "crf"))
            y = pyutils.load_npz(crf_path(getattr(new, folder), name), keys=("keys", "crf"))
            assert np.array_equal(x["keys"], y["keys"])
            assert np.abs(x["crf"] - y["crf"]).max() < 1e-4, (name, folder)
    # the IR labels are not all one value: the CRF had something to do
    assert len(np.unique(read_label_png(os.path.join(ref.ir_label_out_dir, f"{names[0]}.png")))) > 1
