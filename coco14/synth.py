"""A toy COCO 2014 download: the VOC toy's pictures (voc12/synth.py) in COCO's layout, so coco14.prepare and every
step run on it unchanged, in seconds on a CPU.

A COCO class borrows the shape, colour, texture and home background of a VOC toy class (LOOKS: airplane looks
like the toy's aeroplane, tv like its tvmonitor, ...), so a classifier learns the toy as it learns VOC's.

    python -m coco14.synth --out data/toy_coco --num_images 300 --size 128x96 --seed 0

writes DIR/train2014/COCO_train2014_<id>.jpg, DIR/val2014/COCO_val2014_<id>.jpg and
DIR/annotations/instances_{train,val}2014.json with COCO's full structure: images (id, file_name, height,
width), annotations (id, image_id, category_id, segmentation, area, bbox, iscrowd) and all 80 categories with
their real ids (1..90, with gaps). Then DIR/heldout.txt (num_heldout unbiased images in val2014/ that no
annotation file lists, as COCO's test images) and, last, DIR/synth.json. Same arguments, same bytes.

What the annotations exercise, by construction:
- most segmentations are polygons (cv2.findContours on the mask at twice the size, so annToMask gives the mask
  back exactly); every sixth (and any mask with a hole, which polygons cannot draw) is compressed RLE, another
  sixth uncompressed RLE;
- every tenth image (index 3, 13, ...) has its first object annotated as a crowd (iscrowd 1, uncompressed RLE,
  as COCO's crowds);
- every 25th image (index 7, 32, ...) shows no object and has no annotation;
- an object's annotation reaches a few pixels under the objects in front of it, so painting the annotations
  later over earlier (the file's order, back to front) gives the picture's layout and the other order does not;
  every tenth image (index 1, 11, ...) is drawn until it has two such overlapping objects;
- the annotation file lists images in shuffled order and an image's annotations interleaved with others'.
"""
import argparse
import json
import os
import sys

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from coco14 import CAT_IDS, CAT_LIST, CAT_NAME_TO_IDX, CATEGORIES
from misc.pyutils import UserError, atomic_path, save_bytes, save_json, save_lines
from voc12 import synth as voc_synth

# COCO class -> the VOC toy class whose looks it borrows (all 20 VOC classes have a COCO counterpart)
LOOKS = {
    "person": "person", "bicycle": "bicycle", "car": "car", "motorcycle": "motorbike", "airplane": "aeroplane",
    "bus": "bus", "train": "train", "boat": "boat", "bird": "bird", "cat": "cat", "dog": "dog", "horse": "horse",
    "sheep": "sheep", "cow": "cow", "bottle": "bottle", "chair": "chair", "couch": "sofa",
    "potted_plant": "pottedplant", "dining_table": "diningtable", "tv": "tvmonitor",
}
COCO_OF_LOOK = {look: name for name, look in LOOKS.items()}
assert set(LOOKS) <= set(CAT_LIST) and sorted(COCO_OF_LOOK) == sorted(voc_synth.SHAPES)

CROWD_EVERY, CROWD_AT = 10, 3
EMPTY_EVERY, EMPTY_AT = 25, 7
OVERLAP_EVERY, OVERLAP_AT = 10, 1
ID_STEP, ID_OFFSET = 7, 3  # image ids 3, 10, 17, ...: not 1..n, as COCO's are not


def _classes(classes):
    """COCO class names with a look, in CAT_LIST order; VOC toy names (the demo's) are taken for their COCO
    counterpart."""
    names = [COCO_OF_LOOK.get(c, c) for c in (classes or LOOKS)]
    unknown = [c for c in names if c not in LOOKS]
    if unknown:
        raise UserError(f"unknown class '{unknown[0]}' in --classes; choose from {', '.join(LOOKS)}")
    return [c for c in CAT_LIST if c in set(names)]


