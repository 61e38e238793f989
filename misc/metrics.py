"""Confusion matrix and IoU, as in the reference evaluation (chainercv's confusion, 21 classes)."""
import numpy as np

from misc import pyutils


class ConfusionMatrix:
    """Accumulates an n x n matrix over the segmentation labels (`class_names`, background first): rows ground
    truth, columns prediction; gt 255 is ignored."""

    def __init__(self, class_names):
        self.names = list(class_names)
        self.n = len(self.names)
        self.mat = np.zeros((self.n, self.n), dtype=np.int64)

    def update(self, gt, pred, name=""):
        if gt.shape != pred.shape:
            raise pyutils.UserError(f"prediction for {name} is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                                    f"is {gt.shape[1]}x{gt.shape[0]}; rerun the step that wrote the prediction")
        gt = gt.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = gt != 255
        gt, pred = gt[keep], pred[keep]
        if gt.size and (gt.max() >= self.n or pred.max() >= self.n or pred.min() < 0):
            raise pyutils.UserError(f"labels of {name} outside 0..{self.n - 1} (and 255); check the mask file")
        self.mat += np.bincount(gt * self.n + pred, minlength=self.n * self.n).reshape(self.n, self.n)

    def iou(self):
        tp = np.diag(self.mat).astype(np.float64)
        denom = self.mat.sum(0) + self.mat.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            return tp / denom  # NaN for classes absent from both gt and prediction

    def miou(self):
        return float(np.nanmean(self.iou()))

    def as_dict(self):
        iou = self.iou()
        return {"miou": self.miou(),
                "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(self.names, iou)}}


def format_iou_table(result, title):
    """Per-class IoU lines and the mIoU, for the log."""
    lines = [title]
    for name, v in result["iou"].items():
        lines.append(f"  {name:<12} {'   -' if v is None else f'{100 * v:5.1f}'}")
    lines.append(f"  {'mIoU':<12} {100 * result['miou']:5.1f}")
    return "\n".join(lines)


def record(results_path, stage, metric, result):
    """results.json: {stage: {metric: {"miou":..., "iou": {...}}}}, other entries kept."""
    data = pyutils.load_json(results_path, default={})
    data.setdefault(stage, {})[metric] = result
    pyutils.save_json(results_path, data)
