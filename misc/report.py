"""A self-contained HTML report of a run: results, per-class IoU, time per step and pictures.

Everything is read back from files the steps wrote (results.json, CAM .npz, mask PNGs, pool preview,
CDA samples): run_sample.py rewrites it at the end of every run, also one with every step turned off.
"""
import base64
import html
import io
import os

import numpy as np
from PIL import Image

from misc import imutils, pyutils, stages

STAGES = tuple((s.name, s.label + (" (+CDA)" if s.cda else "")) for s in stages.STAGES)


def heatmap(x):
    """A blue-to-red colour map of values in [0, 1] (HW) -> uint8 HW3."""
    x = np.clip(x, 0, 1)[..., None]
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 128], [255, 255, 0], [255, 64, 0]], np.float32)
    pos = x * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    t = pos - lo
    return (stops[lo[..., 0]] * (1 - t) + stops[lo[..., 0] + 1] * t).astype(np.uint8)


def cam_overlay(img, cam_file):
    """The image blended with the maximum over its classes' CAMs."""
    if not os.path.isfile(cam_file):
        return None
    high = pyutils.load_npz(cam_file, keys=("high_res",))["high_res"]
    m = high.max(0) if high.shape[0] else np.zeros(img.shape[:2], np.float32)
    if m.shape != img.shape[:2]:
        return None
    return (0.5 * img + 0.5 * heatmap(m)).astype(np.uint8)


def mask_image(path, palette, img=None):
    if not os.path.isfile(path):
        return None
    rgb = imutils.colorize(imutils.read_label_png(path), palette)
    return rgb if img is None else (0.35 * img + 0.65 * rgb).astype(np.uint8)


def data_uri(rgb, width=None):
    im = Image.fromarray(rgb)
    if width and im.width > width:
        im = im.resize((width, round(im.height * width / im.width)), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def file_uri(path):
    if not os.path.isfile(path):
        return None
    return data_uri(np.asarray(Image.open(path).convert("RGB")))


def pct(r):
    return "-" if r is None else f"{100 * r:.1f}"


def results_section(results, method="irn", dataset="voc12"):
    from misc.methods import PAPER_NOTE, reference
    rows = []
    for stage, label in STAGES:
        s = results.get(stage, {})
        refs = "".join(f"<td class=paper>{'-' if v is None else v}</td>"
                       for v in (reference(method, dataset, stage, m) for m in ("cam", "sem_seg", "seg")))
        rows.append(f"<tr><td>{label}</td><td>{pct(s.get('cam', {}).get('miou'))}</td>"
                    f"<td>{pct(s.get('sem_seg', {}).get('miou'))}</td><td>{pct(s.get('seg', {}).get('miou'))}</td>"
                    f"{refs}</tr>")
    return ("<h2>Results (mIoU, %)</h2><table><tr><th></th><th>CAM</th><th>pseudo mask</th>"
            "<th>segmentation network (val)</th><th>reference CAM</th><th>reference mask</th>"
            "<th>reference segmentation</th></tr>" + "".join(rows) + "</table>"
            f"<p class=note>reference: {html.escape(PAPER_NOTE[dataset])}</p>")


def per_class_section(results):
    cols = [(stage, metric) for stage, _ in STAGES for metric in ("cam", "sem_seg", "seg")
            if metric != "seg" or results.get(stage, {}).get("seg")]
    what = {"cam": "CAM", "sem_seg": "mask", "seg": "segmentation (val)"}
    head = "".join(f"<th>{dict(STAGES)[s]}<br>{what[m]}</th>" for s, m in cols)
    rows = []
    # the data set's order (background first), not the sorted keys results.json keeps
    names = dict.fromkeys(["background"] + list(results.get("class_names", [])))
    names.update(dict.fromkeys(n for s, m in cols for n in results.get(s, {}).get(m, {}).get("iou", {})))
    for name in names:
        values = [results.get(s, {}).get(m, {}).get("iou", {}).get(name) for s, m in cols]
        if all(v is None for v in values):
            continue  # a class in neither ground truth nor prediction (e.g. not in the toy devkit)
        rows.append(f"<tr><td>{name}</td>{''.join(f'<td>{pct(v)}</td>' for v in values)}</tr>")
    return f"<h2>Per-class IoU (%)</h2><table><tr><th>class</th>{head}</tr>{''.join(rows)}</table>"


def pool_counts(pool_dir):
    """One line from pool.json: the instances per class that has any, in the data set's order, and how many
    classes have none (with COCO's 80 classes most of a small pool's counts are 0)."""
    meta = pyutils.load_json(os.path.join(pool_dir, "pool.json"), default=None)
    if not meta:
        return ""
    counts = meta.get("counts", {})
    order = meta.get("class_names") or sorted(counts)
    have = ", ".join(f"{html.escape(c)} {counts[c]}" for c in order if counts.get(c))
    none = len(meta.get("classes_without_instances", []))
    return (f"<p>{meta.get('num_instances', 0)} instances from {meta.get('num_masks', 0)} masks: {have or 'none'}"
            + (f"; {none} of {len(order)} classes have none" if none else "") + "</p>")


def timing_section(results):
    order = ["make_instance_pool", "train_cam", "make_cam", "eval_cam", "cam_to_ir_label", "train_irn",
             "make_sem_seg", "eval_sem_seg"]  # results.json keeps keys sorted; show the order steps run in

    def rank(label):
        stage, _, step = label.partition(": ")
        return (stage, order.index(step) if step in order else len(order), step)
    secs = dict(sorted(results.get("seconds", {}).items(), key=lambda kv: rank(kv[0])))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in secs.items())
    total = sum(secs.values())
    return (f"<h2>Time per step (s)</h2><table><tr><th>step</th><th>seconds</th></tr>{rows}"
            f"<tr><th>total</th><th>{total:.1f}</th></tr></table>")