def _annotation_masks(visible, band):
    """Each object's visible pixels plus a band of `band` px reaching under the objects drawn after it."""
    kernel = np.ones((2 * band + 1, 2 * band + 1), np.uint8)
    masks = []
    for i, vis in enumerate(visible):
        front = np.zeros_like(vis)
        for later in visible[i + 1:]:
            front |= later
        grown = cv2.dilate(vis.astype(np.uint8), kernel).astype(bool) if front.any() else vis
        masks.append(vis | (grown & front))
    return masks


def _overlaps(masks):
    return any((a & b).any() for i, a in enumerate(masks) for b in masks[i + 1:])


def _empty_image(size, rng):
    w, h = size
    background = str(rng.choice(voc_synth.BACKGROUNDS))
    img = voc_synth._background(background, h, w, rng) + rng.normal(0, 4, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), background


def _rle(mask):
    """Compressed RLE of a bool mask, its counts as text (JSON)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _polygons(mask):
    """Outer contours as COCO polygons [x1, y1, x2, y2, ...], or None where a polygon cannot draw the mask (a
    hole). Traced at twice the size, whose boundary pixel centres sit a quarter pixel inside the mask's edges."""
    up = np.kron(mask.astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or (hierarchy[0][:, 3] >= 0).any():
        return None
    polys = [((c.reshape(-1, 2) + 0.5) / 2).ravel().tolist() for c in contours if len(c) >= 3]
    return [[float(v) for v in p] for p in polys] or None


def _segmentation(mask, crowd, k):
    """The segmentation of annotation number k (see the module's docstring), and its RLE for area and box."""
    h, w = mask.shape
    polys = None if crowd or k % 6 in (2, 4) else _polygons(mask)
    if polys is not None:
        return polys, mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if crowd or k % 6 == 4:
        segm = _uncompressed_rle(mask)
        return segm, mask_utils.frPyObjects(segm, h, w)
    segm = _rle(mask)
    return segm, mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def _draw(looks, size, context_bias, rng, want_overlap, band):
    """One picture and its objects' annotation masks; redrawn (same generator) until two overlap if wanted."""
    for _ in range(200 if want_overlap and len(looks) > 1 else 1):
        img, _, picked, visible, background = voc_synth.render(looks, size, context_bias, rng)
        masks = _annotation_masks(visible, band)
        if _overlaps(masks):
            break
    return img, picked, masks, background


def _write_jpeg(path, img, quality):
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="JPEG", quality=quality)


