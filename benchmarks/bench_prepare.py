"""Time of the COCO prepare step (coco14.prepare) per 1,000 images, against the straightforward formulation.

    .venv/bin/python benchmarks/bench_prepare.py [--images 1000] [--size 640x480] [--workers 1 2]

Writes a toy COCO 2014 folder (coco14/synth.py: polygons, RLE, crowd annotations, unannotated images) of
--images images of --size, then times
- the straightforward formulation: pycocotools' COCO index, then per image annToMask of each non-crowd
  annotation painted in order and the palette PNG saved with PIL, in one process (what ReCAM's
  mscoco/annToMask.py does);
- coco14.prepare with each --workers count (masks, cls_labels.txt, the lists and prepare.json, from scratch).
Both read the same JSON; the masks are compared pixel for pixel. The toy has about 1.3 annotations per image,
real COCO about 7, so a real image costs more in both.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def straightforward(coco_root, out_dir):
    """pycocotools' annToMask per non-crowd annotation, painted in order; one process."""
    from PIL import Image
    from pycocotools.coco import COCO

    import coco14
    from misc import imutils

    palette = imutils.voc_palette().tobytes()
    os.makedirs(out_dir, exist_ok=True)
    n = 0
    for split in coco14.SPLITS:
        coco = COCO(os.path.join(coco_root, "annotations", f"instances_{split}.json"))
        label_of = {cat_id: i + 1 for i, cat_id in enumerate(sorted(coco.getCatIds()))}
        for img in coco.loadImgs(sorted(coco.getImgIds())):
            mask = np.zeros((img["height"], img["width"]), np.uint8)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"], iscrowd=False)):
                mask[coco.annToMask(ann) == 1] = label_of[ann["category_id"]]
            im = Image.fromarray(mask, mode="P")
            im.putpalette(palette)
            im.save(os.path.join(out_dir, img["file_name"][:-4] + ".png"))
            n += 1
    return n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the toy images")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args(argv)

    import contextlib
    import io

    from coco14 import prepare as prep
    from coco14 import synth
    from misc import imutils

    w, h = (int(t) for t in args.size.split("x"))
    work = args.work or tempfile.mkdtemp(prefix="bench_prepare_")
    try:
        root = os.path.join(work, "coco")
        t = time.perf_counter()
        synth.write_devkit(root, num_images=args.images, size=(w, h), num_val=max(1, args.images // 5),
                           progress=False)
        print(f"toy COCO folder: {args.images} images of {w}x{h} in {time.perf_counter() - t:.1f} s")
        n_ann = 0
        for split in ("train2014", "val2014"):
            with open(prep.annotation_path(root, split)) as f:
                n_ann += len(json.load(f)["annotations"])

        rows = []
        base_dir = os.path.join(work, "plain")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its index timings
            t = time.perf_counter()
            n = straightforward(root, base_dir)
            base = time.perf_counter() - t
        rows.append(("pycocotools annToMask loop, 1 process", base))
        for workers in args.workers:
            out = os.path.join(work, f"ours_{workers}")
            t = time.perf_counter()
            prep.prepare(root, out, num_workers=workers, force=True, log=lambda *a, **k: None)
            rows.append((f"coco14.prepare, {workers} worker(s) (+ labels, lists)", time.perf_counter() - t))
        same = all(np.array_equal(imutils.read_label_png(os.path.join(base_dir, f)),
                                  imutils.read_label_png(os.path.join(work, f"ours_{args.workers[0]}",
                                                                      "SegmentationClass", f)))
                   for f in sorted(os.listdir(base_dir)))

        print(f"\n{n} images, {n_ann / n:.2f} annotations per image; {os.cpu_count()} CPU cores\n")
        print(f"| {'formulation':<52} | {'s total':>8} | {'s per 1,000 images':>18} | {'x plain':>7} |")
        print(f"|{'-' * 54}|{'-' * 10}|{'-' * 20}|{'-' * 9}|")
        for name, sec in rows:
            print(f"| {name:<52} | {sec:8.2f} | {1000 * sec / n:18.2f} | {base / sec:7.2f} |")
        print(f"\nmasks equal to the pycocotools loop, pixel for pixel: {same}")
        return 0 if same else 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
