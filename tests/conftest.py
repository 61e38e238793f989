"""Shared fixtures. `tiny_devkit` is a toy VOC devkit written once per test session."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from voc12.synth import write_devkit  # noqa: E402

TINY_CLASSES = ("aeroplane", "boat", "car", "cat")


def write_tiny_devkit(root, seed=0, **kw):
    """12 images of 64x48 (10 train_aug, 5 of them train, 2 val) + 2 held-out, 4 classes."""
    kw = {"num_images": 12, "size": (64, 48), "classes": TINY_CLASSES, "num_heldout": 2, **kw}
    write_devkit(str(root), seed=seed, progress=False, **kw)
    return root


@pytest.fixture(scope="session")
def tiny_devkit(tmp_path_factory):
    """pathlib.Path of a devkit root with JPEGImages/, Annotations/, SegmentationClass/,
    train_aug.txt, train.txt, val.txt, heldout.txt and cls_labels.txt. Treat it as read-only."""
    return write_tiny_devkit(tmp_path_factory.mktemp("tiny_voc"))


def devkit_flags(devkit, work_dir):
    """run_sample.py flags that point every list at a toy devkit and every output under work_dir."""
    d = str(devkit)
    return ["--voc12_root", d, "--train_list", f"{d}/train_aug.txt", "--val_list", f"{d}/val.txt",
            "--infer_list", f"{d}/train.txt", "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(work_dir),
            "--seg_train_list", f"{d}/train_aug.txt", "--seg_val_list", f"{d}/val.txt",
            "--seg_test_list", f"{d}/heldout.txt"] + SEG_OFF


# the segmentation steps are off unless a test turns them on (later flags win)
SEG_OFF = [f"--{p}{s}_pass=False" for p in ("", "cda_") for s in ("train_seg", "eval_seg")]
SEG_ON = [f"--{p}{s}_pass=True" for p in ("", "cda_") for s in ("train_seg", "eval_seg")]
# a tiny DeepLab-v2 (ResNet-50 from scratch) for a few iterations
SEG_TINY = ["--seg_backbone_weights", "none", "--seg_backbone_depth", "50", "--seg_crop_size", "32",
            "--seg_batch_size", "2", "--seg_num_iters", "4", "--seg_checkpoint_every", "2", "--seg_infer_scales", "1.0"]
