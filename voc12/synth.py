"""A toy PASCAL VOC devkit: small synthetic pictures with the real folder layout, so every loader
and step runs on it unchanged, in minutes on a CPU.

Each class has its own shape, colour and texture, and a home background (sky, water, grass, ...).
With probability `context_bias` an object is drawn on its home; otherwise on a background drawn
uniformly from all of them (so context_bias 0 gives unbiased data). A classifier trained on biased
data can score a class by its background alone: the failure CDA is meant to correct.

    python -m voc12.synth --out data/toy_voc --num_images 300 --size 160x120 --seed 0

writes DIR/{JPEGImages,Annotations,SegmentationClass,ImageSets/Segmentation} plus DIR/train_aug.txt
(training ids), DIR/train.txt (evaluation ids, a subset of train_aug as in VOC), DIR/val.txt,
optionally DIR/heldout.txt (unbiased extra images), DIR/cls_labels.txt and DIR/synth.json.
Same arguments, same bytes.
"""
import argparse
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from misc import imutils
from misc.pyutils import UserError, atomic_path, save_bytes, save_json, save_lines
from voc12 import CAT_LIST, CAT_NAME_TO_IDX

# ---------------------------------------------------------------- shapes, in a [-1, 1]^2 box (v points down)


def _box(u, v, x0, x1, y0, y1):
    return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)


def _disc(u, v, cx, cy, r):
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def _ring(u, v, cx, cy, r0, r1):
    d2 = (u - cx) ** 2 + (v - cy) ** 2
    return (d2 >= r0 * r0) & (d2 <= r1 * r1)


def _star(u, v):
    r, phi = np.hypot(u, v), np.arctan2(v, u) + np.pi / 2
    tri = np.abs(((5 * phi / (2 * np.pi)) % 1.0) * 2 - 1)  # 1 at the points, 0 between them
    return r <= 0.42 + 0.58 * tri


def _flower(u, v):
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    return r <= 0.6 + 0.4 * np.cos(6 * phi)


def _ear(u, v, cx):
    return (v >= -1) & (v <= -0.2) & (np.abs(u - cx) <= 0.35 * (v + 1) / 0.8)


# class -> (shape(u, v) -> bool mask, width/height aspect of its box)
SHAPES = {
    "aeroplane": (lambda u, v: _box(u, v, -1, 1, -0.15, 0.15)
                  | ((np.abs(v) <= 0.95) & (u <= 0.3 - 0.45 * np.abs(v)) & (u >= -0.05 - 0.45 * np.abs(v)))
                  | _box(u, v, -1, -0.75, -0.45, 0.45), 1.5),
    "bicycle": (lambda u, v: _ring(u, v, -0.52, 0.1, 0.28, 0.46) | _ring(u, v, 0.52, 0.1, 0.28, 0.46)
                | _box(u, v, -0.52, 0.52, -0.1, 0.08), 1.6),
    "bird": (lambda u, v: (np.abs(v - (0.35 - 0.7 * np.abs(u))) <= 0.24) & (np.abs(u) <= 1), 1.6),
    "boat": (lambda u, v: ((v >= 0.35) & (v <= 0.9) & (np.abs(u) <= 1 - 0.6 * (v - 0.35) / 0.55))
             | ((v >= -1) & (v <= 0.3) & (u >= -0.05) & (u <= -0.05 + 0.85 * (v + 1) / 1.3)), 1.2),
    "bottle": (lambda u, v: _box(u, v, -0.45, 0.45, -0.25, 1) | _box(u, v, -0.17, 0.17, -1, -0.25)
               | _disc(u, v, 0, -0.25, 0.45), 0.55),
    "bus": (lambda u, v: _box(u, v, -1, 1, -0.8, 0.8)
            & ~(_box(u, v, -0.9, 0.9, -0.55, -0.05) & (((u + 1) * 3) % 1.0 > 0.2)), 1.6),
    "car": (lambda u, v: _box(u, v, -1, 1, -0.1, 0.55)
            | ((v >= -0.75) & (v <= -0.1) & (np.abs(u) <= 0.4 + 0.25 * (v + 0.75) / 0.65))
            | _disc(u, v, -0.6, 0.6, 0.3) | _disc(u, v, 0.6, 0.6, 0.3), 1.7),
    "cat": (lambda u, v: _disc(u, v, 0, 0.2, 0.8) | _ear(u, v, -0.5) | _ear(u, v, 0.5), 1.0),
    "chair": (lambda u, v: _box(u, v, -0.8, -0.45, -1, 0.1) | _box(u, v, -0.8, 0.8, -0.05, 0.2)
              | _box(u, v, -0.8, -0.6, 0.2, 1) | _box(u, v, 0.6, 0.8, 0.2, 1), 0.8),
    "cow": (lambda u, v: u * u + v * v <= 1, 1.6),
    "diningtable": (lambda u, v: _box(u, v, -1, 1, -0.7, -0.35) | _box(u, v, -0.9, -0.7, -0.35, 1)
                    | _box(u, v, 0.7, 0.9, -0.35, 1), 1.5),
    "dog": (lambda u, v: (np.abs(v) <= 1) & (np.abs(v) <= 2 * (1 - np.abs(u))), 1.15),
    "horse": (lambda u, v: _disc(u, v, 0, 0, 1) & ~_disc(u, v, 0.45, -0.1, 0.8), 1.0),
    "motorbike": (lambda u, v: (np.abs(u - v) <= 0.35) | (np.abs(u + v) <= 0.35), 1.2),
    "person": (lambda u, v: _disc(u, v, 0, -0.68, 0.32) | _box(u, v, -0.4, 0.4, -0.35, 1), 0.5),
    "pottedplant": (_flower, 1.0),
    "sheep": (lambda u, v: _disc(u, v, -0.55, 0.2, 0.45) | _disc(u, v, 0, -0.2, 0.55) | _disc(u, v, 0.55, 0.2, 0.45)
              | _disc(u, v, -0.2, 0.5, 0.45) | _disc(u, v, 0.25, 0.5, 0.45), 1.4),
    "sofa": (lambda u, v: _box(u, v, -1, 1, 0.3, 0.9) | _box(u, v, -1, -0.6, -0.7, 0.9)
             | _box(u, v, 0.6, 1, -0.7, 0.9), 1.5),
    "train": (_star, 1.0),
    "tvmonitor": (lambda u, v: (_box(u, v, -1, 1, -1, 0.7) & ~_box(u, v, -0.75, 0.75, -0.75, 0.45))
                  | _box(u, v, -0.3, 0.3, 0.7, 1), 1.3),
}

