"""Disk space of every per-image output at VOC size (500x375), and what it comes to for VOC train_aug and for
MS COCO train2014.

    .venv/bin/python benchmarks/bench_disk.py [--images 12] [--methods irn,psa,seam] [--work DIR] [--out FILE]

Writes a toy devkit of 500x375 images (voc12/synth.py), runs stage I of each method on it with the demo's
settings cut to one epoch and one CAM scale (run_sample.py --demo --data_root <devkit> --no-stage2, one
process per method; irn also runs the segmentation network for 2 iterations, for eval_seg's predictions), then
measures each per-image output folder:

- CAM files (keys, high_res (K, H, W) and, from make_cam, the stride-4 cam) and la/ha CRF score files (keys, crf
  (1 + K, H, W)) are uncompressed .npz: their size is a fixed part (keys, the zip and .npy headers) plus the map
  bytes, which grow with K, the image's classes (la/ha: 1 + K channels). Both parts are measured per file and
  the totals use the mean classes per image: VOC train_aug 1.56 (voc12/cls_labels.txt), COCO train2014 2.9
  (the mean labels per image multi-label classification papers report for COCO 2014, e.g. Chen et al. 2019,
  ML-GCN; Lin et al. 2014, section 5, give 3.5 categories per image for all of COCO: 1.2x the map rows).
- PNGs (IR labels, pseudo masks, eval_seg's predictions) are compressed: their size depends on the picture, and
  is the mean over the toy's files. The toy's shapes are simpler than real scenes, so real masks take more; the
  table also gives the bound of an 8-bit PNG, about a byte per pixel, which holds for any mask.

The compact column is --compact_maps (float16 maps): each measured .npz is written again with the steps' own
writers (misc.cams.save_cams, step.cam_to_crf.save_crf) with compact=True and measured.

Image counts: VOC train_aug 10,582 and COCO train2014 82,783 for the training-list outputs; eval_seg predicts
the validation list (VOC val 1,449; COCO val2014 40,504). Stage II (CDA) writes the same outputs again (the
*_aug folders). COCO's images are mostly 640 px on the long side (640x480 is 1.64x the pixels of 500x375), so
its totals at its own sizes are larger than these VOC-size ones by about that factor.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

VOC_SIZE = (500, 375)  # (W, H)
VOC_TRAIN_AUG, VOC_VAL = 10582, 1449
COCO_TRAIN, COCO_VAL = 82783, 40504
COCO_CLASSES_PER_IMAGE = 2.9  # labels per image of COCO 2014 (docstring)
LIMIT_GB = 150  # a step's outputs above this for train2014 get the compact form

# (flag of the output folder, what, kind: 'cam' | 'crf' | 'png', images it is written for: 'train' | 'val')
OUTPUTS = [
    ("cam_out_dir", "CAMs", "cam", "train"),
    ("ir_label_out_dir", "IR labels (irn)", "png", "train"),
    ("la_crf_dir", "la CRF scores (psa, seam)", "crf", "train"),
    ("ha_crf_dir", "ha CRF scores (psa, seam)", "crf", "train"),
    ("sem_seg_out_dir", "pseudo masks", "png", "train"),
    ("seg_out_dir", "eval_seg predictions", "png", "val"),
]
METHOD_FLAGS = {
    "irn": ["--irn_num_epoches", "1", "--irn_batch_size", "4", "--seg_batch_size", "4", "--seg_num_iters", "2",
            "--seg_checkpoint_every", "1", "--seg_infer_scales", "1.0"],
    "psa": ["--aff_num_epoches", "1", "--aff_batch_size", "4", "--no-train_seg_pass", "--no-eval_seg_pass"],
    "seam": ["--aff_num_epoches", "1", "--aff_batch_size", "4", "--no-train_seg_pass", "--no-eval_seg_pass"],
}


def voc_classes_per_image():
    """Mean classes per image of VOC train_aug, from the project's label file."""
    from voc12.dataloader import load_img_name_list
    labels = {}
    with open(os.path.join(ROOT, "voc12", "cls_labels.txt")) as f:
        for line in f:
            parts = line.split()
            if parts:
                labels[parts[0]] = len(parts) - 1
    names = load_img_name_list(os.path.join(ROOT, "voc12", "train_aug.txt"))
    return float(np.mean([labels[n] for n in names]))


