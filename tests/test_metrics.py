"""The confusion matrix and IoU of the eval steps, against counts done by hand."""
import numpy as np
import pytest

from misc import metrics, pyutils
from voc12 import CLASS_NAMES
from misc.imutils import bg_argmax
from step.eval_cam import cam_to_label


def test_confusion_matrix_hand_count_with_ignored_pixels():
    gt = np.array([[0, 0, 1, 1],
                   [0, 255, 1, 1],
                   [2, 2, 255, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 1, 0],
                     [2, 0, 1, 0]], np.uint8)
    conf = metrics.ConfusionMatrix(CLASS_NAMES)
    conf.update(gt, pred)
    m = conf.mat
    assert m.sum() == 10  # the two 255 pixels are not counted, whatever was predicted there
    assert (m[0, 0], m[0, 1], m[1, 1], m[1, 0], m[2, 2], m[2, 0]) == (3, 1, 3, 1, 1, 1)
    iou = conf.iou()
    # background: TP 3, FP 2 (gt 1 and 2 predicted 0), FN 1 (predicted 1) -> 3 / 6
    assert iou[0] == pytest.approx(3 / 6)
    assert iou[1] == pytest.approx(3 / 5)  # TP 3, FP 1, FN 1
    assert iou[2] == pytest.approx(1 / 2)  # TP 1, FP 0, FN 1
    assert np.isnan(iou[3:]).all()  # absent from gt and prediction: left out of the mean
    assert conf.miou() == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    d = conf.as_dict()
    assert d["iou"]["bird"] is None and len(d["iou"]) == 21


def test_confusion_matrix_rejects_mismatched_shapes():
    with pytest.raises(pyutils.UserError, match="ground truth"):
        metrics.ConfusionMatrix(CLASS_NAMES).update(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8), "x")


def test_background_threshold_argmax():
    cams = np.array([[[0.1, 0.5], [0.9, 0.0]],
                     [[0.2, 0.4], [0.95, 0.0]]], np.float32)
    assert bg_argmax(cams, 0.15).tolist() == [[2, 1], [2, 0]]
    # keys 4 and 11 (0-based) become VOC labels 5 and 12, background 0
    assert cam_to_label(cams, np.array([4, 11]), 0.15).tolist() == [[12, 5], [12, 0]]


def test_cam_threshold_sweep_equals_one_evaluation_per_threshold():
    """eval_cam's one-pass sweep (SEAM's --curve) against cam_to_label + ConfusionMatrix at each threshold,
    with negative scores (SEAM's normalisation), ties with a threshold, and ignored pixels."""
    import numpy as np
    from misc.metrics import ConfusionMatrix
    from step.eval_cam import CURVE, cam_to_label, curve_confusions
    rng = np.random.default_rng(0)
    for keys in (np.array([3, 11]), np.array([0]), np.array([], np.int64)):
        cam = rng.uniform(-0.3, 0.8, (len(keys), 30, 40)).astype(np.float32)
        if len(keys):
            cam[0, :2] = np.float32(0.25)  # exactly a threshold: the background wins the tie
        gt = rng.choice([0, 4, 12, 1, 255], size=(30, 40)).astype(np.uint8)
        got = curve_confusions(cam, keys, gt, CURVE, len(CLASS_NAMES))
        for i, t in enumerate(CURVE):
            c = ConfusionMatrix(CLASS_NAMES)
            c.update(gt, cam_to_label(cam, keys, t))
            assert np.array_equal(got[i], c.mat), (keys, t)
