"""Step (PSA, SEAM): la/ha CRF score maps from the CAMs, the inputs of AffinityNet's labels.

For each image of the training list and each of two alphas, the CAMs of its classes get a background
score (1 - max over the classes) ** alpha and go through PSA's dense CRF (misc.imutils.crf_inference);
the marginals are kept whole, not as an argmax, because train_aff averages them over 8x8 cells after its
random crop (PSA's infer_cls.py:90-110, SEAM's infer_SEAM.py:92-112). A low alpha gives a strong
background (la: confident foreground), a high alpha a weak one (ha: confident background).

Writes <la_crf_dir>/<id>.npz and <ha_crf_dir>/<id>.npz: `keys` int64 [0, classes + 1] (VOC labels of
the channels), `crf` float32 (1 + K, H, W; float16 with --compact_maps, which voc12.dataloader.load_crf reads
back as float32), `alpha` float64. Reads the CAM files of make_cam / infer_cls
(`keys`, `high_res` at image size; a stride-4 `cam` is not needed).

args read: train_list, voc12_root, cls_labels, cam_out_dir, la_crf_dir, ha_crf_dir, low_alpha, high_alpha
(PSA 4 / 32, SEAM 4 / 24), num_workers, force. An output is redone when it is missing, older than its CAM
file, made with another alpha, or with --force. Under torchrun each process takes every world_size-th image.
"""
import functools
import os

import numpy as np

from misc import dist, imutils, perimage, pyutils
from misc.cams import cam_path, load_cam_scores
from voc12.dataloader import crf_path, get_img_path, load_cls_labels, load_img_name_list


def crf_scores_batch(imgs, high_res_list, alphas, backend="pydensecrf", device=None):
    """CRF marginals (1 + K, H, W) float32 of [(1 - max_c cam) ** alpha; cams] (PSA's _crf_with_alpha) for each
    (image, CAMs, alpha); the CRFs in one batch with the torch backend.

    imgs: uint8 (H, W, 3); high_res: float32 (K, H, W), the CAMs of the image's classes in ascending order.
    The scores are not normalised to a distribution, as in the reference. Without classes the only label
    is the background and its marginal is 1 (the reference has no such image; its max would fail)."""
    out, todo = [], []
    for img, high_res, alpha in zip(imgs, high_res_list, alphas):
        high_res = np.asarray(high_res, dtype=np.float32)
        if high_res.shape[0] == 0:
            out.append(np.ones((1,) + high_res.shape[1:], np.float32))
            continue
        bg = np.power(1 - np.max(high_res, axis=0, keepdims=True), alpha)
        todo.append((len(out), img, np.concatenate((bg, high_res), axis=0)))
        out.append(None)
    done = imutils.crf_inference_batch([img for _, img, _ in todo], [s for _, _, s in todo], backend=backend,
                                       device=device)
    for (i, _, _), q in zip(todo, done):
        out[i] = q
    return out


def crf_scores(img, high_res, alpha, backend="pydensecrf", device=None):
    return crf_scores_batch([img], [high_res], [alpha], backend, device)[0]


def save_crf(path, keys, crf, alpha, compact=False):
    """Write one la/ha score file; compact: the scores as float16 (--compact_maps), else float32."""
    pyutils.save_npz(path, keys=keys, crf=crf.astype(np.float16 if compact else np.float32),
                     alpha=np.float64(alpha))


def _is_done(path, cam_file, alpha):
    if not pyutils.is_fresh(path, cam_file):
        return False
    try:
        with np.load(path, allow_pickle=False) as d:
            return "alpha" in d.files and float(d["alpha"]) == float(alpha)
    except Exception:  # unreadable: redo it
        return False


def _chunk(jobs, args):
    """The la/ha maps of a few images (one with pydensecrf, --crf_batch with the torch CRF); returns how many."""
    imgs, highs, labels = [], [], []
    for name, keys, _ in jobs:  # keys: the image's classes from the label file, which its CAM file must hold
        imgs.append(imutils.read_image(get_img_path(name, args.data)))
        k, high = load_cam_scores(args.cam_out_dir, name, imgs[-1].shape[:2], keys, num_classes=args.data.num_classes)
        highs.append(high)
        labels.append(np.concatenate([[0], k + 1]).astype(np.int64))
    # per image, the (folder, alpha) pairs still to write
    work = [(i, out_dir, alpha) for i, (_, _, outs) in enumerate(jobs) for out_dir, alpha in outs]
    scores = crf_scores_batch([imgs[i] for i, _, _ in work], [highs[i] for i, _, _ in work], [a for _, _, a in work],
                              args.crf_backend, args.device)
    for (i, out_dir, alpha), crf in zip(work, scores):
        save_crf(crf_path(out_dir, jobs[i][0]), labels[i], crf, alpha, getattr(args, "compact_maps", False))
    return len(jobs)


def add_arguments(g):
    g.add_argument("--low_alpha", default=4, type=float, help="la CRF: background (1 - max cam) ** low_alpha")
    g.add_argument("--high_alpha", default=32, type=float, help="ha CRF: background (1 - max cam) ** high_alpha")


def check_arguments(args):
    pyutils.require_range(args, ("low_alpha", "high_alpha"), positive=True)


def run(args):
    names = load_img_name_list(args.train_list)
    targets = ((args.la_crf_dir, args.low_alpha), (args.ha_crf_dir, args.high_alpha))
    for out_dir, _ in targets:
        os.makedirs(out_dir, exist_ok=True)
    jobs = []
    for n in dist.shard(names):
        outs = [(d, a) for d, a in targets
                if args.force or not _is_done(crf_path(d, n), cam_path(args.cam_out_dir, n), a)]
        if outs:
            jobs.append((n, outs))
    pyutils.log(f"cam_to_crf: {len(jobs)} of {len(names)} images to do (alpha {args.low_alpha} -> "
                f"{args.la_crf_dir}, {args.high_alpha} -> {args.ha_crf_dir})")
    labels = load_cls_labels(args.cls_labels, args.data.cat_list)
    jobs = [(n, np.flatnonzero(labels[n]) if n in labels else None, outs) for n, outs in jobs]
    chunks, workers = perimage.crf_chunks(jobs, args)
    perimage.for_each_in_processes("cam_to_crf", chunks, functools.partial(_chunk, args=args), workers,
                                   total=len(jobs))
