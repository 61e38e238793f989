"""Image helpers: reading, PIL resizing, random flips/crops/colour jitter drawn from a passed-in
generator, block means, VOC palette PNGs and the dense CRFs (IRNet's on label maps, PSA's on scores).

Every random helper takes `rng` (a numpy Generator) so that a data set can give each item its own
stream and results do not depend on how many loader workers there are.
"""
import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from misc.pyutils import UserError, atomic_path

_RESAMPLE = {0: Image.NEAREST, 1: Image.BILINEAR, 3: Image.BICUBIC}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- files

def read_image(path):
    """RGB uint8 HWC; grey or CMYK JPEGs are converted so every image has three channels.

    Complete grey or colour JPEGs are decoded by OpenCV: pixel-identical to PIL (both run libjpeg-turbo
    with its defaults: integer DCT, smooth chroma upsampling; tests/test_speed.py checks it) and about
    twice as fast. The EXIF orientation is ignored, as PIL does. Anything else (CMYK, other formats, a
    file cut short, which OpenCV would pad silently) goes through PIL."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG" and im.mode in ("RGB", "L") and data.rstrip(b"\0")[-2:] == b"\xff\xd9":
                bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
                if bgr is not None and bgr.shape[:2] == (im.height, im.width):
                    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"image not found: {path}; check --data_root and the image list")
    except UnidentifiedImageError:  # its message would name an in-memory buffer, not the file
        raise UserError(f"cannot read image {path}: not an image format PIL knows; replace the file or drop its "
                        "id from the list")
    except (OSError, ValueError, SyntaxError) as e:  # PIL reports truncated/corrupt files this way
        raise UserError(f"cannot read image {path} ({e}); replace the file or drop its id from the list")


def image_size(path):
    """(H, W) of an image file from its header alone (no decoding)."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise UserError(f"image not found: {path}; check --data_root and the image list")
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path} ({e}); replace the file or drop its id from the list")


