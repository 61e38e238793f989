"""The CDA augmentation: paste instances of classes an image lacks onto it.

A pure function of (image, label vector, pool, generator): nothing global, inputs untouched. It
works on the full image, before any resize/flip/crop (SPEC "CDA: the paste augmentation").

Two geometries:
- 'reference' (default): CDA's own functions of misc/imutils.py, pixel for pixel. data_aug_rotation
  (integer angle, cubic-spline rotation of the crop and of its class-valued mask on an expanded,
  untrimmed canvas, the 0.7 shrink of that canvas, bilinear resize of both, region = resized mask != 0);
  with scale jitter data_aug (no rotation, shrink times a factor in [0.8, 1.2)); with blending
  data_aug_rotation_blur. `paste_with` is one such paste with explicit draws.
- 'trimmed' (ours, earlier versions of this project): real-valued angle, bilinear rotation with a
  nearest-neighbour binary mask, canvas trimmed to the object before the shrink (objects up to 1.4x
  larger than the reference's), optional blending with a constant-border Gaussian alpha.
"""
import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

BLENDS = ("none", "gaussian")
GEOMETRIES = ("reference", "trimmed")
SCALE_JITTER = (0.8, 1.2)  # data_aug: random.random() * 0.4 + 0.8


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


def transform_instance_trimmed(rgb, mask, bg_hw, rng, rotation=(-90, 90), max_size=0.7, scale_jitter=None):
    """Ours ('trimmed'): rotate, trim to the object's bounding box and rescale one instance for a
    background of size bg_hw. `mask` is boolean.

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


# ---------------------------------------------------------------- the reference geometry (CDA misc/imutils.py)

def rotate_reference(rgb, mask, angle):
    """scipy.ndimage.rotate(x, angle) of the crop and of its class-valued mask, as data_aug_rotation:
    cubic spline (order 3), canvas expanded to hold the rotated box (reshape=True), zeros outside,
    results cast back to uint8. The canvas is not trimmed."""
    return ndimage.rotate(rgb, angle), ndimage.rotate(mask, angle)


def shrink_size(hw, bg_hw, max_size=0.7, factor=None):
    """The reference's target size (int(h), int(w)) of a canvas of size hw on a background bg_hw.

    Keeps the aspect ratio r = w / h: first the height is capped at max_size * H, then the width at
    max_size * W (recomputing the height); data_aug then multiplies both by `factor`. Truncation, as
    the reference's int(). Products are written in the reference's operand order, so they round alike.
    """
    H, W = bg_hw
    h, w = float(hw[0]), float(hw[1])
    r = w / h
    if H * max_size < h:
        h = H * max_size
        w = h * r
    if W * max_size < w:
        w = W * max_size
        h = w / r
    if factor is not None:
        h, w = h * factor, w * factor
    return int(h), int(w)


def resize_reference(x, size):
    """scipy.misc.imresize(x, (h, w)) of the reference: a uint8 array through PIL's bilinear resize
    (imresize left uint8 data unscaled; 'L' mode for the 2-D mask, 'RGB' for the crop). Applied even
    when the size does not change, as the reference does."""
    h, w = size
    return np.asarray(Image.fromarray(np.ascontiguousarray(x)).resize((w, h), Image.BILINEAR))


def place_reference(img, rgb, mask, row, col, blend="none"):
    """Paste a resized instance at (row, col) into `img` in place; returns the changed region (bool, HxW
    of the instance). 'none': pixels where mask != 0 are replaced (the interpolated rim included).
    'gaussian' is data_aug_rotation_blur: alpha = GaussianBlur(255 on mask != 0) / 255 over the whole box
    and the blended float result assigned into the uint8 image (truncation, as numpy casts)."""
    h, w = mask.shape
    H, W = img.shape[:2]
    if not (0 <= row <= H - h and 0 <= col <= W - w):
        raise ValueError(f"an instance of {h}x{w} at ({row}, {col}) does not fit an image of {H}x{W}")
    region = img[row:row + h, col:col + w]
    if blend == "none":
        sel = mask != 0
        region[sel] = rgb[sel]
        return sel
    seg = np.where(mask != 0, 255, 0).astype(np.uint8)
    # The reference's call, argument for argument: GaussianBlur(seg, (3, 3), 0, 0, cv2.BORDER_DEFAULT).
    # OpenCV's Python signature is (src, ksize, sigmaX, dst, sigmaY, borderType): 0 lands in dst and
    # BORDER_DEFAULT (4) in sigmaY. Passed by keyword here, with the values that call gives.
    alpha = cv2.GaussianBlur(seg, (3, 3), sigmaX=0, sigmaY=cv2.BORDER_DEFAULT) / 255
    alpha = alpha[..., None]
    region[:] = alpha * rgb + (1 - alpha) * region
    return alpha[..., 0] > 0


def paste_with(img, inst_rgb, inst_mask, angle, row, col, max_size=0.7, factor=None, blend="none"):
    """One reference paste with explicit draws; returns the augmented uint8 HxWx3 image (img untouched).

    inst_rgb: uint8 hxwx3 crop; inst_mask: uint8 hxw holding class index + 1 on the object, 0 elsewhere.
    angle: int degrees, or None for no rotation (data_aug). (row, col): top-left corner of the resized
    canvas; a position where it does not fit raises ValueError. With the defaults this is
    data_aug_rotation; factor=f and angle=None is data_aug; blend='gaussian' is data_aug_rotation_blur.
    """
    out = np.array(img, dtype=np.uint8, copy=True)
    rgb, mask = _reference_instance(inst_rgb, inst_mask, angle, out.shape[:2], max_size, factor)
    place_reference(out, rgb, mask, row, col, blend)
    return out


def _reference_instance(rgb, mask, angle, bg_hw, max_size, factor):
    if angle is not None:
        rgb, mask = rotate_reference(rgb, mask, angle)
    # data_aug's factor (< 1.2) on a canvas of at most 0.7 of each side stays within the image; only a
    # --cda_max_size above 0.83 could push it past, and the clip below then keeps it inside
    size = shrink_size(mask.shape, bg_hw, max_size, factor)
    size = (min(max(1, size[0]), bg_hw[0]), min(max(1, size[1]), bg_hw[1]))
    return resize_reference(rgb, size), resize_reference(mask, size)


# ---------------------------------------------------------------- sampling

def paste_instances(img, label, pool, rng, num_instances=1, rotation=(-90, 90), max_size=0.7,
                    blend="none", scale_jitter=None, geometry="reference"):
    """Paste `num_instances` objects of classes absent from `label` onto `img`.

    img: uint8 HWC RGB. label: (K,) vector, class c present when label[c] > 0. pool: InstancePool.
    Draws, in the reference's order: a class uniformly among absent classes that have instances
    (without repetition when several are pasted; the reference draws among all absent classes and
    crashes on one without instances), an instance uniformly within it, then the geometry, then a
    uniform position where the canvas fits (both ends inclusive).

    geometry 'reference': with scale_jitter None, an integer angle uniform in `rotation` (inclusive,
    random.randint); with scale_jitter (lo, hi), no rotation and a factor uniform in [lo, hi)
    (data_aug). blend 'gaussian' gives data_aug_rotation_blur (not combinable with scale_jitter: the
    reference has no such function). geometry 'trimmed': ours, see transform_instance_trimmed.

    Returns (aug uint8 HWC, new_label float32 (K,) = label plus the pasted classes, pasted (H, W) uint8
    with class index + 1 where the image was changed, 0 elsewhere; a later instance overwrites an
    earlier one where they overlap). When no absent class has instances, the image and label come
    back unchanged (as copies) and `pasted` is all zero: the caller counts those.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if rotation[0] > rotation[1]:
        raise ValueError(f"rotation range {rotation} is empty")
    if geometry == "reference" and blend != "none" and scale_jitter is not None:
        raise ValueError("the reference has no paste with both scale jitter and blending (data_aug or "
                         "data_aug_rotation_blur): pick one, or geometry 'trimmed'")
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
        if geometry == "reference":
            if scale_jitter is None:
                angle, factor = int(rng.integers(int(rotation[0]), int(rotation[1]) + 1)), None
            else:
                angle, factor = None, float(rng.uniform(*scale_jitter))
            rgb, mask = _reference_instance(rgb, mask, angle, (H, W), max_size, factor)
            h, w = mask.shape
            y0, x0 = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
            changed = place_reference(out, rgb, mask, y0, x0, blend)
        else:
            rgb, mask = transform_instance_trimmed(rgb, mask > 0, (H, W), rng, rotation, max_size, scale_jitter)
            h, w = mask.shape
            y0, x0 = int(rng.integers(H - h + 1)), int(rng.integers(W - w + 1))
            changed = _place_trimmed(out, rgb, mask, y0, x0, blend)
        pasted[y0:y0 + h, x0:x0 + w][changed] = c + 1
        new_label[c] = 1.0
    return out, new_label, pasted


def _place_trimmed(img, rgb, mask, y0, x0, blend):
    h, w = mask.shape
    region = img[y0:y0 + h, x0:x0 + w]
    if blend == "none":
        region[mask] = rgb[mask]
        return mask
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (3, 3), 0, borderType=cv2.BORDER_CONSTANT)[..., None]
    mixed = region.astype(np.float32) * (1 - alpha) + rgb.astype(np.float32) * alpha
    region[:] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return alpha[..., 0] > 0
