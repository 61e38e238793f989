"""Every speed-up gives the straightforward path's results: batched make_cam, persistent loader workers,
the cam_to_ir_label process pool, OpenCV JPEG decoding and nearest resizing."""
import argparse
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from misc import cams, config, imutils, pyutils, stages, training
from misc.datasets import as_data
from misc.pyutils import UserError
from net import resnet50_cam
from step import cam_to_ir_label, make_cam
from voc12.dataloader import load_cls_labels, load_img_name_list

# ---------------------------------------------------------------- make_cam


@pytest.fixture(scope="module")
def cam_net():
    torch.manual_seed(0)
    return resnet50_cam.CAM(20).eval()


def test_batched_cams_equal_per_scale_path(cam_net):
    size, scales, n = (32, 40), (1.0, 0.5, 1.5), 3
    gen = torch.Generator().manual_seed(1)
    per_scale = []  # per scale (n, 2, 3, h, w): each image and its mirror, as VOC12ClassificationDatasetMSF
    for s in scales:
        x = torch.randn(n, 3, round(size[0] * s), round(size[1] * s), generator=gen)
        per_scale.append(torch.stack([x, x.flip(-1)], 1))
    keys = [torch.tensor([0, 5]), torch.tensor([19]), torch.arange(20)]
    with torch.inference_mode():
        batched = make_cam.cams_for_batch(cam_net, per_scale, size, keys, "cpu")
        for i in range(n):
            want = make_cam.cams_for_image(cam_net, [p[i] for p in per_scale], size, keys[i], "cpu")
            for got, ref in zip(batched[i], want):
                assert got.shape == ref.shape
                assert ref.abs().max() > 0.5  # maps normalised to a maximum near 1, not all zero
                assert (got - ref).abs().max() <= 1e-3 * ref.abs().max()


def _step_args(devkit, work, *flags):
    """A step's stage I namespace as the driver resolves it, on the tiny devkit's train list."""
    d = str(devkit)
    argv = ["--voc12_root", d, "--train_list", f"{d}/train.txt", "--val_list", f"{d}/val.txt",
            "--cls_labels", f"{d}/cls_labels.txt", "--work_dir", str(work), "--device", "cpu", "--force", *flags]
    return stages.stage_args(config.resolve(argv), stages.STAGES[0])


def _make_cam_args(devkit, out_dir, weights, batch, num_workers=0):
    return _step_args(devkit, out_dir, "--cam_weights_name", str(weights), "--cam_scales", "1.0", "0.5",
                      "--cam_out_dir", str(out_dir), "--num_workers", str(num_workers), "--cam_infer_batch", str(batch))


def test_make_cam_run_batched_equals_one_image_per_forward(tiny_devkit, tmp_path, cam_net):
    weights = tmp_path / "cam.pth"
    torch.save(cam_net.state_dict(), weights)
    make_cam.run(_make_cam_args(tiny_devkit, tmp_path / "one", weights, 1))
    make_cam.run(_make_cam_args(tiny_devkit, tmp_path / "four", weights, 4, num_workers=1))
    names = load_img_name_list(str(tiny_devkit / "train.txt"))  # 5 images: batches of 4 and 1
    for name in names:
        a = pyutils.load_npz(str(tmp_path / "one" / f"{name}.npz"), keys=("keys", "cam", "high_res"))
        b = pyutils.load_npz(str(tmp_path / "four" / f"{name}.npz"), keys=("keys", "cam", "high_res"))
        np.testing.assert_array_equal(a["keys"], b["keys"])
        for k in ("cam", "high_res"):
            assert a[k].shape == b[k].shape and a[k].dtype == np.float32
            assert np.abs(a[k] - b[k]).max() <= 1e-3 * max(np.abs(a[k]).max(), 1e-6)


def test_size_batches_group_images_of_one_size(tmp_path):
    sizes = {"a": (50, 40), "b": (40, 50), "c": (50, 40), "d": (50, 40), "e": (40, 50)}
    (tmp_path / "JPEGImages").mkdir()
    for name, (w, h) in sizes.items():
        Image.new("RGB", (w, h)).save(tmp_path / "JPEGImages" / f"{name}.jpg")
    ds = argparse.Namespace(img_name_list=list(sizes), data=as_data(str(tmp_path)))
    batches = make_cam.size_batches(ds, [0, 1, 2, 3, 4], 2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert all(len(b) <= 2 and len({sizes[ds.img_name_list[i]] for i in b}) == 1 for b in batches)
    assert len(batches) == 3  # (a, c), (d), (b, e)
    assert make_cam.size_batches(ds, [3, 1], 1) == [[3], [1]]


# ---------------------------------------------------------------- training loaders


class SeededItems(torch.utils.data.Dataset):
    """Item = (a draw from the (seed, epoch, idx) generator, the pid of the process that built it)."""

    def __init__(self, n, seed=0):
        self.n, self.seed, self.epoch = n, seed, 0

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, idx):
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        return {"x": rng.random(), "pid": os.getpid()}


def _epochs(loader, epochs):
    out, pids = [], []
    for epoch in range(epochs):  # what training.fit does before each epoch
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        batches = list(loader)
        out.append(torch.cat([b["x"] for b in batches]))
        pids.append(set(int(p) for b in batches for p in b["pid"]))
    return out, pids


