"""Dense CRF: pydensecrf (one core, and a pool on every core) against misc.densecrf (torch) on the CPU and CUDA.

    .venv/bin/python benchmarks/bench_crf.py [--batches 1 8 32] [--labels 3 21] [--size 375 500] [--iters 10]
                                             [--backends pydensecrf pool torch-cpu torch-cuda] [--threads N]

Each (backend, labels, batch) runs in a fresh subprocess so that its memory peak is its own: the resident
peak on the CPU (the process, plus its workers for the pool, sampled every ms), torch.cuda's peak
allocation on CUDA, each with its rise during the timed call (+call). A batch is B natural-looking
scenes (smooth colour regions, a gradient, noise) with noisy unaries: 3 labels are IRNet's label CRF (imutils.crf_inference_label: label unary, gt_prob 0.7,
Gaussian 3/3, bilateral 50/5/10), 21 labels deeplab's on softmax scores (step/eval_seg.py: Gaussian 1/3,
bilateral 67/3/4); --params picks one set for all. Time: from host arrays to host label maps (unaries,
transfers and argmax included), best of --repeats after one warm-up call on a small image; the pool
is started before the clock. Agreement: the share of pixels whose label equals pydensecrf's (one core,
same run), over the batch, and on its worst image. Without a GPU the CUDA rows say "not measured".
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PARAMS = {
    "irnet": dict(unary="labels", gaussian=dict(sxy=3, compat=3), bilateral=dict(sxy=50, srgb=5, compat=10)),
    "psa": dict(unary="softmax", gaussian=dict(sxy=3, compat=3), bilateral=dict(sxy=80, srgb=13, compat=10)),
    "deeplab": dict(unary="softmax", gaussian=dict(sxy=1, compat=3), bilateral=dict(sxy=67, srgb=3, compat=4)),
}
BACKENDS = ("pydensecrf", "pool", "torch-cpu", "torch-cuda")


def scene(h, w, n_labels, seed):
    """A uint8 (H, W, 3) image of smooth colour regions and its noisy label map / softmax scores."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    region = np.zeros((h, w), np.int64)
    for k in range(1, 8):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.1, 0.4) * h, rng.uniform(0.1, 0.4) * w
        region[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = k
    shade = 12 * np.sin(yy / h * 3 + xx / w * 2)[..., None]
    img = rng.uniform(20, 235, (8, 3))[region] + shade + rng.normal(0, 6, (h, w, 3))
    truth = rng.integers(0, n_labels, 8)[region]
    noisy = np.where(rng.random((h, w)) < 0.2, rng.integers(0, n_labels, (h, w)), truth)
    logits = 2.5 * (np.arange(n_labels)[:, None, None] == truth) + rng.normal(0, 1, (n_labels, h, w))
    probs = np.exp(logits - logits.max(0))
    return np.clip(img, 0, 255).astype(np.uint8), noisy, (probs / probs.sum(0)).astype(np.float32)


def rss_bytes(pid="self"):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # a worker that has just exited
        return 0


class PeakSampler:
    """Highest total resident size of this process and `pids` while active (polls /proc every ms)."""

    def __init__(self, pids=()):
        self.pids = list(pids)

    def total(self):
        return rss_bytes() + sum(rss_bytes(p) for p in self.pids)

    def __enter__(self):
        self.peak, self.done = self.total(), False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.done:
            self.peak = max(self.peak, self.total())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.peak = max(self.peak, self.total())


def _pydensecrf_one(job):
    """Labels of one image with pydensecrf (through imutils, as the steps call it)."""
    from misc import imutils
    img, x, n_labels, params, iters = job
    g, b = params["gaussian"], params["bilateral"]
    if params["unary"] == "labels":
        return imutils.crf_inference_label(img, x, t=iters, n_labels=n_labels)
    q = imutils.dense_crf(img, x, iters, g["sxy"], g["compat"], b["sxy"], b["srgb"], b["compat"])
    return np.argmax(q, axis=0)


def _torch_batch(imgs, xs, n_labels, params, iters, device):
    """Labels of a batch with misc.densecrf in one call: unaries and argmax on the device."""
    import torch
    from misc import densecrf
    if params["unary"] == "labels":
        unaries = [densecrf.unary_from_labels(x, n_labels, 0.7, device) for x in xs]
    else:
        unaries = [densecrf.unary_from_softmax(x, device=device) for x in xs]
    qs = densecrf.dense_crf_batch(imgs, unaries, iters, params["gaussian"], params["bilateral"], device)
    labels = [q.argmax(0).cpu().numpy() for q in qs]
    if device == "cuda":
        torch.cuda.synchronize()
    return labels


def child(spec):
    """Time one (backend, labels, batch); write the label maps to spec['out'] and print one JSON line."""
    backend, n_labels, batch, iters = spec["backend"], spec["labels"], spec["batch"], spec["iters"]
    params = PARAMS[spec["params"]]
    h, w = spec["size"]
    data = [scene(h, w, n_labels, seed) for seed in range(batch)]
    imgs = [d[0] for d in data]
    xs = [d[1] if params["unary"] == "labels" else d[2] for d in data]
    warm_img, warm_label, warm_probs = scene(24, 32, n_labels, 1000)
    warm_x = warm_label if params["unary"] == "labels" else warm_probs

    pool, torch = None, None
    if backend.startswith("torch"):  # not imported otherwise: it would count in pydensecrf's memory
        import torch
        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
    if backend == "pydensecrf":
        def run():
            return [_pydensecrf_one((img, x, n_labels, params, iters)) for img, x in zip(imgs, xs)]
        _pydensecrf_one((warm_img, warm_x, n_labels, params, iters))
    elif backend == "pool":
        import multiprocessing
        pool = multiprocessing.get_context("fork").Pool(os.cpu_count())
        pool.map(_pydensecrf_one, [(warm_img, warm_x, n_labels, params, iters)] * os.cpu_count())

        def run():
            return pool.map(_pydensecrf_one, [(img, x, n_labels, params, iters) for img, x in zip(imgs, xs)],
                            chunksize=1)
    else:
        device = "cuda" if backend == "torch-cuda" else "cpu"

        def run():
            return _torch_batch(imgs, xs, n_labels, params, iters, device)
        # warm up on the batch's own shapes on CUDA (cuSPARSE and the sort pick their kernels by size)
        _torch_batch(imgs if device == "cuda" else [warm_img], xs if device == "cuda" else [warm_x], n_labels,
                     params, iters, device)

    times, peak, extra = [], 0, 0
    for _ in range(spec["repeats"]):
        if backend == "torch-cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = time.perf_counter()
            labels = run()
            times.append(time.perf_counter() - start)
            peak = max(peak, torch.cuda.max_memory_allocated())
            extra = max(extra, torch.cuda.max_memory_allocated() - base)
        else:
            with PeakSampler([p.pid for p in pool._pool] if pool else ()) as sampler:
                base = sampler.peak
                start = time.perf_counter()
                labels = run()
                times.append(time.perf_counter() - start)
            peak = max(peak, sampler.peak)
            extra = max(extra, sampler.peak - base)
    if pool:
        pool.close()
        pool.join()
    np.save(spec["out"], np.stack(labels).astype(np.uint8))
    print(json.dumps({"seconds": min(times), "peak": peak, "extra": extra}))


def measure(spec):
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(spec, out=os.path.join(tmp, "labels.npy"))
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["labels"] = np.load(spec["out"])
        return result


def cuda_available():
    import torch
    return torch.cuda.is_available()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--labels", type=int, nargs="+", default=[3, 21])
    parser.add_argument("--size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--params", choices=sorted(PARAMS), default=None,
                        help="one parameter set for every row (default: irnet for <= 3 labels, else deeplab)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads in the torch-cpu rows "
                                                                "(default: torch's)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    has_cuda = cuda_available()
    print(f"dense CRF, {args.size[0]}x{args.size[1]}, {args.iters} iterations, {os.cpu_count()} CPU cores"
          f"{', CUDA: ' + __import__('torch').cuda.get_device_name() if has_cuda else ', no CUDA device'}")
    header = (f"{'backend':<12} {'labels':>6} {'params':>8} {'batch':>5} {'images/s':>9} {'x pydensecrf':>12} "
              f"{'peak memory (+call)':>20} {'labels equal (all / worst image)':>34}")
    print(header)
    print("-" * len(header))
    backends = ["pydensecrf"] + [b for b in args.backends if b != "pydensecrf"]  # the reference first
    for n_labels in args.labels:
        params = args.params or ("irnet" if n_labels <= 3 else "deeplab")
        for batch in args.batches:
            reference, base_rate = None, None
            for backend in backends:
                row = f"{backend:<12} {n_labels:>6} {params:>8} {batch:>5} "
                if backend == "torch-cuda" and not has_cuda:
                    print(row + "not measured (no CUDA device)")
                    continue
                spec = dict(backend=backend, labels=n_labels, batch=batch, iters=args.iters, size=args.size,
                            params=params, repeats=args.repeats, threads=args.threads)
                r = measure(spec)
                if "error" in r:
                    print(row + "failed: " + r["error"])
                    continue
                rate = batch / r["seconds"]
                if backend == "pydensecrf":
                    reference, base_rate = r["labels"], rate
                same = (r["labels"] == reference).reshape(batch, -1).mean(1) if reference is not None else None
                mem = f"{r['peak'] / 2 ** 20:.0f} (+{r['extra'] / 2 ** 20:.0f}) MiB"
                ratio = f"{rate / base_rate:.2f}" if base_rate else "-"
                agree = f"{same.mean():.6f} / {same.min():.6f}" if same is not None else "-"
                print(row + f"{rate:>9.2f} {ratio:>12} {mem:>20} {agree:>34}"
                      + ("" if backend != "torch-cuda" else "  (GPU memory)"), flush=True)
    print("peak memory: resident size on the CPU (the pool: all its processes), torch.cuda.max_memory_allocated "
          "on CUDA; +call: its rise during the timed call")


if __name__ == "__main__":
    main()