def read_label_png(path, size=None, num_classes=None):
    """Class-index map (uint8 HW) from a palette or grey PNG; palette indices are the labels.

    Checks on request, as a UserError naming the file: `size` (H, W) of the image the map belongs to;
    `num_classes`: every value lies in 0..num_classes-1 or is 255 (ignore).
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise UserError(f"label PNG {path} has mode {im.mode}; expected a palette (P) or grey (L) "
                                "image of class indices")
            label = np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise UserError(f"label PNG not found: {path}; run the step that writes it first")
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read label PNG {path} ({e}); delete it and rerun the step that wrote it")
    if size is not None and label.shape != tuple(size):
        raise UserError(f"label PNG {path} is {label.shape[1]}x{label.shape[0]} but its image is {size[1]}x{size[0]}; "
                        "it belongs to another image: replace it or rerun the step that wrote it")
    if num_classes is not None:
        bad = (label >= num_classes) & (label != 255)
        if bad.any():
            raise UserError(f"label PNG {path} holds value {int(label[bad].max())}, outside 0..{num_classes - 1} and "
                            "255; it is not a class-index mask: replace it or rerun the step that wrote it")
    return label


def voc_palette():
    """The standard PASCAL VOC colour map: bit k of the index goes to bit 7 - k//3 of channel k%3."""
    idx = np.arange(256)
    pal = np.zeros((256, 3), np.int64)
    for k in range(8 * 3):
        pal[:, k % 3] |= ((idx >> k) & 1) << (7 - k // 3)
    return pal.astype(np.uint8)


def colorize(label, palette=None):
    """RGB uint8 picture of a label map in a data set's colours (default VOC's; 255 = ignore is light beige)."""
    return (voc_palette() if palette is None else palette)[np.asarray(label, dtype=np.uint8)]


def save_label_png(path, label, palette=None):
    """Write a class-index map as a palette PNG (a data set's palette, default VOC's), atomically (temp name,
    then rename)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be HW, got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > 255:
            raise ValueError("label values must lie in 0..255")
        label = label.astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(label))  # mode L
    im.putpalette((voc_palette() if palette is None else palette).tobytes())  # turns it into mode P without touching the indices
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")


# ---------------------------------------------------------------- geometry

def pil_resize(img, size_hw, order):
    """Resize to (h, w) with PIL. order: 0 nearest (labels), 1 bilinear, 3 bicubic (images).

    uint8 arrays go through PIL directly; float arrays are resized channel by channel as 32-bit images.
    """
    h, w = int(size_hw[0]), int(size_hw[1])
    if img.shape[0] == h and img.shape[1] == w:
        return img
    if order == 0 and img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] == 3):
        # OpenCV's exact nearest picks PIL's source pixels (pixel-centre mapping; tests/test_speed.py
        # checks it) and is 2-40x faster. Bilinear and bicubic differ from PIL's (no antialiasing), so stay.
        return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    resample = _RESAMPLE[order]
    if img.dtype == np.uint8:
        return np.array(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), resample))
    chans = img[..., None] if img.ndim == 2 else img
    out = [np.asarray(Image.fromarray(np.ascontiguousarray(chans[..., c], dtype=np.float32))
                      .resize((w, h), resample)) for c in range(chans.shape[-1])]
    out = np.stack(out, axis=-1).astype(img.dtype, copy=False)
    return out[..., 0] if img.ndim == 2 else out


def pil_rescale(img, scale, order):
    h, w = img.shape[:2]
    return pil_resize(img, (max(1, round(h * scale)), max(1, round(w * scale))), order)


def random_resize_long(img, min_long, max_long, rng):
    """Bicubic rescale so the long side is a uniform integer in [min_long, max_long]."""
    target = int(rng.integers(min_long, max_long + 1))
    return pil_rescale(img, target / max(img.shape[:2]), 3)


def random_scale(img, scale_range, order, rng):
    """Rescale by one uniform factor; a tuple of arrays (image, label) shares it, with one order each."""
    s = rng.uniform(scale_range[0], scale_range[1])
    if isinstance(img, tuple):
        return tuple(pil_rescale(m, s, o) for m, o in zip(img, order))
    return pil_rescale(img, s, order)


def random_lr_flip(img, rng):
    """Flip left-right with probability 1/2; a tuple of arrays is flipped together."""
    flip = rng.random() < 0.5
    if isinstance(img, tuple):
        return tuple(np.fliplr(m) if flip else m for m in img)
    return np.fliplr(img) if flip else img


def _crop_offsets(size, crop, rng):
    """(offset in the container, offset in the image) along one axis.

    If the image is longer it is cut at a random place; if shorter it lands at a random place
    inside the container and the rest keeps the fill value.
    """
    space = size - crop
    if space > 0:
        return 0, int(rng.integers(space + 1))
    return int(rng.integers(-space + 1)), 0


def _paste(img, crop, fill, top, left, img_top, img_left):
    out = np.full((crop, crop) + img.shape[2:], fill, dtype=img.dtype)
    ch, cw = min(crop, img.shape[0]), min(crop, img.shape[1])
    out[top:top + ch, left:left + cw] = img[img_top:img_top + ch, img_left:img_left + cw]
    return out


def random_crop(images, cropsize, default_values, rng):
    """Square crop at one random box shared by all arrays; pad with each array's fill value."""
    single = isinstance(images, np.ndarray)
    if single:
        images, default_values = (images,), (default_values,)
    h, w = images[0].shape[:2]
    top, img_top = _crop_offsets(h, cropsize, rng)
    left, img_left = _crop_offsets(w, cropsize, rng)
    out = tuple(_paste(m, cropsize, f, top, left, img_top, img_left) for m, f in zip(images, default_values))
    return out[0] if single else out


def top_left_crop(img, cropsize, default_value):
    """Deterministic crop used for validation: keep the top-left corner, pad the rest."""
    return _paste(img, cropsize, default_value, 0, 0, 0, 0)


def center_crop(img, cropsize, default_value=0):
    """Square crop at the centre (PSA's CenterCrop): a longer side is cut, a shorter one lands in the
    middle of a container of default_value; both offsets are round(space / 2) (Python's round: halves
    go to the even neighbour)."""
    h, w = img.shape[:2]
    top, img_top = (0, int(round((h - cropsize) / 2))) if h > cropsize else (int(round((cropsize - h) / 2)), 0)
    left, img_left = (0, int(round((w - cropsize) / 2))) if w > cropsize else (int(round((cropsize - w) / 2)), 0)
    return _paste(img, cropsize, default_value, top, left, img_top, img_left)


def block_mean(x, size):
    """Mean over size x size blocks of an (H, W) or (H, W, C) array (PSA's AvgPool2d, i.e.
    skimage.measure.block_reduce(x, (size, size, 1), np.mean)): a partial block at the bottom or right
    counts zeros for its missing pixels. Same view of the data and the same np.mean call as that function,
    so float32 sums round identically."""
    x = np.asarray(x)
    block = (size, size) + (1,) * (x.ndim - 2)
    pad = [(0, -n % b) for n, b in zip(x.shape, block)]
    if any(p[1] for p in pad):
        x = np.pad(x, pad, mode="constant", constant_values=0)
    shape = tuple(n // b for n, b in zip(x.shape, block)) + block
    strides = tuple(st * b for st, b in zip(x.strides, block)) + x.strides
    blocks = np.lib.stride_tricks.as_strided(x, shape=shape, strides=strides, writeable=False)
    return np.mean(blocks, axis=tuple(range(x.ndim, 2 * x.ndim)))


def color_jitter_params(rng, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
    """torchvision ColorJitter.get_params with draws from `rng`: (order, factors). order is a permutation
    of (brightness, contrast, saturation, hue) = (0, 1, 2, 3); factors are uniform in [max(0, 1 - v), 1 + v]
    ([-hue, hue] for the hue), None for an argument of 0 (no draw, as torchvision skips it)."""
    order = rng.permutation(4)
    factors = [None if not v else float(rng.uniform(max(0.0, 1 - v), 1 + v))
               for v in (brightness, contrast, saturation)]
    factors.append(None if not hue else float(rng.uniform(-hue, hue)))
    return order, tuple(factors)


def apply_color_jitter(img, order, factors):
    """uint8 HWC RGB through torchvision's PIL adjust_brightness/contrast/saturation/hue in `order`,
    skipping None factors: what ColorJitter does to a PIL image once its parameters are drawn."""
    from torchvision.transforms import functional as TF

    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    for i in order:
        if factors[i] is not None:
            pil = adjust[i](pil, factors[i])
    return np.asarray(pil)


def color_jitter(img, rng, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
    """Random colour jitter of a uint8 HWC RGB image, as torchvision's ColorJitter (random order of the
    four adjustments, factors as color_jitter_params), drawn from `rng`."""
    order, factors = color_jitter_params(rng, brightness, contrast, saturation, hue)
    return apply_color_jitter(img, order, factors)


class Normalize:
    """uint8 RGB -> float32 standardised with ImageNet statistics (what the backbone was trained on)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean = np.asarray(mean, np.float32) * 255.0
        self.std = np.asarray(std, np.float32) * 255.0

    def __call__(self, img):
        return (np.asarray(img, np.float32) - self.mean) / self.std


def HWC_to_CHW(img):
    # contiguous, so torch.from_numpy / default_collate accept it even after a flip
    return np.ascontiguousarray(np.transpose(img, (2, 0, 1)))


# ---------------------------------------------------------------- CRF
# Two backends compute the same dense CRF: "pydensecrf" (the C++ library: CPU, one image per call) and
# "torch" (misc.densecrf: the same lattice and mean field in tensor operations, on the CPU or a GPU, many
# images per call). Their marginals agree to about 1e-5 and their labels on practically every pixel
# (tests/test_densecrf.py). The *_batch functions take lists of images of any sizes; with "torch" they
# refine them all in one call (on `device`), with "pydensecrf" one after the other.

CRF_BACKENDS = ("pydensecrf", "torch")


def resolve_crf_backend(name, device="cpu"):
    """The backend that a --crf_backend value means on `device`: 'auto' is torch on a GPU, else pydensecrf."""
    if name == "auto":
        return "torch" if str(device).startswith("cuda") else "pydensecrf"
    if name not in CRF_BACKENDS:
        raise UserError(f"unknown CRF backend {name!r}; use one of {', '.join(CRF_BACKENDS + ('auto',))}")
    return name


def _crf_terms(gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat):
    return dict(gaussian=dict(sxy=gauss_sxy, compat=gauss_compat),
                bilateral=dict(sxy=bi_sxy, srgb=bi_srgb, compat=bi_compat))


# IRNet's settings on label maps, PSA's on scores (tool/imutils.py of each reference)
LABEL_CRF = _crf_terms(3, 3, 50, 5, 10)


def _psa_crf(scale_factor):
    return _crf_terms(3 / scale_factor, 3, 80 / scale_factor, 13, 10)


def _pydensecrf(img, unary, t, gaussian, bilateral):
    """Marginals (C, H, W) float32 of pydensecrf's DenseCRF2D; unary: (C, H*W) float32 energies."""
    import pydensecrf.densecrf as dcrf

    h, w = img.shape[:2]
    c = unary.shape[0]
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=gaussian["sxy"], compat=gaussian["compat"])
    d.addPairwiseBilateral(sxy=bilateral["sxy"], srgb=bilateral["srgb"], rgbim=np.ascontiguousarray(img),
                           compat=bilateral["compat"])
    return np.asarray(d.inference(t), dtype=np.float32).reshape(c, h, w)


def _as_list(value, n, what):
    """A per-image value: one for all images, or a sequence of n."""
    if np.isscalar(value):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: {len(value)} values for {n} images")
    return value


def _check_backend(backend, n_imgs, n_other, what):
    if backend not in CRF_BACKENDS:
        raise ValueError(f"unknown CRF backend {backend!r}; use one of {CRF_BACKENDS}")
    if n_imgs != n_other:
        raise ValueError(f"dense CRF: {n_imgs} images and {n_other} {what}")


def crf_inference_label_batch(imgs, labels_list, n_labels, t=10, gt_prob=0.7, backend="pydensecrf",
                              device=None):
    """crf_inference_label of each (image, label map) pair: a list of (H, W) int64 label maps.

    n_labels: one number for all images or one per image."""
    from misc import densecrf

    _check_backend(backend, len(imgs), len(labels_list), "label maps")
    n_labels = _as_list(n_labels, len(imgs), "n_labels")
    labels_list = [x if hasattr(x, "shape") else np.asarray(x) for x in labels_list]
    for img, labels, n in zip(imgs, labels_list, n_labels):
        densecrf.check_labels(labels, densecrf.check_image(img), n, gt_prob)
    if backend == "pydensecrf":
        from pydensecrf.utils import unary_from_labels
        out = []
        for img, labels, n in zip(imgs, labels_list, n_labels):
            unary = unary_from_labels(np.asarray(labels).astype(np.int64), n, gt_prob=gt_prob, zero_unsure=False)
            out.append(np.argmax(_pydensecrf(img, unary, t, **LABEL_CRF), axis=0))
        return out
    unaries = [densecrf.unary_from_labels(labels, n, gt_prob, device) for labels, n in zip(labels_list, n_labels)]
    qs = densecrf.dense_crf_batch(imgs, unaries, t, device=device, **LABEL_CRF)
    return [q.argmax(0).cpu().numpy() for q in qs]


def crf_inference_label(img, labels, n_labels, t=10, gt_prob=0.7, backend="pydensecrf", device=None):
    """Refine a hard label map (values 0..n_labels-1) with a dense CRF on the RGB image.

    The labels are trusted with probability gt_prob; a small Gaussian kernel smooths and a wide
    colour-sensitive bilateral kernel snaps regions to image edges (IRNet's settings).
    """
    return crf_inference_label_batch([img], [labels], n_labels, t, gt_prob, backend, device)[0]


def _softmax_crf_batch(imgs, probs_list, t, terms, backend, device):
    """Marginals (C, H, W) float32 of CRFs on softmax probabilities (unary -log(clip(probs, 1e-5, 1)))."""
    from misc import densecrf

    _check_backend(backend, len(imgs), len(probs_list), "score maps")
    probs_list = [p if hasattr(p, "shape") else np.asarray(p) for p in probs_list]
    for img, probs in zip(imgs, probs_list):
        densecrf.check_scores(probs, densecrf.check_image(img), "probabilities")
    if backend == "pydensecrf":
        from pydensecrf.utils import unary_from_softmax
        return [_pydensecrf(img, unary_from_softmax(probs), t, **terms) for img, probs in zip(imgs, probs_list)]
    unaries = [densecrf.unary_from_softmax(probs, device=device) for probs in probs_list]
    return [q.cpu().numpy() for q in densecrf.dense_crf_batch(imgs, unaries, t, device=device, **terms)]


def dense_crf_batch(imgs, probs_list, t=10, gauss_sxy=1, gauss_compat=3, bi_sxy=67, bi_srgb=3, bi_compat=4,
                    backend="pydensecrf", device=None):
    """dense_crf of each (image, probabilities) pair: a list of (C, H, W) float32 marginals."""
    return _softmax_crf_batch(imgs, probs_list, t, _crf_terms(gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat),
                              backend, device)


def dense_crf(img, probs, t=10, gauss_sxy=1, gauss_compat=3, bi_sxy=67, bi_srgb=3, bi_compat=4,
              backend="pydensecrf", device=None):
    """Mean-field marginals (C, H, W) float32 of a dense CRF on softmax probabilities (C, H, W) and a uint8
    (H, W, 3) image: unary -log(clip(probs, 1e-5, 1)), a Gaussian term (gauss_sxy, gauss_compat) and a
    bilateral one (bi_sxy, bi_srgb, bi_compat), t iterations. The defaults are deeplab-pytorch's
    (configs/voc12.yaml: pos_xy_std 1, pos_w 3, bi_xy_std 67, bi_rgb_std 3, bi_w 4, iter_max 10)."""
    return dense_crf_batch([img], [probs], t, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat, backend,
                           device)[0]


def crf_inference_batch(imgs, probs_list, t=10, scale_factor=1, backend="pydensecrf", device=None):
    """crf_inference of each (image, scores) pair: a list of (C, H, W) float32 marginals."""
    return _softmax_crf_batch(imgs, probs_list, t, _psa_crf(scale_factor), backend, device)


def crf_inference(img, probs, labels, t=10, scale_factor=1, backend="pydensecrf", device=None):
    """PSA's dense CRF on score maps: (labels, H, W) float32 marginals after t mean-field steps.

    probs: (labels, H, W) scores, used as a softmax output (unary -log(clip(probs, 1e-5, 1)), whether or
    not they sum to 1); a Gaussian kernel (sxy 3 / scale_factor, compat 3) and a bilateral one
    (sxy 80 / scale_factor, srgb 13, compat 10) on the uint8 RGB image (PSA's tool/imutils.py settings).
    """
    if len(probs) != labels:
        from misc.densecrf import CRFInputError
        raise CRFInputError(f"dense CRF: probs have {len(probs)} labels, expected {labels}")
    return crf_inference_batch([img], [probs], t, scale_factor, backend, device)[0]


def bg_argmax(maps, bg_score):
    """Index map of argmax over [bg_score, maps...] (K, H, W): 0 where no map beats the constant background
    score, else 1 + the winning map. With labels = [0, keys + 1], labels[index] is the VOC label map."""
    scores = np.concatenate([np.full((1,) + maps.shape[1:], bg_score, np.float32), maps])
    return np.argmax(scores, axis=0)
