"""Speed of each pipeline step on toy images of VOC size (500x375): the path the steps take against
the straightforward one, both measured in the same run.

    .venv/bin/python benchmarks/bench_steps.py [--device cpu|cuda] [--images 12] [--cam_images 2] [--out FILE] [--train]

Rows (reference path first, its ratio is 1.00x):
  decode            PIL's decoder | OpenCV's (read_image): pixel-identical, so the steps use OpenCV
  resize bicubic    PIL | OpenCV: not pixel-identical (PIL antialiases when shrinking), steps keep PIL
  resize nearest    PIL | OpenCV exact nearest (pil_resize order 0): identical, steps use OpenCV
  loader items      make_cam's multi-scale item and train_irn's affinity item, with PIL decode and
                    nearest | as the loaders run now
  train loader      3 epochs of train_cam's loader, 2 workers started per epoch | persistent workers
  make_cam          one image per forward (per scale its image+flip pair) | several images of one size
                    per forward (on CUDA also bf16 autocast)
  cam_to_ir_label   1 process | a pool of --workers processes
  random walk       dense transition matrix | sparse walk, at a small map; the sparse walk alone at the
                    94x125 map of a VOC image
  make_sem_seg      the whole step (IRN forward with flip, walk, PNG) per image: the cost of each image
                    --pool_list adds to stage I (no faster path to compare with)
  train_cam/irn     fp32 | bf16 autocast (channels_last on CUDA in both); a few steps of a small batch
                    (CUDA, or CPU with --train, where only fp32 runs: autocast is CUDA-only)

Every row runs in a fresh subprocess. Extra peak memory: the highest resident size of that process plus
the proportional set size (PSS) of its children (loader and pool workers), sampled every 5 ms, over
its value at the start, or the process's ru_maxrss over its resident size at the start if higher; on CUDA the GPU column is
torch.cuda.max_memory_allocated. Quick rows (decode, resize, loader) take the best of several passes;
the others one timed run after a warm-up (make_cam: on a small image). The machine may be shared: the
load average is printed with the table.
"""
import argparse
import hashlib
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from misc.datasets import as_data  # noqa: E402
VOC_SIZE = (500, 375)  # (W, H)


# ---------------------------------------------------------------- memory


def _pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return kids


def tree_bytes(pid):
    """Resident size of `pid` plus the PSS of its descendants (so pages the workers share are not
    counted twice). The process itself is read from statm: smaps_rollup walks its page tables under
    the mmap lock, which every 5 ms slows down a process that maps and unmaps buffers (OpenCV)."""
    total, stack = own_rss_bytes(), _children(pid)
    while stack:
        p = stack.pop()
        total += _pss_kb(p) * 1024
        stack += _children(p)
    return total