def run_method(method, devkit, work, images_log):
    argv = [sys.executable, os.path.join(ROOT, "run_sample.py"), "--method", method, "--demo", "--data_root", devkit,
            "--work_dir", work, "--device", "cpu", "--num_workers", "1", "--no-stage2", "--cam_scales", "1.0",
            "--cam_num_epoches", "1", "--cam_batch_size", "4", "--no-eval_cam_pass", "--no-eval_sem_seg_pass"]
    argv += METHOD_FLAGS[method]
    t0 = time.time()
    with open(images_log, "w") as log:
        rc = subprocess.call(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if rc:
        sys.exit(f"{method}: run_sample.py failed (exit {rc}); see {images_log}")
    return time.time() - t0


def output_dirs(method, work):
    """{flag: folder} of the method's stage I outputs, as the driver resolves them."""
    from misc import config
    args = config.parse(["--method", method, "--demo", "--data_root", "x", "--work_dir", work])
    config.resolve_paths(args)
    return {flag: getattr(args, flag) for flag, *_ in OUTPUTS}


def measure_npz(folder, kind, tmp):
    """Per file: (size, fixed bytes, map bytes per channel, classes K, compact size)."""
    from misc import cams, pyutils
    from step import cam_to_crf
    import torch
    rows = []
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".npz"):
            continue
        path, name = os.path.join(folder, f), f[:-4]
        d = pyutils.load_npz(path)
        maps = ("cam", "high_res") if kind == "cam" else ("crf",)
        map_bytes = sum(d[m].nbytes for m in maps if m in d)
        channels = d["keys"].size  # CAMs: K; la/ha: 1 + K
        k = channels if kind == "cam" else channels - 1
        out = os.path.join(tmp, name + ".npz")
        if kind == "cam":
            cam = torch.from_numpy(d["cam"]) if "cam" in d else None
            cams.save_cams(tmp, name, d["keys"], torch.from_numpy(d["high_res"]), cam, compact=True)
        else:
            cam_to_crf.save_crf(out, d["keys"], d["crf"], d["alpha"], compact=True)
        size = os.path.getsize(path)
        rows.append((size, size - map_bytes, map_bytes / max(channels, 1), k, os.path.getsize(out)))
        os.remove(out)
    return rows


def summarise(folder, kind, tmp):
    """bytes(K) = fixed + per_channel * channels(K), for full and compact; PNGs: the mean file."""
    if not os.path.isdir(folder):
        return None
    if kind == "png":
        sizes = [os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".png")]
        if not sizes:
            return None
        return dict(files=len(sizes), mean=float(np.mean(sizes)))
    rows = measure_npz(folder, kind, tmp)
    if not rows:
        return None
    size, fixed, per_ch, k, compact = (np.array(c, np.float64) for c in zip(*rows))
    extra = 0 if kind == "cam" else 1  # la/ha: a background channel
    # compact: the same split, from the compact file sizes (the fixed part barely changes)
    per_ch_c = per_ch / 2
    fixed_c = compact - per_ch_c * (k + extra)
    return dict(files=len(rows), mean=float(size.mean()), classes=float(k.mean()), fixed=float(fixed.mean()),
                per_class=float(per_ch.mean()), fixed_compact=float(fixed_c.mean()),
                per_class_compact=float(per_ch_c.mean()), extra=extra)


def total(s, images, classes, compact=False):
    if "per_class" not in s:
        return images * s["mean"]
    fixed, per = (s["fixed_compact"], s["per_class_compact"]) if compact else (s["fixed"], s["per_class"])
    return images * (fixed + per * (classes + s["extra"]))


