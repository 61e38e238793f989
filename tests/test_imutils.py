import os

import numpy as np
import pytest
from PIL import Image

from misc import imutils
from misc.pyutils import UserError


def test_voc_palette_known_colours():
    pal = imutils.voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    assert tuple(pal[0]) == (0, 0, 0)
    assert tuple(pal[1]) == (128, 0, 0)
    assert tuple(pal[2]) == (0, 128, 0)
    assert tuple(pal[15]) == (192, 128, 128)  # person
    assert tuple(pal[255]) == (224, 224, 192)  # the ignore band
    assert len({tuple(c) for c in pal[:21]}) == 21


def test_label_png_round_trip_keeps_indices(tmp_path):
    label = np.zeros((7, 9), np.uint8)
    label[1:3, 2:5] = 15
    label[4, :] = 255
    label[5, 0] = 20
    path = tmp_path / "sub" / "a.png"
    imutils.save_label_png(str(path), label)
    with Image.open(path) as im:
        assert im.mode == "P"
        assert np.array_equal(np.asarray(im.getpalette(), np.uint8)[:768].reshape(-1, 3)[:21],
                              imutils.voc_palette()[:21])
    assert np.array_equal(imutils.read_label_png(str(path)), label)
    assert os.listdir(path.parent) == ["a.png"]  # no temp file left behind


def test_colorize_matches_palette():
    label = np.array([[0, 1], [255, 20]], np.uint8)
    rgb = imutils.colorize(label)
    assert rgb.shape == (2, 2, 3)
    assert tuple(rgb[1, 0]) == (224, 224, 192)


def test_read_image_errors_and_grey(tmp_path):
    with pytest.raises(UserError, match="not found"):
        imutils.read_image(str(tmp_path / "nope.jpg"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*bad.jpg"):
        imutils.read_image(str(bad))
    grey = tmp_path / "grey.jpg"
    Image.fromarray(np.full((5, 6), 100, np.uint8)).save(grey)
    img = imutils.read_image(str(grey))
    assert img.shape == (5, 6, 3) and img.dtype == np.uint8


def test_read_label_png_rejects_rgb(tmp_path):
    p = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    with pytest.raises(UserError, match="mode RGB"):
        imutils.read_label_png(str(p))


def test_resize_nearest_keeps_label_values_and_float_resize():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 3, 255], np.uint8), size=(10, 12))
    small = imutils.pil_rescale(label, 0.5, 0)
    assert small.shape == (5, 6) and set(np.unique(small)) <= {0, 3, 255}
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert imutils.pil_resize(img, (20, 7), 3).shape == (20, 7, 3)
    assert imutils.pil_resize(img, (10, 12), 3) is img
    f = np.ones((4, 4, 2), np.float32) * 0.25
    out = imutils.pil_resize(f, (8, 6), 1)
    assert out.shape == (8, 6, 2) and out.dtype == np.float32 and np.allclose(out, 0.25)


def test_random_resize_long_range_and_determinism():
    img = np.zeros((30, 40, 3), np.uint8)
    for seed in range(20):
        out = imutils.random_resize_long(img, 20, 60, np.random.default_rng(seed))
        assert 20 <= max(out.shape[:2]) <= 60
        assert out.shape[1] >= out.shape[0]  # keeps the aspect
    a = imutils.random_resize_long(img, 20, 60, np.random.default_rng(5))
    b = imutils.random_resize_long(img, 20, 60, np.random.default_rng(5))
    assert a.shape == b.shape


def test_random_scale_tuple_shares_factor():
    img, lab = np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8)
    a, b = imutils.random_scale((img, lab), (0.5, 1.5), (3, 0), np.random.default_rng(1))
    assert a.shape[:2] == b.shape


def test_flip_tuple_together():
    x = np.arange(12).reshape(3, 4)
    flips = 0
    for seed in range(10):
        a, b = imutils.random_lr_flip((x, x * 2), np.random.default_rng(seed))
        assert np.array_equal(a * 2, b)
        flips += not np.array_equal(a, x)
    assert 0 < flips < 10


def test_random_crop_padding_and_shared_box():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 255, (10, 14, 3)).astype(np.float32)  # no zeros inside the image
    lab = img[..., 0].astype(np.uint8)
    ci, cl = imutils.random_crop((img, lab), 20, (0, 255), rng)
    assert ci.shape == (20, 20, 3) and cl.shape == (20, 20)
    inside = ci[..., 0] != 0
    assert inside.sum() == 10 * 14  # the whole image lands inside, the rest is fill
    assert np.all(cl[~inside] == 255)
    assert np.array_equal(cl[inside], ci[..., 0][inside].astype(np.uint8))  # same box for both
    small = imutils.random_crop(img, 6, 0, rng)  # larger image: a window of it
    assert small.shape == (6, 6, 3) and np.all(small != 0)


def test_top_left_crop():
    img = np.ones((3, 5), np.uint8)
    out = imutils.top_left_crop(img, 4, 255)
    assert np.all(out[:3, :4] == 1) and np.all(out[3] == 255)


def test_normalize_and_chw():
    mean = (np.array(imutils.IMAGENET_MEAN) * 255).astype(np.float32)
    img = np.broadcast_to(mean, (2, 3, 3))
    out = imutils.Normalize()(img)
    assert out.dtype == np.float32 and np.allclose(out, 0, atol=1e-5)
    chw = imutils.HWC_to_CHW(np.fliplr(np.zeros((2, 3, 3), np.float32)))
    assert chw.shape == (3, 2, 3) and chw.flags["C_CONTIGUOUS"]


def test_crf_cleans_two_region_image():
    h, w = 24, 32
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (200, 30, 30)
    img[:, w // 2:] = (30, 30, 200)
    clean = np.zeros((h, w), np.int64)
    clean[:, w // 2:] = 1
    noisy = clean.copy()
    rng = np.random.default_rng(0)
    flip = rng.random((h, w)) < 0.15
    noisy[flip] = 1 - noisy[flip]
    out = imutils.crf_inference_label(img, noisy, t=10, n_labels=2)
    assert out.shape == (h, w)
    assert out.min() >= 0 and out.max() < 2
    assert np.array_equal(out, clean)


def test_crf_labels_in_range_for_more_labels():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (10, 12))
    out = imutils.crf_inference_label(img, labels, t=2, n_labels=3)
    assert out.min() >= 0 and out.max() <= 2
