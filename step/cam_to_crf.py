"""Step (PSA, SEAM): la/ha CRF score maps from the CAMs, the inputs of AffinityNet's labels.

For each image of the training list and each of two alphas, the CAMs of its classes get a background
score (1 - max over the classes) ** alpha and go through PSA's dense CRF (misc.imutils.crf_inference);
the marginals are kept whole, not as an argmax, because train_aff averages them over 8x8 cells after its
random crop (PSA's infer_cls.py:90-110, SEAM's infer_SEAM.py:92-112). A low alpha gives a strong
background (la: confident foreground), a high alpha a weak one (ha: confident background).

Writes <la_crf_dir>/<id>.npz and <ha_crf_dir>/<id>.npz: `keys` int64 [0, classes + 1] (VOC labels of
the channels), `crf` float32 (1 + K, H, W), `alpha` float64. Reads the CAM files of make_cam / infer_cls
(`keys`, `high_res` at image size; a stride-4 `cam` is not needed).

args read: train_list, voc12_root, cls_labels, cam_out_dir, la_crf_dir, ha_crf_dir, low_alpha, high_alpha
(PSA 4 / 32, SEAM 4 / 24), num_workers, force. An output is redone when it is missing, older than its CAM
file, made with another alpha, or with --force. Under torchrun each process takes every world_size-th image.
"""
import functools
import multiprocessing
import os

import numpy as np
from tqdm import tqdm

from misc import dist, imutils, pyutils
from step.make_cam import cam_path
from voc12 import N_CAT
from voc12.dataloader import crf_path, load_cls_labels, load_img_name_list


def crf_scores(img, high_res, alpha):
    """CRF marginals (1 + K, H, W) float32 of [(1 - max_c cam) ** alpha; cams] (PSA's _crf_with_alpha).

    img: uint8 (H, W, 3); high_res: float32 (K, H, W), the CAMs of the image's classes in ascending order.
    The scores are not normalised to a distribution, as in the reference. Without classes the only label
    is the background and its marginal is 1 (the reference has no such image; its max would fail)."""
    high_res = np.asarray(high_res, dtype=np.float32)
    if high_res.shape[0] == 0:
        return np.ones((1,) + high_res.shape[1:], np.float32)
    bg = np.power(1 - np.max(high_res, axis=0, keepdims=True), alpha)
    scores = np.concatenate((bg, high_res), axis=0)
    return imutils.crf_inference(img, scores, labels=scores.shape[0])


def load_cam_scores(cam_dir, name, size, keys=None):
    """(keys, high_res) of one CAM file, checked: maps of `size` (H, W), one per key, and, given `keys`
    (the image's 0-based classes from the label file), those classes. A file that fails is a UserError."""
    path = cam_path(cam_dir, name)
    pyutils.require_file(path, "CAM file", "run the CAM step first (make_cam or infer_cls)")
    d = pyutils.load_npz(path, keys=("keys", "high_res"))
    k, high = d["keys"], d["high_res"]
    if not (k.ndim == 1 and k.dtype.kind in "iu" and high.ndim == 3 and high.shape[0] == k.size
            and ((k >= 0) & (k < N_CAT)).all()):
        raise pyutils.UserError(f"{path} is not a CAM file (keys {k.tolist()[:25]}, high_res {high.shape}); "
                                "delete it and rerun the CAM step")
    if high.shape[1:] != tuple(size):
        raise pyutils.UserError(f"{path} does not fit {name}, a {size[1]}x{size[0]} image: its high_res is "
                                f"{high.shape[2]}x{high.shape[1]}; rerun the CAM step with --force")
    if keys is not None and not np.array_equal(k, np.asarray(keys).reshape(-1)):
        raise pyutils.UserError(f"{path} holds the CAMs of classes {k.tolist()}, but {name} has classes "
                                f"{np.asarray(keys).reshape(-1).tolist()}; rerun the CAM step with --force")
    return k.astype(np.int64), high


def _is_done(path, cam_file, alpha):
    if not pyutils.is_fresh(path, cam_file):
        return False
    try:
        with np.load(path, allow_pickle=False) as d:
            return "alpha" in d.files and float(d["alpha"]) == float(alpha)
    except Exception:  # unreadable: redo it
        return False


def _one(job, args):
    name, keys, outs = job  # outs: (folder, alpha) pairs still to write for this image
    img = imutils.read_image(os.path.join(args.voc12_root, "JPEGImages", name + ".jpg"))
    k, high = load_cam_scores(args.cam_out_dir, name, img.shape[:2], keys)
    labels = np.concatenate([[0], k + 1]).astype(np.int64)
    for out_dir, alpha in outs:
        pyutils.save_npz(crf_path(out_dir, name), keys=labels, crf=crf_scores(img, high, alpha).astype(np.float32),
                         alpha=np.float64(alpha))
    return name


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
    labels = load_cls_labels(args.cls_labels)
    jobs = [(n, np.flatnonzero(labels[n]) if n in labels else None, outs) for n, outs in jobs]
    work = functools.partial(_one, args=args)
    bar = functools.partial(tqdm, total=len(jobs), desc="cam_to_crf", disable=not dist.is_main(),
                            dynamic_ncols=True)
    if args.num_workers > 1 and len(jobs) > 1:
        # independent images, single-threaded CRFs: a process pool scales with cores (as cam_to_ir_label)
        with multiprocessing.get_context("spawn").Pool(args.num_workers) as pool:
            for _ in bar(pool.imap_unordered(work, jobs, chunksize=1)):
                pass
    else:
        for _ in bar(map(work, jobs)):
            pass
    dist.barrier()
