"""The CDA augmentation: paste instances of classes an image lacks onto it.

A pure function of (image, label vector, pool, generator): nothing global, inputs untouched. It
works on the full image, before any resize/flip/crop (SPEC "CDA: the paste augmentation").
"""
import cv2
import numpy as np
from PIL import Image

BLENDS = ("none", "gaussian")


def _rotate(rgb, mask, angle):
    """Rotate counter-clockwise by `angle` degrees on an expanded canvas; the mask stays hard
    (nearest) so it never gains half-transparent pixels."""
    big = Image.fromarray(rgb).rotate(angle, resample=Image.BILINEAR, expand=True)
    big_mask = Image.fromarray(mask.astype(np.uint8) * 255).rotate(angle, resample=Image.NEAREST, expand=True)
    return np.asarray(big), np.asarray(big_mask) > 127


def _crop_to_mask(rgb, mask):
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return rgb[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1], mask[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def transform_instance(rgb, mask, bg_hw, rng, rotation=(-90, 90), max_size=0.7, scale_jitter=None):
    """Rotate, trim to the object's bounding box and rescale one instance for a background of size bg_hw.

    Scale: shrink (never enlarge) so the object is at most max_size of the background's height and
    width, keeping its aspect ratio. With scale_jitter=(lo, hi) that scale is then multiplied by a
    uniform draw in [lo, hi], which may enlarge it, but never beyond the background itself.
    """
    lo, hi = rotation
    if (lo, hi) != (0, 0):
        angle = rng.uniform(lo, hi)
        r_rgb, r_mask = _rotate(rgb, mask, angle)
        if r_mask.any():  # a one-pixel sliver can vanish under nearest rotation; keep it upright then
            rgb, mask = _crop_to_mask(r_rgb, r_mask)
    H, W = bg_hw
    h, w = mask.shape
    scale = min(1.0, max_size * H / h, max_size * W / w)
    if scale_jitter is not None:
        scale = min(scale * rng.uniform(*scale_jitter), H / h, W / w)
    if scale != 1.0:
        nh, nw = max(1, int(h * scale)), max(1, int(w * scale))
        small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)) > 127
        if not small_mask.any():  # nearest can miss a thin object entirely; any coverage counts then
            small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)) > 0
        rgb = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR))
        mask = small_mask
    return rgb, mask


def paste_instances(img, label, pool, rng, num_instances=1, rotation=(-90, 90), max_size=0.7,
                    blend="none", scale_jitter=None):
    """Paste `num_instances` objects of classes absent from `label` onto `img`.

    img: uint8 HWC RGB. label: (K,) vector, class c present when label[c] > 0. pool: InstancePool.
    Classes are drawn uniformly, without repetition, among absent classes that have instances;
    an instance uniformly within the class; a uniform rotation angle in `rotation`; a uniform
    position where the object fits. blend 'none' replaces pixels under the mask; 'gaussian' mixes
    with a 3x3 Gaussian-blurred mask (sigma 0.8, OpenCV's default for 3x3), softening the seam.

    Returns (aug uint8 HWC, new_label float32 (K,) = label plus the pasted classes, pasted (H, W) uint8
    with class index + 1 where the image was changed, 0 elsewhere; a later instance overwrites an
    earlier one where they overlap). When no absent class has instances, the image and label come
    back unchanged (as copies) and `pasted` is all zero: the caller counts those.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if rotation[0] > rotation[1]:
        raise ValueError(f"rotation range {rotation} is empty")
    out = np.array(img, dtype=np.uint8, copy=True)
    new_label = np.array(label, dtype=np.float32, copy=True)
    pasted = np.zeros(out.shape[:2], np.uint8)
    absent = [c for c in pool.classes_with_instances() if label[c] <= 0]
    if not absent or num_instances < 1:
        return out, new_label, pasted

    H, W = out.shape[:2]
    for c in rng.choice(absent, size=min(num_instances, len(absent)), replace=False):
        c = int(c)
        rgb, mask = pool.get(c, int(rng.integers(pool.num_instances(c))))
        rgb, mask = transform_instance(rgb, mask, (H, W), rng, rotation, max_size, scale_jitter)
        h, w = mask.shape
        y0, x0 = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
        region = out[y0:y0 + h, x0:x0 + w]
        if blend == "none":
            region[mask] = rgb[mask]
            changed = mask
        else:
            alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0, borderType=cv2.BORDER_CONSTANT)[..., None]
            mixed = region.astype(np.float32) * (1 - alpha) + rgb.astype(np.float32) * alpha
            region[:] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
            changed = alpha[..., 0] > 0
        pasted[y0:y0 + h, x0:x0 + w][changed] = c + 1
        new_label[c] = 1.0
    return out, new_label, pasted
