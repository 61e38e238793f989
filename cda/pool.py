"""The CDA instance pool: pick well-segmented single-class images, cut out their object, store, load.

Knows nothing of the network that produced the masks: any folder of `<id>.png` label masks
(0 background, 1..K class index + 1, 255 ignore) and the matching images will do.

Selection rule (SPEC "CDA: the instance pool"): a mask qualifies when it holds exactly one
foreground class and that class covers between `min_ratio` and `max_ratio` of the image, both
bounds inclusive. The ratio is class pixels / (H * W): 255 (ignore) pixels count in the image area
but never as foreground, because SPEC speaks of the share "of the image".

On disk (`out_dir`):
    <class name>/<id>.png   RGBA crop of the foreground bounding box, alpha 255 on the class pixels
    pool.json               the image list, counts per class, source, thresholds, classes without instances, ids
    preview.png             a few instances per class, one row per class
The reference's paste rotates and resizes the crop's class-valued mask (class index + 1 on the object,
0 elsewhere in the box), so the interpolated values depend on the class. An instance holds one class
and its folder names it, so that mask is exactly (alpha == 255) * (class index + 1): InstancePool
rebuilds it on load, losslessly.
The folder is built beside `out_dir` under a temporary name and renamed into place at the end,
so an interrupted run never leaves a half pool that the training step would trust.
"""
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from misc.pyutils import UserError, load_json, require_dir, save_json

IGNORE = 255


def foreground(mask):
    """Boolean map of foreground pixels: neither background (0) nor ignore (255)."""
    return (mask != 0) & (mask != IGNORE)


def reject_reason(mask, min_ratio=0.1, max_ratio=0.7):
    """Why `mask` stays out of the pool ('no_foreground', 'several_classes', 'too_small',
    'too_large'), or None when it qualifies."""
    fg = foreground(mask)
    n = len(np.unique(mask[fg]))
    if n == 0:
        return "no_foreground"
    if n > 1:
        return "several_classes"
    ratio = fg.sum() / fg.size
    if ratio < min_ratio:
        return "too_small"
    if ratio > max_ratio:
        return "too_large"
    return None


def select_instances(mask, min_ratio=0.1, max_ratio=0.7):
    """Return the 0-based class index when `mask` qualifies for the pool, else None.

    Qualifies: exactly one foreground class, and min_ratio <= class pixels / (H*W) <= max_ratio.
    """
    if reject_reason(mask, min_ratio, max_ratio) is not None:
        return None
    return int(mask[foreground(mask)][0]) - 1


def bounding_box(region):
    """(y0, y1, x0, x1), end-exclusive, of the True pixels of a non-empty boolean map."""
    ys = np.flatnonzero(region.any(axis=1))
    xs = np.flatnonzero(region.any(axis=0))
    return ys[0], ys[-1] + 1, xs[0], xs[-1] + 1


def crop_instance(img, mask):
    """RGBA uint8 crop of the foreground bounding box of `mask`: RGB from `img`, alpha 255 on
    foreground pixels and 0 elsewhere (background, ignore). `mask` may be a label map or a bool map."""
    fg = foreground(np.asarray(mask))
    if not fg.any():
        raise ValueError("crop_instance: mask has no foreground pixel")
    if img.shape[:2] != fg.shape:
        raise ValueError(f"crop_instance: image {img.shape[:2]} and mask {fg.shape} differ in size")
    y0, y1, x0, x1 = bounding_box(fg)
    rgba = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
    rgba[..., :3] = img[y0:y1, x0:x1, :3]
    rgba[..., 3] = np.where(fg[y0:y1, x0:x1], 255, 0)
    return rgba


def _read_mask(path):
    from misc.imutils import read_label_png
    return read_label_png(path)


def _read_image(path):
    from misc.imutils import read_image
    return read_image(path)