def own_rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Extra memory while active: highest tree_bytes over its value at the start, or this process's
    ru_maxrss over its resident size at the start if that is higher (it catches a short peak between
    two samples)."""

    def __enter__(self):
        self.base, self.base_rss = tree_bytes(os.getpid()), own_rss_bytes()
        self.maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak, self.done = self.base, False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.done:
            self.peak = max(self.peak, tree_bytes(os.getpid()))
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.extra = self.peak - self.base
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if maxrss > self.maxrss0:
            self.extra = max(self.extra, maxrss - self.base_rss)


def best_of(fn, rounds=7, min_pass=0.3):
    """Smallest time of one fn() call, and fn's result. Each of `rounds` timed passes repeats fn enough
    times to last about min_pass seconds; the best pass is the one least disturbed by other processes."""
    t0 = time.perf_counter()
    out = fn()
    reps = max(1, int(np.ceil(min_pass / max(time.perf_counter() - t0, 1e-6))))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best, out


# ---------------------------------------------------------------- the measured work (child side)


def digest(*arrays):
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def pil_decode(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


def use_pil_everywhere():
    """The loaders as written for PIL alone: PIL decoding and PIL nearest resizing."""
    from PIL import Image
    from misc import imutils
    fast_resize = imutils.pil_resize

    def resize(img, size_hw, order):
        if order == 0 and img.dtype == np.uint8 and (int(size_hw[0]), int(size_hw[1])) != img.shape[:2]:
            return np.array(Image.fromarray(np.ascontiguousarray(img)).resize((int(size_hw[1]), int(size_hw[0])),
                                                                              Image.NEAREST))
        return fast_resize(img, size_hw, order)

    imutils.read_image = pil_decode
    imutils.pil_resize = resize


def image_paths(cfg):
    return [os.path.join(cfg["devkit"], "JPEGImages", n + ".jpg") for n in cfg["names"]]


def task_decode(cfg, variant):
    from misc import imutils
    read = pil_decode if variant == "PIL" else imutils.read_image
    paths = image_paths(cfg)
    read(paths[0])
    dt, outs = best_of(lambda: [read(p) for p in paths])
    return len(paths), dt, {"digest": digest(*outs)}


def task_resize(cfg, variant):
    import cv2
    from PIL import Image
    from misc import imutils
    kind, lib = variant.split()
    imgs = [imutils.read_image(p) for p in image_paths(cfg)]
    rng = np.random.default_rng(0)
    if kind == "nearest":  # IRN labels: rescaled by a random factor in [0.5, 1.5]
        imgs = [np.ascontiguousarray(im[..., 0] // 13) for im in imgs]
        scales = rng.uniform(0.5, 1.5, len(imgs))
        sizes = [(round(im.shape[0] * s), round(im.shape[1] * s)) for im, s in zip(imgs, scales)]
        flags = (Image.NEAREST, cv2.INTER_NEAREST_EXACT)
    else:  # train_cam: long side a random integer in [320, 640]
        longs = rng.integers(320, 641, len(imgs))
        sizes = [(round(im.shape[0] * int(L) / max(im.shape)), round(im.shape[1] * int(L) / max(im.shape)))
                 for im, L in zip(imgs, longs)]
        flags = (Image.BICUBIC, cv2.INTER_CUBIC)
    if lib == "PIL":
        def f(im, hw):
            return np.array(Image.fromarray(im).resize((hw[1], hw[0]), flags[0]))
    else:
        def f(im, hw):
            return cv2.resize(im, (hw[1], hw[0]), interpolation=flags[1])
    f(imgs[0], sizes[0])
    dt, outs = best_of(lambda: [f(im, hw) for im, hw in zip(imgs, sizes)])
    return len(imgs), dt, {"digest": digest(*outs), "arrays": outs}


def task_loader(cfg, variant):
    kind, path = variant.split()
    if path == "PIL":
        use_pil_everywhere()
    from misc import indexing
    from voc12.dataloader import VOC12AffinityDataset, VOC12ClassificationDatasetMSF
    if kind == "msf":
        ds = VOC12ClassificationDatasetMSF(cfg["list"], cfg["devkit"], cfg["cls_labels"])
    else:
        pi = indexing.PathIndex(radius=10, default_size=(128, 128))
        ds = VOC12AffinityDataset(cfg["list"], os.path.join(cfg["devkit"], "SegmentationClass"), 512, cfg["devkit"],
                                  pi.src_indices, pi.dst_indices, rescale=(0.5, 1.5), hor_flip=True)
    def one_pass():  # hashes each item at once instead of keeping them all
        h = []
        for i in range(len(ds)):
            it = ds[i]
            h.append(digest(*(it["img"] if kind == "msf" else [it["img"], it["label"]])))
        return h

    ds[0]
    dt, hashes = best_of(one_pass, 3, min_pass=0)
    return len(ds), dt, {"digest": digest(np.array(hashes))}


def task_train_loader(cfg, variant):
    from misc import training
    from voc12.dataloader import VOC12ClassificationDataset
    ds = VOC12ClassificationDataset(cfg["list"], cfg["devkit"], cfg["cls_labels"], resize_long=(320, 640),
                                    hor_flip=True, crop_size=512, crop_method="random", seed=0)
    loader = training.make_loader(ds, 2, True, 0, 2, "cpu", drop_last=True, persistent=variant == "persistent")
    epochs, n, hashes = 3, 0, []
    t0 = time.perf_counter()
    for epoch in range(epochs):  # as training.fit
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        for batch in loader:
            n += batch["img"].shape[0]
            hashes.append(digest(batch["img"].numpy()))
    return n, time.perf_counter() - t0, {"digest": digest(np.array(hashes))}


def _cam_args(cfg, out_dir, batch, amp):
    return argparse.Namespace(device=cfg["device"], amp=amp, cam_weights_name=cfg["cam_weights"],
                              train_list=cfg["cam_list"], data=as_data(cfg["devkit"]), cls_labels=cfg["cls_labels"],
                              cam_scales=(1.0, 0.5, 1.5, 2.0), cam_out_dir=out_dir, force=True, num_workers=1,
                              cam_infer_batch=batch)


def task_make_cam(cfg, variant):
    import torch
    from step import make_cam
    batch = 1 if variant.startswith("1 ") else len(cfg["cam_names"])
    amp = "bf16" in variant
    # warm-up outside the timing: a small image through a throw-away model loads the kernels
    from net import resnet50_cam
    net = resnet50_cam.CAM(20).to(cfg["device"]).eval()
    with torch.inference_mode():
        net.forward_pairs(torch.zeros(2, 3, 64, 64, device=cfg["device"]))
    del net
    out_dir = os.path.join(cfg["tmp"], "cam_" + variant.replace(" ", "_"))
    t0 = time.perf_counter()
    make_cam.run(_cam_args(cfg, out_dir, batch, amp))
    return len(cfg["cam_names"]), time.perf_counter() - t0, {"out_dir": out_dir}


def fake_cams(cfg, cam_dir):
    """Smooth random CAMs of each image's classes in make_cam's format: background, unsure and
    foreground parts, so both CRFs of an image have work to do."""
    from misc import imutils, pyutils
    from misc.cams import cam_path
    from voc12.dataloader import load_cls_labels
    labels = load_cls_labels(cfg["cls_labels"])
    rng = np.random.default_rng(0)
    for name in cfg["names"]:
        h, w = VOC_SIZE[1], VOC_SIZE[0]
        keys = np.flatnonzero(labels[name]).astype(np.int64)
        coarse = rng.random((len(keys), 6, 8)).astype(np.float32)
        high = np.stack([imutils.pil_resize(c, (h, w), 1) for c in coarse]).astype(np.float32)
        high = (high / high.max(axis=(1, 2), keepdims=True)) ** 4
        pyutils.save_npz(cam_path(cam_dir, name), keys=keys, cam=np.ascontiguousarray(high[:, ::4, ::4]),
                         high_res=high)


def task_cam_to_ir_label(cfg, variant):
    import multiprocessing
    from step import cam_to_ir_label
    workers = int(variant.split()[0])
    out_dir = os.path.join(cfg["tmp"], f"ir_{workers}")
    args = argparse.Namespace(train_list=cfg["list"], data=as_data(cfg["devkit"]), cls_labels=cfg["cls_labels"],
                              cam_out_dir=cfg["cam_dir"], ir_label_out_dir=out_dir, conf_fg_thres=0.30,
                              conf_bg_thres=0.05, num_workers=workers, force=True)
    t0 = time.perf_counter()
    cam_to_ir_label.run(args)
    dt = time.perf_counter() - t0
    files = [open(os.path.join(out_dir, n + ".png"), "rb").read() for n in cfg["names"]]
    extra = {"digest": hashlib.sha1(b"".join(files)).hexdigest()[:12]}
    if workers > 1:  # what starting the pool costs: each spawned worker imports the step's module
        t0 = time.perf_counter()
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(_import, ["step.cam_to_ir_label"] * workers, chunksize=1)
        extra["startup"] = time.perf_counter() - t0
    return len(cfg["names"]), dt, extra


def _import(module):
    importlib.import_module(module)
    return os.getpid()


def task_random_walk(cfg, variant):
    import torch
    from misc import indexing
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import dense_walk  # the dense reference walk
    method, hw = variant.split()
    h, w = (int(v) for v in hw.split("x"))
    torch.set_flush_denormal(True)
    walk = {"dense": dense_walk.propagate_to_edge_dense, "sparse": indexing.propagate_to_edge}[method]
    gen = torch.Generator().manual_seed(0)
    dev = cfg["device"]

    def inputs(hh, ww):
        return (torch.rand(3, hh, ww, generator=gen).to(dev), (torch.rand(1, hh, ww, generator=gen) ** 3).to(dev))

    walk(*inputs(6, 8))
    cams, edge = inputs(h, w)
    reps = 1 if method == "dense" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        out = walk(cams, edge)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    return reps, time.perf_counter() - t0, {"arrays": [out.float().cpu().numpy()]}


def task_make_sem_seg(cfg, variant):
    """The whole make_sem_seg step per image at VOC size (IRN forward of the image and its flip, padded to
    512, the 2^8-step sparse walk, the PNG): what stage I pays per image of --pool_list on top of the
    inference list. Random IRN weights: the cost does not depend on them."""
    import torch
    from net import resnet50_irn
    from step import make_sem_seg_labels
    weights = os.path.join(cfg["tmp"], "irn.pth")
    torch.manual_seed(0)
    torch.save(resnet50_irn.EdgeDisplacement().state_dict(), weights)
    out_dir = os.path.join(cfg["tmp"], "sem_seg")
    args = argparse.Namespace(device=cfg["device"], irn_crop_size=512, irn_weights_name=weights,
                              infer_list=cfg["list"], data=as_data(cfg["devkit"]), cls_labels=cfg["cls_labels"],
                              sem_seg_out_dir=out_dir, force=True, cam_out_dir=cfg["cam_dir"], num_workers=1,
                              beta=10, exp_times=8, sem_seg_bg_thres=0.25)
    t0 = time.perf_counter()
    make_sem_seg_labels.run(args)
    return len(cfg["names"]), time.perf_counter() - t0, {}


def task_train(cfg, variant):
    import torch
    from misc import indexing, training
    from voc12.dataloader import VOC12AffinityDataset, VOC12ClassificationDataset
    step, precision = variant.split()
    device, amp = cfg["device"], precision == "bf16"
    batch, steps = cfg["train_batch"], cfg["train_steps"]
    torch.manual_seed(0)
    if step == "train_cam":
        from net import resnet50_cam
        from misc.classifier import classification_loss as loss_fn
        ds = VOC12ClassificationDataset(cfg["list"], cfg["devkit"], cfg["cls_labels"], resize_long=(320, 640),
                                        hor_flip=True, crop_size=512, crop_method="random")
        model = resnet50_cam.Net(20)
    else:
        from net import resnet50_irn
        from step.train_irn import irn_loss as loss_fn
        pi = indexing.PathIndex(radius=10, default_size=(128, 128))
        ds = VOC12AffinityDataset(cfg["list"], os.path.join(cfg["devkit"], "SegmentationClass"), 512, cfg["devkit"],
                                  pi.src_indices, pi.dst_indices, rescale=(0.5, 1.5), hor_flip=True)
        model = resnet50_irn.AffinityDisplacementLoss(pi)
    loader = training.make_loader(ds, batch, True, 0, 0, device, drop_last=True)
    batches = [b for _, b in zip(range(steps + 1), _forever(loader))]
    model = training.prepare_model(model, device)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def one(b):
        with training.autocast(device, amp):
            loss, _ = loss_fn(model, b, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one(batches[0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for b in batches[1:]:
        one(b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return steps * batch, time.perf_counter() - t0, {}


def _forever(loader):
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


TASKS = {"decode": task_decode, "resize": task_resize, "loader": task_loader, "train_loader": task_train_loader,
         "make_cam": task_make_cam, "cam_to_ir_label": task_cam_to_ir_label, "random_walk": task_random_walk,
         "make_sem_seg": task_make_sem_seg, "train": task_train}


def child(task, variant, cfg_path, out_path):
    with open(cfg_path) as f:
        cfg = json.load(f)
    import torch
    gpu = cfg["device"].startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    with PeakMemory() as mem:
        n, seconds, extra = TASKS[task](cfg, variant)
    arrays = extra.pop("arrays", None)
    if arrays is not None:
        np.savez(out_path, *arrays)
    res = {"n": n, "seconds": seconds, "peak_mb": mem.extra / 2 ** 20,
           "gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if gpu else None, **extra}
    print(json.dumps(res))


# ---------------------------------------------------------------- parent


def run_child(task, variant, cfg_path, tmp):
    out_path = os.path.join(tmp, f"{task}_{variant}.npz".replace(" ", "_"))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", task, variant, cfg_path, out_path]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"{task} / {variant} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - t0
    out["npz"] = out_path if os.path.exists(out_path) else None
    print(f"  {task:16s} {variant:24s} {out['n'] / out['seconds']:9.2f} /s  ({out['wall']:.0f} s)", flush=True)
    return out


def max_rel_diff(a_npz, b_npz):
    with np.load(a_npz) as a, np.load(b_npz) as b:
        diffs = [np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(a[k]).max(), 1e-12) for k in a.files]
    return max(diffs)


def max_abs_diff(a_npz, b_npz):
    with np.load(a_npz) as a, np.load(b_npz) as b:
        return max(int(np.abs(a[k].astype(np.int64) - b[k]).max()) for k in a.files)


def cam_dir_rel_diff(dir_a, dir_b, names):
    from misc import pyutils
    worst = 0.0
    for n in names:
        a = pyutils.load_npz(os.path.join(dir_a, n + ".npz"), keys=("keys", "cam", "high_res"))
        b = pyutils.load_npz(os.path.join(dir_b, n + ".npz"), keys=("keys", "cam", "high_res"))
        assert np.array_equal(a["keys"], b["keys"])
        for k in ("cam", "high_res"):
            worst = max(worst, float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-12)))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--images", type=int, default=12, help="toy images of 500x375 for every row but make_cam")
    ap.add_argument("--cam_images", type=int, default=None,
                    help="images for make_cam, all batched in one forward per scale (default 2 on CPU, 8 on CUDA)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="cam_to_ir_label pool size")
    ap.add_argument("--train", action="store_true",
                    help="also time train_cam / train_irn steps on CPU (always on CUDA, where fp32 meets bf16)")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    ap.add_argument("--only", help="comma-separated tasks to run (" + ", ".join(TASKS) + ")")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    import torch
    from net import resnet50_cam
    from voc12.synth import write_devkit
    gpu = args.device == "cuda"
    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    rows = []  # (step, variant, result, reference result or None, "same result" text)
    with tempfile.TemporaryDirectory() as tmp:
        devkit = os.path.join(tmp, "voc")
        # 20 % of the images go to val: write enough for --images training images
        cam_images = args.cam_images or (8 if gpu else 2)
        n_train = max(args.images, cam_images)
        write_devkit(devkit, num_images=int(np.ceil(n_train / 0.8)) + 1, size=VOC_SIZE, seed=0, progress=False)
        with open(os.path.join(devkit, "train_aug.txt")) as f:
            all_names = [line.split()[0] for line in f if line.strip()]
        names, cam_names = all_names[:args.images], all_names[:cam_images]
        list_path, cam_list = os.path.join(tmp, "bench.txt"), os.path.join(tmp, "bench_cam.txt")
        for path, ids in ((list_path, names), (cam_list, cam_names)):
            with open(path, "w") as f:
                f.write("\n".join(ids) + "\n")
        torch.manual_seed(0)
        cam_weights = os.path.join(tmp, "cam.pth")
        torch.save(resnet50_cam.CAM(20).state_dict(), cam_weights)
        cfg = {"devkit": devkit, "names": names, "list": list_path, "cls_labels": os.path.join(devkit, "cls_labels.txt"),
               "cam_names": cam_names, "cam_list": cam_list, "cam_dir": os.path.join(tmp, "fake_cam"),
               "device": "cuda" if gpu else "cpu", "tmp": tmp, "cam_weights": cam_weights,
               "train_batch": 8 if gpu else 2, "train_steps": 5 if gpu else 2}
        fake_cams(cfg, cfg["cam_dir"])
        cfg_path = os.path.join(tmp, "cfg.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{len(names)} images of {VOC_SIZE[0]}x{VOC_SIZE[1]} ({cam_images} for make_cam), "
              f"load average {load_start:.2f}", flush=True)

        only = set(args.only.split(",")) if args.only else set(TASKS)

        def pair(step, task, ref_variant, fast_variant, compare, rounds=1):
            """Reference then fast path; quick rows alternate them `rounds` times and keep each one's best
            time, so a burst of load from other processes does not decide the ratio."""
            if task not in only:
                return
            ref = run_child(task, ref_variant, cfg_path, tmp)
            fast = run_child(task, fast_variant, cfg_path, tmp)
            for _ in range(rounds - 1):
                for best, variant in ((ref, ref_variant), (fast, fast_variant)):
                    again = run_child(task, variant, cfg_path, tmp)
                    best["seconds"] = min(best["seconds"], again["seconds"])
            rows.append((step, ref_variant, ref, None, ""))
            rows.append((step, fast_variant, fast, ref, compare(ref, fast)))

        def same_digest(a, b):
            return "identical" if a["digest"] == b["digest"] else "DIFFERENT"

        pair("decode JPEG", "decode", "PIL", "OpenCV", same_digest, rounds=3)
        pair("resize bicubic (long side 320-640)", "resize", "bicubic PIL", "bicubic OpenCV",
             lambda a, b: f"max |diff| {max_abs_diff(a['npz'], b['npz'])} (not used)", rounds=3)
        pair("resize nearest (labels)", "resize", "nearest PIL", "nearest OpenCV",
             lambda a, b: "identical" if max_abs_diff(a["npz"], b["npz"]) == 0 else "DIFFERENT", rounds=3)
        pair("loader item: make_cam (4 scales)", "loader", "msf PIL", "msf now", same_digest, rounds=2)
        pair("loader item: train_irn (affinity)", "loader", "affinity PIL", "affinity now", same_digest, rounds=2)
        pair("train_cam loader, 3 epochs, 2 workers", "train_loader", "per-epoch", "persistent", same_digest)
        if "make_cam" in only:
            ref = run_child("make_cam", "1 per forward", cfg_path, tmp)
            rows.append(("make_cam (scales 1, 0.5, 1.5, 2)", "1 per forward", ref, None, ""))
        fast_variants = [f"{cam_images} per forward"] + ([f"{cam_images} per forward bf16"] if gpu else [])
        fast_variants = fast_variants if "make_cam" in only else []
        for v in fast_variants:
            fast = run_child("make_cam", v, cfg_path, tmp)
            rel = cam_dir_rel_diff(ref["out_dir"], fast["out_dir"], cam_names)
            rows.append(("make_cam (scales 1, 0.5, 1.5, 2)", v, fast, ref, f"max rel. diff {rel:.1e}"))
        pair("cam_to_ir_label (2 CRFs per image)", "cam_to_ir_label", "1 process", f"{args.workers} processes",
             lambda a, b: same_digest(a, b) + f"; pool start-up {b['startup']:.1f} s included")
        pair("random walk 32x43 (one image's walk)", "random_walk", "dense 32x43", "sparse 32x43",
             lambda a, b: f"max rel. diff {max_rel_diff(a['npz'], b['npz']):.1e}")
        if "random_walk" in only:
            rows.append(("random walk 94x125 (VOC image)", "sparse 94x125",
                         run_child("random_walk", "sparse 94x125", cfg_path, tmp), None, ""))
        if "make_sem_seg" in only:
            rows.append(("make_sem_seg (IRN + walk + PNG, per image)", "as the step runs",
                         run_child("make_sem_seg", "step", cfg_path, tmp), None, ""))
        if (gpu or args.train) and "train" in only:
            for step in ("train_cam", "train_irn"):
                label = f"{step} step (batch {cfg['train_batch']}, crop 512)"
                if gpu:
                    pair(label, "train", f"{step} fp32", f"{step} bf16", lambda a, b: "bf16 rounding")
                else:
                    rows.append((label, "fp32", run_child("train", f"{step} fp32", cfg_path, tmp), None, ""))

    gpu_col = " peak GPU (MB) |" if gpu else ""
    lines = [f"Device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if gpu else
                                          f" ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads)")
             + f"; {len(names)} toy images of {VOC_SIZE[0]}x{VOC_SIZE[1]} ({cam_images} for make_cam); "
             f"load average {load_start:.2f} at start, "
             f"{os.getloadavg()[0]:.2f} at end; total {time.perf_counter() - t_start:.0f} s.", "",
             f"| step | variant | images/s | time (s) | extra peak memory (MB) |{gpu_col} speed-up "
             "| result vs reference |",
             "|---|---|---|---|---|" + ("---|" if gpu else "") + "---|---|"]
    for step, variant, r, ref, same in rows:
        speed = r["n"] / r["seconds"]
        ratio = "1.00x (ref)" if ref is None and any(x[0] == step and x[3] is not None for x in rows) else (
            f"{speed / (ref['n'] / ref['seconds']):.2f}x" if ref is not None else "-")
        g = f" {r['gpu_mb']:.0f} |" if gpu else ""
        lines.append(f"| {step} | {variant} | {speed:.2f} | {r['seconds']:.2f} | {r['peak_mb']:.0f} |{g} {ratio} | {same} |")
    lines += ["", "images/s: items per second (decode, resize, loader: images, best of several passes; random "
              "walk: walks; training: training images). time: of the whole pass. Extra peak memory: over the "
              "process's own at the start (importing torch alone takes ~600 MB), workers included (PSS)."]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