def fmt_bytes(b):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b:.0f} B"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=12, help="toy images (about 80%% train_aug, 20%% val)")
    p.add_argument("--methods", default="irn,psa,seam")
    p.add_argument("--work", default=None, help="folder for the devkit and the runs (default: a temporary one)")
    p.add_argument("--out", default=None, help="also write the numbers as JSON")
    a = p.parse_args()
    methods = a.methods.split(",")
    work = a.work or tempfile.mkdtemp(prefix="bench_disk_")
    devkit = os.path.join(work, "devkit")
    if not os.path.isfile(os.path.join(devkit, "synth.json")):
        from voc12.synth import write_devkit
        write_devkit(devkit, num_images=a.images, size=VOC_SIZE, num_heldout=2, progress=False)
    voc_k = voc_classes_per_image()
    found, seconds = {}, {}
    scratch = os.path.join(work, "compact")
    os.makedirs(scratch, exist_ok=True)
    for m in methods:
        seconds[m] = run_method(m, devkit, os.path.join(work, m), os.path.join(work, f"{m}.log"))
        print(f"{m}: stage I in {seconds[m]:.0f} s", file=sys.stderr)
        dirs = output_dirs(m, os.path.join(work, m))
        for flag, what, kind, _ in OUTPUTS:
            s = summarise(dirs[flag], kind, scratch)
            if s is not None:
                found[(flag, m)] = s

    print(f"\n{VOC_SIZE[0]}x{VOC_SIZE[1]} images; classes per image: VOC train_aug {voc_k:.2f}, COCO train2014 "
          f"{COCO_CLASSES_PER_IMAGE} (Lin et al. 2014). Totals: VOC train_aug {VOC_TRAIN_AUG:,} / COCO train2014 "
          f"{COCO_TRAIN:,} images (eval_seg: val {VOC_VAL:,} / val2014 {COCO_VAL:,}).\n")
    print("| output | method | bytes per image (500×375) | VOC train_aug | COCO train2014 | COCO, --compact_maps |")
    print("|---|---|---|---|---|---|")
    result = dict(voc_classes_per_image=voc_k, coco_classes_per_image=COCO_CLASSES_PER_IMAGE, seconds=seconds,
                  rows=[])
    for flag, what, kind, images in OUTPUTS:
        for m in methods:
            s = found.get((flag, m))
            if s is None:
                continue
            voc_n, coco_n = (VOC_TRAIN_AUG, COCO_TRAIN) if images == "train" else (VOC_VAL, COCO_VAL)
            voc, coco = total(s, voc_n, voc_k), total(s, coco_n, COCO_CLASSES_PER_IMAGE)
            if "per_class" in s:
                ch = "channel (1 + K)" if s["extra"] else "class"
                per = f"{fmt_bytes(s['fixed'])} + {fmt_bytes(s['per_class'])} per {ch}"
                compact = fmt_bytes(total(s, coco_n, COCO_CLASSES_PER_IMAGE, compact=True))
                voc_s, coco_s = fmt_bytes(voc), fmt_bytes(coco)
            else:  # a label PNG is at most about a byte per pixel: the bound holds for any picture
                bound = VOC_SIZE[0] * VOC_SIZE[1]
                per, compact = f"{fmt_bytes(s['mean'])} (toy masks; ≤ {fmt_bytes(bound)})", "–"
                voc_s, coco_s = (f"{fmt_bytes(t)} (≤ {fmt_bytes(n * bound)})"
                                 for t, n in ((voc, voc_n), (coco, coco_n)))
            over = f" (> {LIMIT_GB} GB)" if coco > LIMIT_GB * 1e9 else ""
            print(f"| {what} | {m} | {per} | {voc_s} | {coco_s}{over} | {compact} |")
            result["rows"].append(dict(output=flag, method=m, images=images, voc_total=voc, coco_total=coco,
                                       coco_compact=total(s, coco_n, COCO_CLASSES_PER_IMAGE, compact=True), **s))
    print("\nrun times: " + ", ".join(f"{m} {t:.0f} s" for m, t in seconds.items()) + f"; outputs under {work}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
