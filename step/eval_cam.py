"""Step 3: mIoU of the CAMs on the evaluation split, background = a constant threshold."""
import os

import numpy as np
from tqdm import tqdm

from misc import dist, metrics, pyutils
from misc.imutils import bg_argmax, image_size, read_label_png
from step.make_cam import load_cam
from voc12.dataloader import load_img_name_list


def eval_ids(args):
    """Ids of the evaluation split, read from the devkit as the reference did (chainer_eval_set)."""
    if getattr(args, "eval_list", None):
        return load_img_name_list(args.eval_list)
    return load_img_name_list(os.path.join(args.voc12_root, "ImageSets", "Segmentation",
                                           args.chainer_eval_set + ".txt"))


def gt_mask(args, name):
    """The ground truth of `name`, checked against its image's size and VOC's labels (0..20, 255): a bad
    mask is named as such instead of passing for a wrong prediction."""
    path = os.path.join(args.voc12_root, "SegmentationClass", name + ".png")
    pyutils.require_file(path, "ground-truth mask", "the devkit needs SegmentationClass/ for evaluation")
    size = image_size(os.path.join(args.voc12_root, "JPEGImages", name + ".jpg"))
    return read_label_png(path, size=size, num_classes=metrics.N_CLASSES)


def cam_to_label(cam, keys, threshold):
    """argmax over [threshold, cams], mapped to VOC labels (key + 1, background 0)."""
    return np.concatenate([[0], keys + 1])[bg_argmax(cam, threshold)]


CURVE = np.arange(60) / 100  # SEAM's evaluation.py --curve: thresholds 0.00 .. 0.59


def curve_confusions(cam, keys, gt, thresholds, n=metrics.N_CLASSES):
    """Confusion matrices (T, n, n) of cam_to_label(cam, keys, t) against gt for every threshold t, in one
    pass: a pixel is its best class where that class's score beats t (a tie goes to the background, as
    the argmax over [t, cams] takes the first), else background. Ground truth 255 is ignored."""
    thresholds = np.asarray(thresholds, np.float32)
    out = np.zeros((len(thresholds), n, n), np.int64)
    keep = gt.ravel() != 255
    g = gt.ravel()[keep].astype(np.int64)
    if keys.size == 0:
        out[:, :, 0] = np.bincount(g, minlength=n)
        return out
    flat = cam.reshape(len(keys), -1)[:, keep]
    best = np.asarray(keys, np.int64)[np.argmax(flat, axis=0)] + 1
    # thresholds strictly below the best score: those where the pixel is foreground
    n_fg = np.searchsorted(thresholds, flat.max(axis=0).astype(np.float32), side="left")
    T = len(thresholds)
    counts = np.bincount((g * n + best) * (T + 1) + n_fg, minlength=n * n * (T + 1)).reshape(n, n, T + 1)
    fg = np.cumsum(counts[:, :, ::-1], axis=2)[:, :, ::-1]  # fg[..., k]: pixels with n_fg >= k
    bg = np.cumsum(counts, axis=2).sum(axis=1)  # bg[g, k]: pixels of class g with n_fg <= k
    out += np.moveaxis(fg[:, :, 1:], 2, 0)
    out[:, :, 0] += bg[:, :T].T
    return out


@dist.main_only  # one writer of results.json; the other processes wait here
def run(args):
    conf = metrics.ConfusionMatrix()
    curve = np.zeros((len(CURVE), metrics.N_CLASSES, metrics.N_CLASSES), np.int64)
    sweep = getattr(args, "cam_eval_curve", False)
    for name in tqdm(eval_ids(args), desc="eval_cam", dynamic_ncols=True):
        gt = gt_mask(args, name)
        d = load_cam(args.cam_out_dir, name, gt.shape, strided=False)
        conf.update(gt, cam_to_label(d["high_res"], d["keys"], args.cam_eval_thres), name)
        if sweep:
            curve += curve_confusions(d["high_res"], d["keys"], gt, CURVE)
    result = conf.as_dict()
    result["threshold"] = args.cam_eval_thres
    if sweep:
        mious = []
        for mat in curve:
            c = metrics.ConfusionMatrix()
            c.mat = mat
            mious.append(c.miou())
        best = int(np.argmax(mious))
        result["curve"] = {"thresholds": [round(float(t), 2) for t in CURVE], "miou": mious,
                           "best_threshold": round(float(CURVE[best]), 2), "best_miou": mious[best]}
        pyutils.log(f"CAM threshold sweep 0.00..0.59 ({args.stage}): best {CURVE[best]:.2f} with mIoU "
                    f"{100 * mious[best]:.1f}; at {args.cam_eval_thres}: {100 * result['miou']:.1f}")
    pyutils.log(metrics.format_iou_table(result, f"CAM IoU ({args.stage}, {args.cam_out_dir}, "
                                                 f"threshold {args.cam_eval_thres})"))
    metrics.record(args.results_path, args.stage, "cam", result)
    return result
