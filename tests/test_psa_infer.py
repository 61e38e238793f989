"""PSA's two inference steps against the reference (SPEC_RESNET38 6.2, checks 8 and 14, end to end).

tests/fixtures/psa_infer_ref.npz holds what jiwoon-ahn/psa computes, on CPU, with the weights
fill_random_(net, 0) of tests/test_resnet38.py (the 105 M parameters are regenerated, not stored) and on
the inputs below (regenerated from seeds; their hashes are stored to catch a drift):
- check 8: infer_cls.py:52-80 (VOC12ClsDatasetMSF, scales 1, 0.5, 1.5, 2, forward_cam per scale and flip,
  upsampling to the image size, label mask, flip back, sum, / (max + 1e-5)) against step.infer_cls.psa_cams
  fed by our VOC12ClassificationDatasetMSF;
- check 14: infer_aff.py:85-120 (padding, CAM dict -> 21 channels, dense AffinityNet matrix ** beta,
  column normalisation, logt squarings, 8x8 pooling, walk, upsampling, argmax, crop) against
  step.infer_aff.walk_labels. The walked scores (21, h, w) are compared too.
tests/fixtures/README_resnet38.md says how the fixture was made.

The input builders import nothing of the project: the fixture harness imports them beside PSA's
own `voc12` package.
"""
import hashlib
import os

import numpy as np
import pytest
import torch

from voc12 import CAT_LIST

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "psa_infer_ref.npz")

SCALES = (1.0, 0.5, 1.5, 2.0)
# 37x29 puts Python's round on ties (x0.5, x1.5); on these weights class 14 of image 2 has a zero CAM
# at every scale (0 / (0 + 1e-5)) and class 5 a weak one
CAM_IMAGES = (("2000_000001", (40, 56), (3, 7)), ("2000_000002", (37, 29), (5, 14)),
              ("2000_000003", (32, 32), (0, 11, 19)))
