"""COCO 2014's ground truth in the layout every step reads: semantic masks, image-level labels and the lists,
derived from the instance annotations once.

    python -m coco14.prepare --coco_root COCO2014 --out_dir COCO2014/cda_labels [--num_workers N] [--force]

reads COCO_ROOT/annotations/instances_{train,val}2014.json and writes into OUT_DIR:
- SegmentationClass/<file stem>.png: VOC-palette PNGs of labels 0..N_CAT (0 background, category ids mapped to
  1..N_CAT in sorted-id order);
- cls_labels.txt: `<file stem> <class name> ...` per image, VOC's format, names of coco14.CAT_LIST;
- train14.txt, val14.txt: the file stems of each split, by image id;
- prepare.json, written last: the counts and the annotation files' sizes (needed() compares them).

What is painted and what is labelled follows ReCAM (zhaozhengChen/ReCAM at 2bdbcd2), the COCO reference of the
IRNet family:
- masks: mscoco/annToMask.py:19 takes an image's annotations with iscrowd=False (pycocotools' getAnnIds, which
  keeps the annotation file's order), and :24-27 paints each one's annToMask with its category's label
  (category_map, :8: ids in sorted order -> 1..80), a later annotation over an earlier one. Crowd regions
  stay background (no ignore label), and an image without annotations gets an all-background mask (:16).
- image-level labels: mscoco/dataloader.py:57 reads torchvision's CocoDetection, whose targets are all of an
  image's annotations (getAnnIds without an iscrowd filter), and :83-94 sets every category found: crowd
  annotations count. A class annotated only as a crowd is in the label but not in the mask, as in ReCAM.
- images: CocoDetection lists every image of the annotation file, sorted by id, annotated or not; ReCAM
  trains (dataloader.py:75-80) and evaluates (step_coco/eval_cam.py:9-11, eval_sem_seg.py:9-12, on train2014)
  on all of them, the unannotated ones with an all-zero label vector. So the lists keep every image and an
  unannotated image has a label line of its stem alone (all-zero vector).

Every file is written atomically; existing masks are kept unless --force (so an interrupted run goes on where it
stopped), and all of them are rewritten when the annotation files differ from the ones prepare.json records.
"""
import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from coco14 import CAT_ID_TO_IDX, CAT_LIST, N_CAT, SPLITS, gt_path, image_path, palette
from misc import imutils
from misc.pyutils import (UserError, load_json, one_line, remove_temp_files, require_dir, require_file, save_bytes,
                          save_lines)

MARKER = "prepare.json"
VERSION = 1
LIST_NAMES = {"train2014": "train14.txt", "val2014": "val14.txt"}
DOWNLOAD = "download it from cocodataset.org (annotations_trainval2014.zip) and unpack it into {root}"


def annotation_path(coco_root, split):
    return os.path.join(coco_root, "annotations", f"instances_{split}.json")


def check_root(coco_root):
    """Cheap up-front checks of the download (UserError, one line): the annotation files and the image folders."""
    require_dir(coco_root, "COCO 2014 folder", "pass the folder that holds train2014/, val2014/ and annotations/")
    require_dir(os.path.join(coco_root, "annotations"), "annotations folder", DOWNLOAD.format(root=coco_root))
    for split in SPLITS:
        require_file(annotation_path(coco_root, split), "annotation file", DOWNLOAD.format(root=coco_root))
        require_dir(os.path.join(coco_root, split), "image folder",
                    f"unpack {split}.zip (from cocodataset.org) into {coco_root}")


def _annotation_sizes(coco_root):
    return {os.path.basename(annotation_path(coco_root, s)): os.path.getsize(annotation_path(coco_root, s))
            for s in SPLITS}


def _outputs(out_dir):
    return [os.path.join(out_dir, name) for name in ["cls_labels.txt", *LIST_NAMES.values()]]


def _marker_matches(coco_root, out_dir):
    """True if prepare.json says a finished run read annotation files of the sizes present now."""
    try:
        marker = load_json(os.path.join(out_dir, MARKER))
        sizes = _annotation_sizes(coco_root)
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("version") == VERSION and marker.get("annotation_files") == sizes


def needed(coco_root, out_dir):
    """Whether prepare() must run: no finished run into out_dir for these annotation files, or its lists are gone."""
    return not (_marker_matches(coco_root, out_dir) and all(os.path.isfile(p) for p in _outputs(out_dir))
                and os.path.isdir(os.path.join(out_dir, "SegmentationClass")))


