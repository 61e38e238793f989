"""Step 4: confident foreground/background regions from the CAMs, refined by a dense CRF (IR labels).

Label map: the foreground-threshold result where it says foreground, 255 (unsure) where it says
background, 0 where the background-threshold result says background too.
"""
import functools
import multiprocessing
import os

import numpy as np
from tqdm import tqdm

from misc import dist, imutils, pyutils
from step.make_cam import cam_path, load_cam
from voc12.dataloader import load_cls_labels, load_img_name_list


def confident_label(img, high_res, keys, fg_thres, bg_thres):
    """The IR label of one image: uint8 HW with values in keys+1, 0 and 255."""
    labels = np.concatenate([[0], keys + 1])

    def crf_at(thres):
        pred = imutils.crf_inference_label(img, imutils.bg_argmax(high_res, thres), n_labels=labels.shape[0])
        return labels[pred]

    fg, bg = crf_at(fg_thres), crf_at(bg_thres)
    conf = fg.copy()
    conf[fg == 0] = 255
    conf[(fg == 0) & (bg == 0)] = 0
    return conf.astype(np.uint8)


def _one(job, args):
    name, keys = job  # keys: the image's classes from the label file, which its CAM file must hold
    img = imutils.read_image(os.path.join(args.voc12_root, "JPEGImages", name + ".jpg"))
    cam = load_cam(args.cam_out_dir, name, img.shape[:2], keys)
    label = confident_label(img, cam["high_res"], cam["keys"], args.conf_fg_thres, args.conf_bg_thres)
    imutils.save_label_png(os.path.join(args.ir_label_out_dir, name + ".png"), label)
    return name


def run(args):
    names = load_img_name_list(args.train_list)
    os.makedirs(args.ir_label_out_dir, exist_ok=True)
    todo = [n for n in dist.shard(names)
            if args.force or not pyutils.is_fresh(os.path.join(args.ir_label_out_dir, n + ".png"),
                                                  cam_path(args.cam_out_dir, n))]
    pyutils.log(f"cam_to_ir_label: {len(todo)} of {len(names)} images to do -> {args.ir_label_out_dir}")
    labels = load_cls_labels(args.cls_labels)
    todo = [(n, np.flatnonzero(labels[n]) if n in labels else None) for n in todo]
    work = functools.partial(_one, args=args)
    bar = functools.partial(tqdm, total=len(todo), desc="cam_to_ir_label", disable=not dist.is_main(),
                            dynamic_ncols=True)
    if args.num_workers > 1 and len(todo) > 1:
        # Each image is independent and the CRF is single-threaded: a process pool scales with cores.
        with multiprocessing.get_context("spawn").Pool(args.num_workers) as pool:
            # one image per task: a CRF takes ~1 s, so the queue costs nothing and no worker idles
            # while another holds a chunk of several images at the end
            for _ in bar(pool.imap_unordered(work, todo, chunksize=1)):
                pass
    else:
        for _ in bar(map(work, todo)):
            pass
    dist.barrier()