WALK_IMAGES = (("2000_000004", (80, 96), (4, 12)), ("2000_000005", (75, 130), (1, 8, 14)))
RADIUS, ALPHA, BETA, LOGT = 5, 16, 8, 8
CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def make_image(size, seed):
    """uint8 (H, W, 3): a random background colour, three rectangles of random colours and integer noise.
    Integer draws only, so the bytes are the same on every platform."""
    rng = np.random.default_rng(seed)
    h, w = size
    img = np.empty((h, w, 3), np.int64)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(3):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        y1, x1 = y0 + rng.integers(8, h - y0 + 1), x0 + rng.integers(8, w - x0 + 1)
        img[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    img += rng.integers(-24, 25, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cams(size, n, seed):
    """float32 (n, H, W) in [0, 1], each map a sum of three Gaussian blobs divided by its maximum (as
    infer_cls writes them: every present class reaches 1 somewhere)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((n, h, w), np.float64)
    for k in range(n):
        for _ in range(3):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sigma, amp = rng.uniform(6, 20), rng.uniform(0.3, 1.0)
            out[k] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        out[k] /= out[k].max()
    return out.astype(np.float32)


def all_images():
    """[(id, uint8 image, 0-based classes)] of both checks, seeds 100 + index."""
    return [(name, make_image(size, 100 + i), keys) for i, (name, size, keys) in enumerate(CAM_IMAGES + WALK_IMAGES)]


def walk_cams():
    """{id: float32 (K, H, W)} CAMs of the walk images (seed 200 + index), one map per class in keys."""
    return {name: make_cams(size, len(keys), 200 + i) for i, (name, size, keys) in enumerate(WALK_IMAGES)}


def image_hash(images):
    h = hashlib.sha1()
    for _, img, _ in images:
        h.update(img.tobytes())
    return h.hexdigest()


def write_devkit(root, images):
    """A devkit both sides read: JPEGImages/<id>.jpg holding PNG bytes (lossless; PIL and our reader
    open by content), lists in PSA's format (/JPEGImages/<id>.jpg ..., keys psa_cam, psa_walk) and in
    ours (one id a line, keys cam, walk), and our cls_labels.txt."""
    from PIL import Image
    os.makedirs(os.path.join(root, "JPEGImages"), exist_ok=True)
    for name, img, _ in images:
        Image.fromarray(img).save(os.path.join(root, "JPEGImages", name + ".jpg"), format="PNG")
    lists = {}
    for tag, group in (("cam", CAM_IMAGES), ("walk", WALK_IMAGES)):
        lists[tag], lists["psa_" + tag] = os.path.join(root, tag + ".txt"), os.path.join(root, "psa_" + tag + ".txt")
        with open(lists[tag], "w") as f:
            f.writelines(name + "\n" for name, _, _ in group)
        with open(lists["psa_" + tag], "w") as f:
            f.writelines(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n" for name, _, _ in group)
    with open(os.path.join(root, "cls_labels.txt"), "w") as f:
        f.writelines(name + "".join(" " + CLASS_NAMES[k] for k in keys) + "\n" for name, _, keys in images)
    return lists, os.path.join(root, "cls_labels.txt")


# ------------------------------------------------------------------ the tests


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE).items())


@pytest.fixture(scope="module")
def devkit(ref, tmp_path_factory):
    images = all_images()
    assert image_hash(images) == str(ref["image_sha1"]), "the regenerated images are not the fixture's"
    cams = walk_cams()
    np.testing.assert_allclose([cams[n].sum(dtype=np.float64) for n, _, _ in WALK_IMAGES], ref["walk_cam_sums"],
                               rtol=1e-9)
    root = str(tmp_path_factory.mktemp("psa_infer_voc"))
    lists, labels = write_devkit(root, images)
    return dict(root=root, lists=lists, labels=labels, cams=cams)


def rel_diff(ours, theirs):
    """max |ours - theirs| / max |theirs| and max |ours - theirs|."""
    d = float(np.abs(np.asarray(ours, np.float64) - theirs).max())
    return d / max(float(np.abs(theirs).max()), 1e-30), d


def test_psa_cams_equal_reference(ref, devkit):
    """Check 8: norm_cam of the present classes, allclose rtol 1e-5 (atol 1e-5 x the map maximum, 1)."""
    from step.infer_cls import psa_cams
    from test_resnet38 import VOC_CLS, random_net
    from voc12.dataloader import VOC12ClassificationDatasetMSF

    model = random_net(VOC_CLS, ref["cls_weight_sums"], backbone_weights="none", width=1.0)
    dataset = VOC12ClassificationDatasetMSF(devkit["lists"]["cam"], devkit["root"], devkit["labels"], scales=SCALES)
    worst = 0.0
    with torch.no_grad():
        for i, (name, size, keys) in enumerate(CAM_IMAGES):
            pack = dataset[i]
            assert pack["name"] == name and tuple(pack["size"]) == size
            ours_keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0]
            np.testing.assert_array_equal(ours_keys.numpy(), ref[f"cam_keys_{i}"])
            ours = psa_cams(model, [torch.as_tensor(x) for x in pack["img"]], size, ours_keys, "cpu").numpy()
            theirs = ref[f"cam_{i}"]
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * float(np.abs(theirs).max()),
                                       err_msg=name)
            worst = max(worst, rel_diff(ours, theirs)[0])
    print(f"check 8: max |ours - psa| / max |psa| = {worst:.2e}")


def test_walk_labels_equal_reference(ref, devkit, monkeypatch):
    """Check 14: labels equal on >= 99.9 % of the pixels; walked scores (before upsampling) rtol 1e-4
    of their maximum. PSA walks in float32 with a dense T, ours in float64 with a sparse one: the scores
    differ by ~1e-6 of their maximum, so pixels whose two best classes are closer than that may differ
    (2 pixels of image 4, classes 4 and 12 within 3e-8 of each other)."""
    from misc import indexing
    from net import resnet38_aff
    from step import infer_aff
    from test_resnet38 import random_net
    from voc12.dataloader import VOC12ClassificationDatasetMSF

    walked = []
    real_walk = indexing.random_walk

    def keep(*a, **k):
        out = real_walk(*a, **k)
        walked.append(out)
        return out

    monkeypatch.setattr(indexing, "random_walk", keep)
    model = random_net(resnet38_aff.Net, ref["aff_weight_sums"], backbone_weights="none", radius=RADIUS, width=1.0)
    dataset = VOC12ClassificationDatasetMSF(devkit["lists"]["walk"], devkit["root"], devkit["labels"],
                                            scales=(1.0,))
    with torch.no_grad():
        for i, (name, size, keys) in enumerate(WALK_IMAGES):
            pack = dataset[i]
            assert pack["name"] == name
            img = torch.as_tensor(pack["img"][0][0])
            labels = infer_aff.walk_labels(model, img, devkit["cams"][name], np.asarray(keys, np.int64), RADIUS,
                                           ALPHA, BETA, LOGT, len(CAT_LIST))
            theirs = ref[f"walk_labels_{i}"]
            assert labels.shape == theirs.shape == size
            share = float((labels == theirs).mean())
            rel, _ = rel_diff(walked[-1].numpy(), ref[f"walk_scores_{i}"])
            print(f"check 14 {name}: labels equal on {100 * share:.3f} % px, scores max rel diff {rel:.2e}")
            assert share >= 0.999, (name, share)
            assert rel <= 1e-4, (name, rel)