def build_pool(ids, mask_dir, image_dir, out_dir, min_ratio=0.1, max_ratio=0.7, class_names=None,
               source=None, image_ext=".jpg", preview_per_class=6, list_path=None):
    """Scan `<mask_dir>/<id>.png` for every id, keep the qualifying ones, write the pool to `out_dir`.

    `image_dir`: the folder of `<id><image_ext>`, or a function id -> image path (a data set whose images are
    spread over folders, as COCO's train2014/ and val2014/).

    `source` is a free word stored in pool.json and used in messages (e.g. 'sem_seg', 'gt'); `list_path`,
    the list file `ids` came from, is recorded there too.
    Returns the pool.json content. Raises UserError on a missing or malformed file and when no
    mask qualifies (an empty pool cannot train anything).
    """
    if class_names is None:
        raise ValueError("build_pool needs class_names: the data set's object classes, in label order")
    class_names = list(class_names)
    if not (0.0 <= min_ratio <= max_ratio <= 1.0):
        raise UserError(f"pool ratios must satisfy 0 <= min <= max <= 1, got min {min_ratio} max {max_ratio}")
    require_dir(mask_dir, "mask folder for the instance pool")
    if not callable(image_dir):
        require_dir(image_dir, "image folder for the instance pool")
    source = source or mask_dir
    ids = list(ids)

    kept = {name: [] for name in class_names}
    rejected = {"no_foreground": 0, "several_classes": 0, "too_small": 0, "too_large": 0}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # the ".tmp" suffix lets the driver recognise (misc.pyutils.TEMP_NAME) and delete it after a kill
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.", suffix=".tmp", dir=parent)
    try:
        for name in tqdm(ids, desc="instance pool", unit="img"):
            mask_path = os.path.join(mask_dir, name + ".png")
            if not os.path.isfile(mask_path):
                raise UserError(f"mask of {name} not found: {mask_path}; rerun the step that writes "
                                f"{mask_dir} on the same list (stage I's make_sem_seg covers --pool_list only "
                                f"when stage II is on), or pick another --pool_source")
            mask = _read_mask(mask_path)
            bad = (mask > len(class_names)) & (mask != IGNORE)
            if bad.any():
                raise UserError(f"{mask_path} holds value {int(mask[bad].max())}, outside 0..{len(class_names)} "
                                f"and 255; it is not a class-index mask")
            why = reject_reason(mask, min_ratio, max_ratio)
            if why is not None:
                rejected[why] += 1
                continue
            cls = select_instances(mask, min_ratio, max_ratio)
            img_path = image_dir(name) if callable(image_dir) else os.path.join(image_dir, name + image_ext)
            img = _read_image(img_path)
            if img.shape[:2] != mask.shape:
                raise UserError(f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {img_path} is "
                                f"{img.shape[1]}x{img.shape[0]}; the masks belong to other images")
            rgba = crop_instance(img, mask)
            cls_dir = os.path.join(tmp_dir, class_names[cls])
            os.makedirs(cls_dir, exist_ok=True)
            Image.fromarray(rgba, "RGBA").save(os.path.join(cls_dir, name + ".png"))
            kept[class_names[cls]].append(name)

        counts = {c: len(v) for c, v in kept.items()}
        total = sum(counts.values())
        if total == 0:
            raise UserError(empty_pool_message(source, mask_dir, min_ratio, max_ratio, len(ids)))
        meta = {
            "source": source,
            "list": list_path,
            "mask_dir": os.path.abspath(mask_dir),
            "image_dir": None if callable(image_dir) else os.path.abspath(image_dir),
            "min_ratio": min_ratio,
            "max_ratio": max_ratio,
            "ratio_rule": "min_ratio <= class pixels / (H*W) <= max_ratio, exactly one foreground class",
            "class_names": class_names,
            "num_masks": len(ids),
            "num_instances": total,
            "counts": counts,
            "classes_without_instances": [c for c in class_names if counts[c] == 0],
            "rejected": rejected,
            "instances": kept,
        }
        save_json(os.path.join(tmp_dir, "pool.json"), meta)
        write_preview(tmp_dir, meta, os.path.join(tmp_dir, "preview.png"), preview_per_class)
        _replace_dir(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return meta


def empty_pool_message(source, mask_dir, min_ratio, max_ratio, num_masks):
    return (f"instance pool is empty: none of the {num_masks} masks of source '{source}' ({mask_dir}) has "
            f"exactly one foreground class covering {min_ratio}..{max_ratio} of the image; try "
            + ("" if source == "gt" else "--pool_source gt or ") + "wider --pool_min_ratio/--pool_max_ratio")


def _replace_dir(new_dir, out_dir):
    """Move the finished folder into place; the old pool is only deleted once the new one is there."""
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.old.", suffix=".tmp",
                               dir=os.path.dirname(os.path.abspath(out_dir)))
        os.rmdir(old)
        os.replace(out_dir, old)
    os.replace(new_dir, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _thumbnail(rgba, cell):
    """Instance composited on grey, fitted in a cell x cell square."""
    im = Image.fromarray(rgba, "RGBA")
    im.thumbnail((cell, cell), Image.BILINEAR)
    canvas = Image.new("RGB", (cell, cell), (128, 128, 128))
    canvas.paste(im, ((cell - im.width) // 2, (cell - im.height) // 2), im)
    return canvas


def write_preview(pool_dir, meta, path, per_class=6, cell=96, label_width=120):
    """One row per class with instances: its name and count, then up to `per_class` instances."""
    rows = [(c, ids) for c, ids in meta["instances"].items() if ids]
    grid = Image.new("RGB", (label_width + per_class * cell, max(1, len(rows)) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, (cls, ids) in enumerate(rows):
        draw.text((4, r * cell + cell // 2 - 6), f"{cls} ({len(ids)})", fill=(0, 0, 0))
        for k, name in enumerate(ids[:per_class]):
            rgba = np.asarray(Image.open(os.path.join(pool_dir, cls, name + ".png")).convert("RGBA"))
            grid.paste(_thumbnail(rgba, cell - 4), (label_width + k * cell + 2, r * cell + 2))
    grid.save(path)


def _class_valued(mask, c):
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return mask.astype(np.uint8) * np.uint8(c + 1)
    if not np.isin(mask, (0, c + 1)).all():
        raise ValueError(f"an instance mask of class index {c} must hold 0 and {c + 1} only")
    return mask.astype(np.uint8)


class InstancePool:
    """Instances grouped by 0-based class index: `instances[c]` is a list of (rgb uint8 HWC, mask uint8 HW)
    where the mask holds c + 1 on the object and 0 elsewhere, as the reference's pool files. Boolean
    masks given to the constructor are turned into that form.

    Built from a pool folder with InstancePool.load(dir), or directly from arrays (tests, other
    sources). Loaded eagerly: a pool is a few hundred small crops, and DataLoader workers share
    the arrays after fork.
    """

    def __init__(self, instances, class_names, meta=None):
        self.class_names = list(class_names)
        self.instances = {int(c): [(rgb, _class_valued(mask, int(c))) for rgb, mask in v]
                          for c, v in instances.items() if len(v) > 0}
        self.meta = meta or {}
        for c in self.instances:
            if not 0 <= c < len(self.class_names):
                raise ValueError(f"class index {c} outside 0..{len(self.class_names) - 1}")

    @property
    def num_classes(self):
        return len(self.class_names)

    def classes_with_instances(self):
        return sorted(self.instances)

    def __len__(self):
        return sum(len(v) for v in self.instances.values())

    def get(self, cls, i):
        return self.instances[cls][i]

    def num_instances(self, cls):
        return len(self.instances.get(cls, ()))

    @classmethod
    def load(cls, pool_dir):
        meta_path = os.path.join(pool_dir, "pool.json")
        meta = load_json(meta_path)
        if meta is None:
            raise UserError(f"instance pool not found: {meta_path}; run the make_instance_pool step first")
        names = meta["class_names"]
        instances = {}
        for c, cname in enumerate(names):
            for name in meta["instances"].get(cname, []):
                path = os.path.join(pool_dir, cname, name + ".png")
                if not os.path.isfile(path):
                    raise UserError(f"pool instance missing: {path}; rerun the make_instance_pool step")
                rgba = np.asarray(Image.open(path).convert("RGBA"))
                instances.setdefault(c, []).append((np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] == 255))
        pool = cls(instances, names, meta)
        if len(pool) == 0:
            raise UserError(empty_pool_message(meta.get("source"), meta.get("mask_dir"), meta.get("min_ratio"),
                                               meta.get("max_ratio"), meta.get("num_masks")))
        return pool
