"""Step 3: mIoU of the CAMs on the evaluation split, background = a constant threshold."""
import numpy as np
from tqdm import tqdm

from misc import dist, metrics, pyutils
from misc.cams import load_cam
from misc.imutils import bg_argmax
from voc12.dataloader import eval_ids, gt_mask


def add_arguments(g):
    g.add_argument("--cam_eval_thres", default=0.15, type=float, help="background score of eval_cam")
    g.add_argument("--cam_eval_curve", type=pyutils.str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="eval_cam also sweeps the threshold over 0.00..0.59 (SEAM's --curve) and reports the best")


def check_arguments(args):
    pyutils.require_range(args, ("cam_eval_thres",), unit=True)


def cam_to_label(cam, keys, threshold):
    """argmax over [threshold, cams], mapped to VOC labels (key + 1, background 0)."""
    return np.concatenate([[0], keys + 1])[bg_argmax(cam, threshold)]


CURVE = np.arange(60) / 100  # SEAM's evaluation.py --curve: thresholds 0.00 .. 0.59


def curve_confusions(cam, keys, gt, thresholds, n):
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
    conf = metrics.ConfusionMatrix(args.data.class_names)
    curve = np.zeros((len(CURVE), conf.n, conf.n), np.int64)
    sweep = args.cam_eval_curve
    for name in tqdm(eval_ids(args.data, args.chainer_eval_set, args.eval_list), desc="eval_cam",
                     dynamic_ncols=True):
        gt = gt_mask(args.data, name)
        d = load_cam(args.cam_out_dir, name, gt.shape, strided=False, num_classes=args.data.num_classes)
        conf.update(gt, cam_to_label(d["high_res"], d["keys"], args.cam_eval_thres), name)
        if sweep:
            curve += curve_confusions(d["high_res"], d["keys"], gt, CURVE, conf.n)
    result = conf.as_dict()
    result["threshold"] = args.cam_eval_thres
    if sweep:
        mious = []
        for mat in curve:
            c = metrics.ConfusionMatrix(args.data.class_names)
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