COLOURS = {
    "aeroplane": (230, 230, 235), "bicycle": (30, 30, 160), "bird": (240, 140, 20), "boat": (200, 30, 30),
    "bottle": (40, 160, 90), "bus": (250, 210, 0), "car": (30, 120, 230), "cat": (110, 110, 115),
    "chair": (150, 60, 20), "cow": (60, 35, 20), "diningtable": (180, 120, 60), "dog": (200, 170, 120),
    "horse": (130, 60, 40), "motorbike": (20, 20, 20), "person": (230, 60, 150), "pottedplant": (20, 110, 20),
    "sheep": (245, 245, 240), "sofa": (120, 40, 140), "train": (0, 150, 150), "tvmonitor": (40, 40, 50),
}

TEXTURES = {
    "aeroplane": "solid", "bicycle": "solid", "bird": "stripes", "boat": "hstripes", "bottle": "solid",
    "bus": "hstripes", "car": "solid", "cat": "stripes", "chair": "checker", "cow": "dots",
    "diningtable": "hstripes", "dog": "noise", "horse": "solid", "motorbike": "checker", "person": "stripes",
    "pottedplant": "dots", "sheep": "noise", "sofa": "checker", "train": "stripes", "tvmonitor": "dots",
}

HOMES = {
    "sky": ("aeroplane", "bird"), "water": ("boat",), "grass": ("cow", "horse", "sheep"),
    "road": ("bicycle", "bus", "car", "motorbike"), "rails": ("train",),
    "tiles": ("chair", "diningtable", "sofa", "tvmonitor"), "wood": ("cat", "dog"),
    "wall": ("bottle", "pottedplant"), "sand": ("person",),
}
HOME_OF = {c: bg for bg, cs in HOMES.items() for c in cs}
BACKGROUNDS = tuple(HOMES)
assert sorted(HOME_OF) == sorted(CAT_LIST) == sorted(SHAPES) == sorted(COLOURS) == sorted(TEXTURES)