def write_devkit(root, num_images=300, size=(128, 96), seed=0, classes=None, num_val=None, context_bias=0.9,
                 num_heldout=0, jpeg_quality=90, progress=True):
    """Write a toy COCO 2014 folder into `root` and return its path.

    The first num_images - num_val images (default num_val: a fifth, at least 1) go to train2014, the rest to
    val2014; image g is drawn from its own generator (seed, 0, g), held-out image j from (seed, 1, j). classes:
    COCO names of LOOKS (or VOC toy names), default all 20. The docstring of the module says what the
    annotations hold; with 8 images or more there is at least one of each case."""
    from tqdm import tqdm

    looks = [LOOKS[c] for c in _classes(classes)]
    voc_synth.check_toy_args(num_images, context_bias, size)
    if num_val is None:
        num_val = max(1, round(num_images / 5))
    if not 1 <= num_val <= num_images - 1:
        raise UserError(f"--num_val must lie in 1..{num_images - 1} (both splits need an image), got {num_val}")
    w, h = size
    for sub in ("train2014", "val2014", "annotations"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)

    band = max(2, round(min(w, h) / 40))
    n_train = num_images - num_val
    split_images = {"train2014": [], "val2014": []}
    split_objects = {"train2014": [], "val2014": []}  # per image, its annotations back to front
    info, heldout, ann_id = {}, [], 0
    for g in tqdm(range(num_images + num_heldout), desc="synth coco", disable=not progress):
        listed = g < num_images
        split = "train2014" if g < n_train else "val2014"
        rng = np.random.default_rng([seed, 0, g] if listed else [seed, 1, g - num_images])
        image_id = ID_STEP * g + ID_OFFSET
        stem = f"COCO_{split}_{image_id:012d}"
        if listed and g % EMPTY_EVERY == EMPTY_AT:
            img, background = _empty_image(size, rng)
            picked, masks = [], []
        else:
            bias = context_bias if listed else 0.0
            img, picked, masks, background = _draw(looks, size, bias, rng, g % OVERLAP_EVERY == OVERLAP_AT, band)
        _write_jpeg(os.path.join(root, split, stem + ".jpg"), img, jpeg_quality)
        home = bool(picked) and background == voc_synth.HOME_OF[picked[0]]
        info[stem] = {"background": background, "home": home, "classes": [COCO_OF_LOOK[c] for c in picked]}
        if not listed:
            heldout.append(stem)
            continue
        split_images[split].append({"id": image_id, "file_name": stem + ".jpg", "height": h, "width": w,
                                    "license": 1})
        objects = []
        for i, (look, mask) in enumerate(zip(picked, masks)):
            crowd = i == 0 and g % CROWD_EVERY == CROWD_AT
            segm, rle = _segmentation(mask, crowd, ann_id)
            ann_id += 1
            objects.append({"id": ann_id, "image_id": image_id,
                            "category_id": CAT_IDS[CAT_NAME_TO_IDX[COCO_OF_LOOK[look]]], "segmentation": segm,
                            "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                            "iscrowd": int(crowd)})
        split_objects[split].append(objects)

    categories = [{"supercategory": sup, "id": cat_id, "name": name} for cat_id, name, sup in CATEGORIES]
    order_rng = np.random.default_rng([seed, 2])
    for split in split_images:
        images = split_images[split]
        per_image = split_objects[split]
        # round robin: every image's first annotation, then every second one, ...; an image keeps its own order
        rounds = max((len(objs) for objs in per_image), default=0)
        annotations = [objs[r] for r in range(rounds) for objs in per_image if r < len(objs)]
        data = {"info": {"description": "toy COCO 2014 (coco14/synth.py)", "version": "1.0", "year": 2014},
                "licenses": [{"id": 1, "name": "synthetic", "url": ""}],
                "images": [images[i] for i in order_rng.permutation(len(images))],
                "annotations": annotations, "categories": categories}
        save_bytes(os.path.join(root, "annotations", f"instances_{split}.json"),
                     json.dumps(data, separators=(",", ":")).encode())
    if num_heldout:
        save_lines(os.path.join(root, "heldout.txt"), heldout)
    save_json(os.path.join(root, "synth.json"), {  # last: its presence says the devkit is complete
        "seed": seed, "size": [w, h], "num_images": num_images, "num_val": num_val, "num_heldout": num_heldout,
        "classes": [COCO_OF_LOOK[look] for look in looks], "context_bias": context_bias,
        "looks": {COCO_OF_LOOK[look]: look for look in looks}, "images": info,
    })
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a toy COCO 2014 folder (images and instance annotations).")
    p.add_argument("--out", required=True, help="folder to write (created if missing)")
    p.add_argument("--num_images", type=int, default=300, help="images in the annotation files (train + val)")
    p.add_argument("--num_val", type=int, default=None, help="of those, how many go to val2014 (default a fifth)")
    p.add_argument("--size", type=voc_synth.parse_size, default=(128, 96), help="WIDTHxHEIGHT, e.g. 128x96")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--context_bias", type=float, default=0.9,
                   help="probability that an object sits on its home background (0 = unbiased)")
    p.add_argument("--classes", default="", help="comma-separated COCO classes with a toy look (default all): "
                                                 + ", ".join(LOOKS))
    p.add_argument("--num_heldout", type=int, default=0, help="extra unbiased, unannotated images (heldout.txt)")
    args = p.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        write_devkit(args.out, args.num_images, args.size, args.seed, classes, args.num_val, args.context_bias,
                     args.num_heldout)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote toy COCO 2014 folder: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