def pictures_section(args, names, width=200):
    """Per image: image, ground truth, CAMs of both stages, pseudo masks of both stages."""
    cam_dirs = [(f"CAM, {s.label}", stages.output(args, s, "cam_out_dir")) for s in stages.STAGES]
    mask_dirs = [(f"mask, {s.label}", stages.output(args, s, "sem_seg_out_dir")) for s in stages.STAGES]
    cols = [("image", None), ("ground truth", None)] + cam_dirs + mask_dirs
    rows = []
    for name in names:
        img = imutils.read_image(args.data.image_path(name))
        panels = [img, mask_image(args.data.gt_path(name), args.data.palette)]
        panels += [cam_overlay(img, os.path.join(d, name + ".npz")) for _, d in cam_dirs]
        panels += [mask_image(os.path.join(d, name + ".png"), args.data.palette) for _, d in mask_dirs]
        cells = "".join(f"<td><img src='{data_uri(p, width)}'></td>" if p is not None else "<td>-</td>"
                        for p in panels)
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    head = "".join(f"<th>{c}</th>" for c, _ in cols)
    return f"<h2>Pictures</h2><table class=pics><tr><th>id</th>{head}</tr>{''.join(rows)}</table>"


def seg_pictures_section(args, width=200, num_pictures=6):
    """Validation images: ground truth, the pseudo masks' segmentation network of each stage."""
    names = []
    if os.path.isfile(args.seg_val_list):
        names = [n for n in open(args.seg_val_list).read().split()][:num_pictures]
    dirs = [(s.label, stages.output(args, s, "seg_out_dir")) for s in stages.STAGES]
    if not any(os.path.isfile(os.path.join(d, n + ".png")) for _, d in dirs for n in names):
        return ""
    rows = []
    for name in names:
        img = imutils.read_image(args.data.image_path(name))
        panels = [img, mask_image(args.data.gt_path(name), args.data.palette)]
        panels += [mask_image(os.path.join(d, name + ".png"), args.data.palette) for _, d in dirs]
        cells = "".join(f"<td><img src='{data_uri(p, width)}'></td>" if p is not None else "<td>-</td>"
                        for p in panels)
        rows.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    head = "".join(f"<th>{c}</th>" for c in ["image", "ground truth"] + [f"segmentation, {s}" for s, _ in dirs])
    return (f"<h2>Segmentation network on {html.escape(os.path.basename(args.seg_val_list))}</h2>"
            f"<table class=pics><tr><th>id</th>{head}</tr>{''.join(rows)}</table>")


def write_report(args, path, title, note="", num_pictures=6):
    results = pyutils.load_json(args.results_path, default={})
    eval_list = args.eval_list or args.data.eval_list_path(args.chainer_eval_set)
    names = [n for n in open(eval_list).read().split()][:num_pictures] if os.path.isfile(eval_list) else []
    parts = [f"<h1>{html.escape(title)}</h1>", f"<p class=note>{html.escape(note)}</p>" if note else "",
             results_section(results, args.method, args.dataset), per_class_section(results), timing_section(results),
             pictures_section(args, names), seg_pictures_section(args, num_pictures=num_pictures)]
    for label, p, text in (("Instance pool (stage I pseudo masks, one row per class)",
                            os.path.join(args.pool_dir, "preview.png"), pool_counts(args.pool_dir)),
                           ("CDA samples: originals and their augmented copies", args.cda_samples_path, "")):
        uri = file_uri(p)
        parts.append(f"<h2>{label}</h2>{text}" + (f"<img src='{uri}' class=wide>" if uri else "<p>not written</p>"))
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right} td:first-child{text-align:left}"
             ".paper{color:#777} .note{background:#fff6d5;padding:.6em;border-left:4px solid #e0b000}"
             ".pics img{display:block} img.wide{max-width:100%;image-rendering:pixelated}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    with pyutils.atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(doc)
    return path