def _pattern(kind, u, v, rng):
    """Texture in the object's own coordinates, in [0, 1] (0 = base colour, 1 = darker)."""
    f = 3 + 2 * rng.random()
    if kind == "stripes":
        return (np.sin(np.pi * f * u) > 0).astype(np.float32)
    if kind == "hstripes":
        return (np.sin(np.pi * f * v) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u * f) + np.floor(v * f)) % 2).astype(np.float32)
    if kind == "dots":
        return ((((u * f) % 1 - 0.5) ** 2 + ((v * f) % 1 - 0.5) ** 2) < 0.08).astype(np.float32)
    if kind == "noise":
        return rng.random(u.shape).astype(np.float32)
    return np.zeros(u.shape, np.float32)


# ---------------------------------------------------------------- backgrounds (float RGB 0..255)


def _smooth_noise(rng, h, w, cells):
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.random((cells, max(2, cells * w // h))).astype(np.float32)
    return imutils.pil_resize(grid, (h, w), 1)


def _mix(a, b, t):
    """Per-pixel blend of two colours by t (HW) -> HW3."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a + (b - a) * t[..., None]


def _background(kind, h, w, rng):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    fine = rng.random((h, w)).astype(np.float32)
    if kind == "sky":
        img = _mix((70, 130, 220), (175, 210, 245), y / h)
        cloud = np.clip((_smooth_noise(rng, h, w, 4) - 0.55) * 4, 0, 1)
        return img + (245 - img) * cloud[..., None]
    if kind == "water":
        wave = np.sin(2 * np.pi * (y / 7 + 0.25 * np.sin(2 * np.pi * x / 37 + 6 * rng.random())))
        return _mix((15, 60, 120), (60, 120, 180), 0.5 + 0.4 * wave)
    if kind == "grass":
        return _mix((30, 90, 20), (110, 180, 60), 0.6 * fine + 0.4 * _smooth_noise(rng, h, w, 6))
    if kind == "road":
        img = _mix((70, 70, 75), (120, 120, 125), fine)
        y0 = rng.uniform(0.3, 0.7) * h
        dash = (np.abs(y - y0) < 1.5) & ((x + rng.integers(12)) // 12 % 2 == 0)
        img[dash] = (240, 240, 230)
        return img
    if kind == "rails":
        img = _mix((95, 85, 75), (150, 135, 120), fine)
        y0 = rng.uniform(0.3, 0.5) * h
        y1 = y0 + 0.3 * h
        img[((x + rng.integers(10)) % 10 < 3) & (y > y0 - 3) & (y < y1 + 3)] = (100, 65, 35)
        img[(np.abs(y - y0) < 1.5) | (np.abs(y - y1) < 1.5)] = (195, 195, 205)
        return img
    if kind == "tiles":
        step = int(rng.integers(12, 20))
        img = _mix((215, 200, 170), (195, 180, 150), ((x // step + y // step) % 2).astype(np.float32))
        img[(x % step < 1) | (y % step < 1)] = (140, 130, 115)
        return img
    if kind == "wood":
        grain = 0.5 + 0.5 * np.sin(x / 2.5 + 3 * _smooth_noise(rng, h, w, 3))
        img = _mix((120, 75, 40), (170, 115, 65), 0.7 * grain + 0.3 * fine)
        img[(y + rng.integers(10)) % 10 < 1] = (70, 40, 20)
        return img
    if kind == "wall":
        img = _mix((225, 220, 205), (240, 235, 225), _smooth_noise(rng, h, w, 5))
        img[y > rng.uniform(0.6, 0.75) * h] = (115, 115, 125)
        return img
    if kind == "sand":
        ripple = 0.5 + 0.5 * np.sin((x + 0.4 * y) / 3.0)
        return _mix((200, 170, 115), (235, 210, 160), 0.5 * ripple + 0.5 * fine)
    raise ValueError(kind)


# ---------------------------------------------------------------- one picture


def _place(cls, h, w, grid, size_range, rng):
    """Random pose of one object: its mask and its local coordinates (u, v)."""
    shape, aspect = SHAPES[cls]
    y, x = grid
    hy = rng.uniform(*size_range) * h / 2
    hx = hy * aspect * rng.uniform(0.85, 1.15)
    if hx > 0.98 * w / 2:  # too wide: shrink both, keep the shape
        hy, hx = hy * 0.98 * w / 2 / hx, 0.98 * w / 2
    cx, cy = rng.uniform(hx, w - hx), rng.uniform(hy, h - hy)
    a = rng.uniform(-0.3, 0.3)  # a small tilt, so shapes are not pixel-identical templates
    c, s = np.cos(a), np.sin(a)
    u = (c * (x - cx) + s * (y - cy)) / hx
    v = (-s * (x - cx) + c * (y - cy)) / hy
    mask = (np.abs(u) <= 1) & (np.abs(v) <= 1) & shape(u, v)
    return mask, u, v


def _objects(classes, h, w, grid, rng):
    """Masks (visible parts, later objects in front) of 1 or 2 objects; total 10-60 % of the image."""
    n = 2 if len(classes) > 1 and rng.random() < 0.25 else 1
    picked = [str(c) for c in rng.choice(classes, size=n, replace=False)]
    size_range = (0.5, 1.0) if n == 1 else (0.35, 0.7)
    for _ in range(50):  # rejection sampling; a handful of tries is typical
        placed = [_place(c, h, w, grid, size_range, rng) for c in picked]
        visible, covered = [], np.zeros((h, w), bool)
        for mask, _, _ in reversed(placed):
            visible.insert(0, mask & ~covered)
            covered |= mask
        frac = covered.mean()
        if 0.10 <= frac <= 0.60 and all(m.mean() >= 0.04 for m in visible):
            break
    # if every try failed, drop an object hidden behind the other so labels match the pixels
    keep = [i for i, m in enumerate(visible) if m.any()]
    return [picked[i] for i in keep], [placed[i] for i in keep], [visible[i] for i in keep]


def _morph(mask, r, grow):
    """Square dilation (grow) or erosion of a bool mask by r pixels, with array shifts."""
    m = mask if grow else ~mask
    p = np.pad(m, r, constant_values=False)
    out = np.zeros_like(m)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
    return out if grow else ~out


def render(classes, size, context_bias, rng):
    """One image: uint8 HWC RGB, uint8 HW label (255 boundary band), class names, their visible
    masks and the background's name."""
    w, h = size
    grid = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    picked, placed, visible = _objects(classes, h, w, grid, rng)
    home = HOME_OF[picked[0]]
    background = home if rng.random() < context_bias else str(rng.choice(BACKGROUNDS))
    img = _background(background, h, w, rng)
    label = np.zeros((h, w), np.uint8)
    for cls, (mask, u, v), vis in zip(picked, placed, visible):
        colour = np.asarray(COLOURS[cls], np.float32) + rng.uniform(-20, 20, 3)
        shade = 1 - 0.35 * _pattern(TEXTURES[cls], u, v, rng)
        img[mask] = colour * shade[mask][:, None]
        label[vis] = CAT_NAME_TO_IDX[cls] + 1
    r = max(1, round(min(h, w) / 100))  # VOC marks ~5 px at 500 px; scale that down
    band, cores = np.zeros((h, w), bool), np.zeros((h, w), bool)
    for vis in visible:
        core = _morph(vis, r, False)
        core = core if core.any() else vis  # a very thin object keeps its pixels; its band lies outside
        band |= _morph(vis, r, True) & ~core
        cores |= core
    label[band & ~cores] = 255
    img = img + rng.normal(0, 4, img.shape)  # sensor noise, so flat regions are not exactly flat
    return np.clip(img, 0, 255).astype(np.uint8), label, picked, visible, background


# ---------------------------------------------------------------- files


def _annotation_xml(name, size, picked, visible):
    w, h = size
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = name + ".jpg"
    sz = ET.SubElement(root, "size")
    for tag, val in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    ET.SubElement(root, "segmented").text = "1"
    for cls, vis in zip(picked, visible):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cls
        for tag, val in (("pose", "Unspecified"), ("truncated", 0), ("difficult", 0)):
            ET.SubElement(obj, tag).text = str(val)
        ys, xs = np.nonzero(vis)
        box = ET.SubElement(obj, "bndbox")  # VOC boxes are 1-based and inclusive
        corners = (("xmin", xs.min()), ("ymin", ys.min()), ("xmax", xs.max()), ("ymax", ys.max()))
        for tag, val in corners:
            ET.SubElement(box, tag).text = str(int(val) + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def write_devkit(out, num_images, size=(160, 120), seed=0, classes=None, context_bias=0.9,
                 num_heldout=0, val_fraction=0.2, train_fraction=0.5, jpeg_quality=90, progress=True):
    """Write a toy devkit into `out` and return its path.

    num_images are split into train_aug (training) and val (last val_fraction); train.txt, where CAMs
    and pseudo masks are evaluated, is the first train_fraction of train_aug. num_heldout extra
    images with context_bias 0 go to heldout.txt. Image i is drawn from its own generator
    (seed, split, i), so adding held-out images does not change the others.
    """
    from tqdm import tqdm

    classes = list(CAT_LIST) if not classes else list(classes)
    unknown = [c for c in classes if c not in CAT_NAME_TO_IDX]
    if unknown:
        raise UserError(f"unknown class '{unknown[0]}' in --classes; choose from {', '.join(CAT_LIST)}")
    classes = [c for c in CAT_LIST if c in set(classes)]  # canonical order, no duplicates
    check_toy_args(num_images, context_bias, size)
    w, h = size

    for sub in ("JPEGImages", "Annotations", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)

    jobs = [(f"2007_{i:06d}", 0, i, context_bias) for i in range(num_images)]
    jobs += [(f"2008_{i:06d}", 1, i, 0.0) for i in range(num_heldout)]
    cls_lines, backgrounds = [], {}
    for name, split, i, bias in tqdm(jobs, desc="synth", disable=not progress):
        rng = np.random.default_rng([seed, split, i])
        img, label, picked, visible, bg = render(classes, (w, h), bias, rng)
        with atomic_path(os.path.join(out, "JPEGImages", name + ".jpg")) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=jpeg_quality)
        imutils.save_label_png(os.path.join(out, "SegmentationClass", name + ".png"), label)
        save_bytes(os.path.join(out, "Annotations", name + ".xml"), _annotation_xml(name, (w, h), picked, visible))
        cls_lines.append(name + " " + " ".join(c for c in CAT_LIST if c in picked))
        backgrounds[name] = {"background": bg, "home": bg == HOME_OF[picked[0]]}

    names = [j[0] for j in jobs]
    n_val = min(num_images - 1, max(1, round(num_images * val_fraction)))
    train_aug, val = names[:num_images - n_val], names[num_images - n_val:num_images]
    train = train_aug[:max(1, round(len(train_aug) * train_fraction))]
    for fname, ids in (("train_aug.txt", train_aug), ("train.txt", train), ("val.txt", val)):
        save_lines(os.path.join(out, fname), ids)
    save_lines(os.path.join(out, "ImageSets", "Segmentation", "train.txt"), train)
    save_lines(os.path.join(out, "ImageSets", "Segmentation", "val.txt"), val)
    if num_heldout:
        save_lines(os.path.join(out, "heldout.txt"), names[num_images:])
    save_lines(os.path.join(out, "cls_labels.txt"), cls_lines)
    save_json(os.path.join(out, "synth.json"), {
        "seed": seed, "size": [w, h], "num_images": num_images, "num_heldout": num_heldout,
        "classes": classes, "context_bias": context_bias, "homes": {c: HOME_OF[c] for c in CAT_LIST},
        "images": backgrounds,
    })
    return out


def check_toy_args(num_images, context_bias, size):
    """The checks every toy writer makes (this one and coco14.synth's): a UserError for the first bad value."""
    if num_images < 2:
        raise UserError(f"--num_images must be at least 2 (one training and one val image), got {num_images}")
    if not 0.0 <= context_bias <= 1.0:
        raise UserError(f"--context_bias must lie in [0, 1], got {context_bias}")
    w, h = size
    if w < 16 or h < 16:
        raise UserError(f"--size {w}x{h} is too small; use at least 16x16")


def parse_size(text):
    try:
        w, h = (int(t) for t in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, e.g. 160x120, got {text!r}")
    return w, h


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a toy PASCAL VOC devkit with context-biased objects.")
    p.add_argument("--out", required=True, help="devkit folder to write (created if missing)")
    p.add_argument("--num_images", type=int, default=300)
    p.add_argument("--size", type=parse_size, default=(160, 120), help="WIDTHxHEIGHT, e.g. 160x120")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--context_bias", type=float, default=0.9,
                   help="probability that an object sits on its home background (0 = unbiased)")
    p.add_argument("--classes", default="", help="comma-separated subset of the 20 VOC classes (default all)")
    p.add_argument("--num_heldout", type=int, default=0, help="extra unbiased images listed in heldout.txt")
    p.add_argument("--val_fraction", type=float, default=0.2)
    p.add_argument("--train_fraction", type=float, default=0.5, help="share of train_aug listed in train.txt")
    args = p.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    write_devkit(args.out, args.num_images, args.size, args.seed, classes, args.context_bias,
                 args.num_heldout, args.val_fraction, args.train_fraction)
    print(f"wrote toy devkit: {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
