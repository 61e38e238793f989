"""Step 4: confident foreground/background regions from the CAMs, refined by a dense CRF (IR labels).

Label map: the foreground-threshold result where it says foreground, 255 (unsure) where it says
background, 0 where the background-threshold result says background too.
"""
import functools
import os

import numpy as np

from misc import cams, imutils, perimage, pyutils
from misc.cams import load_cam
from voc12.dataloader import get_img_path, load_cls_labels, load_img_name_list


def confident_labels(imgs, high_res_list, keys_list, fg_thres, bg_thres, backend="pydensecrf", device=None):
    """The IR labels of several images: uint8 HW maps with values in keys+1, 0 and 255. Each image's
    background-thresholded CAM argmax at fg_thres and at bg_thres goes through the label CRF (all of them in one
    batch with the torch backend)."""
    crf_imgs, maps, n_labels = [], [], []
    for img, high_res, keys in zip(imgs, high_res_list, keys_list):
        if len(keys) == 0:
            continue  # no class (COCO has such images): all background, no CRF (ReCAM's cam_to_ir_label.py:29-34)
        for thres in (fg_thres, bg_thres):
            crf_imgs.append(img)
            maps.append(imutils.bg_argmax(high_res, thres))
            n_labels.append(len(keys) + 1)
    preds = imutils.crf_inference_label_batch(crf_imgs, maps, n_labels=n_labels, backend=backend,
                                              device=device) if crf_imgs else []
    out, i = [], 0
    for img, keys in zip(imgs, keys_list):
        if len(keys) == 0:
            out.append(np.zeros(img.shape[:2], np.uint8))
            continue
        labels = np.concatenate([[0], keys + 1])
        fg, bg = labels[preds[2 * i]], labels[preds[2 * i + 1]]
        i += 1
        conf = fg.copy()
        conf[fg == 0] = 255
        conf[(fg == 0) & (bg == 0)] = 0
        out.append(conf.astype(np.uint8))
    return out


def confident_label(img, high_res, keys, fg_thres, bg_thres, backend="pydensecrf", device=None):
    """The IR label of one image: uint8 HW with values in keys+1, 0 and 255."""
    return confident_labels([img], [high_res], [keys], fg_thres, bg_thres, backend, device)[0]


def _chunk(jobs, args):
    """IR labels of a few images (one with pydensecrf, --crf_batch with the torch CRF); returns how many."""
    imgs, found = [], []
    for name, keys in jobs:  # keys: the image's classes from the label file, which its CAM file must hold
        imgs.append(imutils.read_image(get_img_path(name, args.data)))
        found.append(load_cam(args.cam_out_dir, name, imgs[-1].shape[:2], keys, num_classes=args.data.num_classes))
    labels = confident_labels(imgs, [c["high_res"] for c in found], [c["keys"] for c in found], args.conf_fg_thres,
                              args.conf_bg_thres, args.crf_backend, args.device)
    for (name, _), label in zip(jobs, labels):
        imutils.save_label_png(os.path.join(args.ir_label_out_dir, name + ".png"), label, args.data.palette)
    return len(jobs)


def add_arguments(g):
    g.add_argument("--conf_fg_thres", default=0.30, type=float,
                   help="background score for confident foreground (IR labels)")
    g.add_argument("--conf_bg_thres", default=0.05, type=float,
                   help="background score for confident background (IR labels)")


def check_arguments(args):
    pyutils.require_range(args, ("conf_fg_thres", "conf_bg_thres"), unit=True)


def run(args):
    names = load_img_name_list(args.train_list)
    todo = perimage.pending("cam_to_ir_label", names, lambda n: os.path.join(args.ir_label_out_dir, n + ".png"),
                            args, lambda n: (cams.cam_path(args.cam_out_dir, n),), out_dirs=[args.ir_label_out_dir])
    labels = load_cls_labels(args.cls_labels, args.data.cat_list)
    jobs = [(names[i], np.flatnonzero(labels[names[i]]) if names[i] in labels else None) for i in todo]
    chunks, workers = perimage.crf_chunks(jobs, args)
    perimage.for_each_in_processes("cam_to_ir_label", chunks, functools.partial(_chunk, args=args), workers,
                                   total=len(jobs))