# ---------------------------------------------------------------- reading and checking an annotation file


def load_split(coco_root, split):
    """One split's images, checked: a list of dicts with the file stem, height, width, the class indices of all
    its annotations (crowd included) and the (label, segmentation, annotation id) of its non-crowd ones in the
    file's order; sorted by image id. Bad input is a UserError naming the file."""
    path = annotation_path(coco_root, split)
    fix = f"download annotations_trainval2014.zip again and unpack it into {coco_root}"
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"cannot parse {path} ({one_line(e)}): it is cut short or not JSON; {fix}")
    if not (isinstance(data, dict) and isinstance(data.get("images"), list)
            and isinstance(data.get("annotations"), list)):
        raise UserError(f"{path} is not a COCO instances file (it needs 'images' and 'annotations' lists); {fix}")

    images = {}
    for im in data["images"]:
        try:
            image_id, file_name, height, width = im["id"], im["file_name"], int(im["height"]), int(im["width"])
            if not isinstance(image_id, int):
                raise TypeError(image_id)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: image entry {str(im)[:100]} lacks an id, file_name, height or width; {fix}")
        if file_name != f"COCO_{split}_{image_id:012d}.jpg":
            raise UserError(f"{path}: image {image_id} is named {file_name!r}, not COCO_{split}_{image_id:012d}.jpg "
                            "as in the 2014 release; point --coco_root at COCO 2014")
        stem = file_name[:-len(".jpg")]
        images[image_id] = {"id": image_id, "stem": stem, "height": height, "width": width, "classes": set(),
                            "paint": [], "crowd": 0}

    for ann in data["annotations"]:
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        image = images.get(ann.get("image_id")) if isinstance(ann, dict) else None
        if image is None or "segmentation" not in ann:
            raise UserError(f"{path}: annotation {ann_id} has no segmentation or names no image of the file's "
                            f"'images' list; {fix}")
        cat_id = ann.get("category_id")
        if cat_id not in CAT_ID_TO_IDX:
            raise UserError(f"{path}: annotation {ann_id} of {image['stem']} has category id {cat_id!r}, not one of "
                            f"COCO's {N_CAT} categories; fix the file or {fix}")
        label = CAT_ID_TO_IDX[cat_id]
        image["classes"].add(label)  # the image-level label counts every annotation, crowd included
        if ann.get("iscrowd", 0):
            image["crowd"] += 1
        else:
            image["paint"].append((label + 1, ann["segmentation"], ann_id))
    del data

    missing = [image_path(coco_root, im["stem"]) for im in images.values()
               if not os.path.isfile(image_path(coco_root, im["stem"]))]
    if missing:
        raise UserError(f"image {missing[0]} listed in {path} not found ({len(missing)} of {len(images)} missing); "
                        f"unpack {split}.zip (from cocodataset.org) into {coco_root}")
    return [images[k] for k in sorted(images)]


# ---------------------------------------------------------------- one mask (runs in the workers)