def test_persistent_workers_see_the_epoch():
    plain, _ = _epochs(training.make_loader(SeededItems(12), 4, True, 0, 0, "cpu", drop_last=True), 3)
    kept, pids = _epochs(training.make_loader(SeededItems(12), 4, True, 0, 2, "cpu", drop_last=True,
                                              persistent=True), 3)
    for a, b in zip(plain, kept):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(plain[0], plain[1])  # the draws do change from epoch to epoch
    assert pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0]  # the same two workers throughout


def test_workers_stay_per_epoch_on_cpu_by_default():
    loader = training.make_loader(SeededItems(8), 4, True, 0, 2, "cpu", drop_last=True)
    assert not loader.persistent_workers and not loader.pin_memory


# ---------------------------------------------------------------- cam_to_ir_label


def _fake_cams(devkit, cam_dir, names):
    """Smooth random CAMs of each image's classes, in make_cam's file format."""
    rng = np.random.default_rng(0)
    labels = load_cls_labels(str(devkit / "cls_labels.txt"))
    for name in names:
        h, w = imutils.read_image(str(devkit / "JPEGImages" / f"{name}.jpg")).shape[:2]
        keys = np.flatnonzero(labels[name]).astype(np.int64)
        coarse = rng.random((len(keys), 4, 4)).astype(np.float32)
        high = np.stack([imutils.pil_resize(c, (h, w), 1) for c in coarse]).astype(np.float32)
        high = (high / high.max(axis=(1, 2), keepdims=True)) ** 4  # background, unsure and foreground parts
        cam = high[:, ::4, ::4].copy()
        pyutils.save_npz(cams.cam_path(str(cam_dir), name), keys=keys, cam=cam, high_res=high)


def test_cam_to_ir_label_pool_is_byte_identical(tiny_devkit, tmp_path):
    names = load_img_name_list(str(tiny_devkit / "train.txt"))  # 5 images: chunks of 4 and 1 for the pool
    _fake_cams(tiny_devkit, tmp_path / "cam", names)
    outs = {}
    for workers in (1, 2):
        args = _step_args(tiny_devkit, tmp_path, "--cam_out_dir", str(tmp_path / "cam"), "--ir_label_out_dir",
                          str(tmp_path / f"ir{workers}"), "--num_workers", str(workers))
        cam_to_ir_label.run(args)
        outs[workers] = {n: (tmp_path / f"ir{workers}" / f"{n}.png").read_bytes() for n in names}
    assert outs[1] == outs[2]
    labels = [imutils.read_label_png(str(tmp_path / "ir1" / f"{n}.png")) for n in names]
    assert any((lab == 0).any() and (lab == 255).any() and ((lab > 0) & (lab < 255)).any() for lab in labels)


# ---------------------------------------------------------------- decoding and resizing


def _pil_decode(data):
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))


def _texture(h=75, w=100, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([128 + 100 * np.sin(xx / (3 + c) + yy / (5 - c)) for c in range(3)], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def test_read_image_is_pixel_identical_to_pil(tmp_path):
    img = _texture()
    variants = {}
    for q in (60, 95):
        for sub in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0 chroma
            variants[f"q{q}s{sub}"] = dict(quality=q, subsampling=sub)
    variants["progressive"] = dict(quality=85, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": PIL does not apply it, and neither may OpenCV
    variants["exif_rotated"] = dict(quality=85, exif=exif.tobytes())
    for name, kw in variants.items():
        Image.fromarray(img).save(tmp_path / f"{name}.jpg", "JPEG", **kw)
    Image.fromarray(img[..., 0]).save(tmp_path / "grey.jpg", "JPEG", quality=90)
    Image.fromarray(img).convert("CMYK").save(tmp_path / "cmyk.jpg", "JPEG", quality=90)
    Image.fromarray(img).save(tmp_path / "png_named.jpg", "PNG")
    for path in sorted(tmp_path.iterdir()):
        want = _pil_decode(path.read_bytes())
        got = imutils.read_image(str(path))
        assert got.dtype == np.uint8 and got.shape == want.shape == (75, 100, 3), path.name
        np.testing.assert_array_equal(got, want, err_msg=path.name)


def test_read_image_rejects_a_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_texture()).save(buf, "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[:-400])  # OpenCV alone would return grey rows
    with pytest.raises(UserError, match="cut.jpg"):
        imutils.read_image(str(tmp_path / "cut.jpg"))


def test_nearest_resize_is_pil_nearest():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(1, 300, 2)
        oh, ow = rng.integers(1, 450, 2)
        shape = (h, w, 3) if rng.random() < 0.3 else (h, w)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        want = np.array(Image.fromarray(img).resize((int(ow), int(oh)), Image.NEAREST))
        np.testing.assert_array_equal(imutils.pil_resize(img, (oh, ow), 0), want)
    label = np.arange(512 * 512, dtype=np.int64).reshape(512, 512).astype(np.uint8)[:, ::-1]  # a flipped view
    want = np.array(Image.fromarray(np.ascontiguousarray(label)).resize((128, 128), Image.NEAREST))
    np.testing.assert_array_equal(imutils.pil_rescale(label, 0.25, 0), want)