def decode(segmentation, height, width):
    """uint8 (H, W) 0/1 mask of one annotation's segmentation: polygons (one object may have several parts),
    uncompressed RLE or compressed RLE, as pycocotools' COCO.annToMask decodes them."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def paint(height, width, paint_list, where=""):
    """uint8 (H, W) label map: each (label, segmentation, annotation id) painted in order, later over earlier."""
    label = np.zeros((height, width), np.uint8)
    for value, segmentation, ann_id in paint_list:
        try:
            m = decode(segmentation, height, width)
        except Exception as e:  # pycocotools reports a malformed segmentation in many ways
            raise UserError(f"{where}: cannot decode the segmentation of annotation {ann_id} ({one_line(e)}); "
                            "fix the annotation file or download it again")
        if m.shape != (height, width):
            raise UserError(f"{where}: annotation {ann_id} is a {m.shape[1]}x{m.shape[0]} mask on a {width}x{height} "
                            "image; fix the annotation file or download it again")
        label[m.astype(bool)] = value
    return label


def _write_mask(job):
    path, height, width, paint_list, where = job
    imutils.save_label_png(path, paint(height, width, paint_list, where), palette())


# ---------------------------------------------------------------- the whole preparation


def prepare(coco_root, out_dir, num_workers=None, force=False, log=print):
    """Write masks, cls_labels.txt, train14.txt, val14.txt and (last) prepare.json into out_dir; return what
    prepare.json holds plus masks_written and masks_kept. Existing masks are kept unless force or the annotation
    files changed; the text files are written only when their contents change."""
    check_root(coco_root)
    stale = os.path.isfile(os.path.join(out_dir, MARKER)) and not _marker_matches(coco_root, out_dir)
    splits = {}
    for split in SPLITS:  # every file is read and checked before anything is written
        log(f"coco14.prepare: reading {annotation_path(coco_root, split)}")
        splits[split] = load_split(coco_root, split)

    mask_dir = os.path.join(out_dir, "SegmentationClass")
    os.makedirs(mask_dir, exist_ok=True)
    remove_temp_files(out_dir, mask_dir, recursive=False)  # leftovers of an interrupted run, never trusted
    if stale:
        log(f"coco14.prepare: the annotation files differ from those {os.path.join(out_dir, MARKER)} records: "
            "rewriting every mask")
    rewrite = force or stale
    jobs = [(gt_path(out_dir, im["stem"]), im["height"], im["width"], im["paint"],
             f"{annotation_path(coco_root, split)} ({im['stem']})") for split, images in splits.items() for im in images]
    todo = [job for job in jobs if rewrite or not os.path.isfile(job[0])]
    workers = num_workers if num_workers else len(os.sched_getaffinity(0))
    log(f"coco14.prepare: {len(todo)} of {len(jobs)} masks to write into {mask_dir}, {workers} worker(s)")
    with tqdm(total=len(todo), desc="coco14 masks", unit="img") as bar:
        if workers > 1 and len(todo) > 1:
            # spawn: the workers start small instead of copying a parent that holds the annotations (or CUDA);
            # a worker that dies (out of memory) fails the run instead of hanging it
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn")) as ex:
                try:
                    for _ in ex.map(_write_mask, todo, chunksize=8):
                        bar.update()
                except BaseException:
                    ex.shutdown(wait=True, cancel_futures=True)  # the first error stops the masks not started
                    raise
        else:
            for job in todo:
                _write_mask(job)
                bar.update()

    label_lines = [" ".join([im["stem"]] + [CAT_LIST[c] for c in sorted(im["classes"])])
                   for images in splits.values() for im in images]
    save_lines(os.path.join(out_dir, "cls_labels.txt"), label_lines, unless_same=True)
    for split, images in splits.items():
        save_lines(os.path.join(out_dir, LIST_NAMES[split]), (im["stem"] for im in images), unless_same=True)
    marker = {
        "version": VERSION, "coco_root": os.path.abspath(coco_root), "annotation_files": _annotation_sizes(coco_root),
        "splits": {split: {"images": len(images), "list": LIST_NAMES[split],
                           "annotations": sum(len(im["paint"]) + im["crowd"] for im in images),
                           "crowd_annotations": sum(im["crowd"] for im in images),
                           "unannotated_images": sum(not im["classes"] for im in images)}
                   for split, images in splits.items()},
    }
    save_bytes(os.path.join(out_dir, MARKER), (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode(),
               unless_same=True)  # last
    log(f"coco14.prepare: done, {len(todo)} masks written, {len(jobs) - len(todo)} kept; "
        + ", ".join(f"{s} {v['images']} images ({v['unannotated_images']} unannotated)"
                    for s, v in marker["splits"].items()))
    return dict(marker, masks_written=len(todo), masks_kept=len(jobs) - len(todo))


def main(argv=None):
    p = argparse.ArgumentParser(description="Write COCO 2014's semantic masks, image-level labels and lists from "
                                            "its instance annotations.")
    p.add_argument("--coco_root", required=True, help="folder of train2014/, val2014/ and annotations/")
    p.add_argument("--out_dir", required=True, help="where to write SegmentationClass/, cls_labels.txt, the lists")
    p.add_argument("--num_workers", type=int, default=None, help="processes writing masks (default: every core)")
    p.add_argument("--force", action="store_true", help="rewrite the masks that are already there")
    args = p.parse_args(argv)
    try:
        if args.num_workers is not None and args.num_workers < 1:
            raise UserError(f"--num_workers must be at least 1, got {args.num_workers}")
        prepare(args.coco_root, args.out_dir, num_workers=args.num_workers, force=args.force)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
