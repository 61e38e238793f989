"""Random walk of make_sem_seg_labels: dense reference vs sparse walk, time and extra peak memory.

    .venv/bin/python benchmarks/bench_random_walk.py [--device cpu|cuda] [--full_dense]

Each (method, size) runs in a fresh subprocess so that its memory peak is its own. Extra peak memory
is measured against the process's resident size just before the call: on CPU from ru_maxrss and a
1 ms /proc sampler (torch's CPU allocations are invisible to tracemalloc), on CUDA from
torch.cuda.max_memory_allocated. Times are the best of a few runs (one run for the big dense ones).
The dense walk is O(n^3): on CPU it is measured up to --dense_max_n pixels and its time (n^3) and
memory (n^2) at larger sizes are extrapolated from the largest measured sizes, marked with '~'.
Denormals are flushed in both, which only helps the dense one.
"""
import argparse
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
SIZES = [(24, 32), (32, 43), (48, 64), (64, 85), (94, 125)]  # feature maps at stride 4; 94x125 = VOC 375x500


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Highest resident size seen while active (polls /proc every ms; torch releases the GIL)."""

    def __enter__(self):
        self.peak, self.done = rss_bytes(), False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.done:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.peak = max(self.peak, rss_bytes())


def make_inputs(h, w, device, seed=0):
    import torch
    gen = torch.Generator().manual_seed(seed)
    cams = torch.rand(3, h, w, generator=gen)                # three classes, as in a typical VOC image
    edge = torch.rand(1, h, w, generator=gen) ** 3           # mostly low boundary scores
    return cams.to(device), edge.to(device)


def child(method, h, w, device, repeats, out_path):
    """Run one method at one size; print a JSON line with time and extra peak memory."""
    import torch
    sys.path.insert(0, ROOT)
    from misc import indexing
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import dense_walk  # the dense reference walk
    torch.set_flush_denormal(True)
    walk = {"dense": dense_walk.propagate_to_edge_dense, "sparse": indexing.propagate_to_edge}[method]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    walk(*make_inputs(6, 8, device))  # load kernels and libraries on a tiny map first
    cams, edge = make_inputs(h, w, device)
    sync()
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = walk(cams, edge)
        sync()
        times.append(time.perf_counter() - t0)
        extra = torch.cuda.max_memory_allocated() - base
    else:
        base = rss_bytes()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with PeakSampler() as sampler:
            t0 = time.perf_counter()
            out = walk(cams, edge)
            times.append(time.perf_counter() - t0)
        maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # ru_maxrss is exact when the call set a new lifetime peak; otherwise trust the sampler
        peak = maxrss_after if maxrss_after > maxrss_before else sampler.peak
        extra = max(peak, sampler.peak) - base
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        out = walk(cams, edge)
        sync()
        times.append(time.perf_counter() - t0)
    np.save(out_path, out.float().cpu().numpy())
    print(json.dumps({"time": min(times), "extra_mb": extra / 2 ** 20}))


def run_child(method, h, w, device, repeats, out_path):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, str(h), str(w),
           "--device", device, "--repeats", str(repeats), "--out", out_path]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        sys.exit(f"{method} {h}x{w} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dense_max_n", type=int, default=64 * 85,
                    help="largest map (pixels) the dense walk runs at on CPU; larger ones are extrapolated")
    ap.add_argument("--full_dense", action="store_true", help="run the dense walk at every size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "H", "W"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, h, w = args.child
        child(method, int(h), int(w), args.device, args.repeats, args.out)
        return

    import torch
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads for the dense "
          f"walk (the sparse walk uses 1 on CPU), load average at start {os.getloadavg()[0]:.2f}")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for h, w in SIZES:
            n = h * w
            run_dense = args.full_dense or args.device == "cuda" or n <= args.dense_max_n
            dense_file, sparse_file = os.path.join(tmp, "d.npy"), os.path.join(tmp, "s.npy")
            sparse = run_child("sparse", h, w, args.device, args.repeats, sparse_file)
            dense, rel = None, None
            if run_dense:
                dense = run_child("dense", h, w, args.device, 2 if n <= 2000 else 1, dense_file)
                d, s = np.load(dense_file), np.load(sparse_file)
                rel = float(np.abs(d - s).max() / np.abs(d).max())
            rows.append({"h": h, "w": w, "n": n, "sparse": sparse, "dense": dense, "rel": rel})
            print(f"  {h}x{w}: sparse {sparse['time']:.3f} s" +
                  (f", dense {dense['time']:.2f} s" if dense else ", dense not run"), flush=True)

    # extrapolate the dense walk: time ~ n^3 with the smaller constant of the two largest measured sizes
    # (on a shared machine the noise only ever slows a run down), memory ~ n^2 from the largest one
    measured = [r for r in rows if r["dense"]]
    t_coef = min(r["dense"]["time"] / r["n"] ** 3 for r in measured[-2:])
    m_coef = measured[-1]["dense"]["extra_mb"] / measured[-1]["n"] ** 2
    if len(measured) >= 3:
        big = [r for r in measured if r["n"] >= 1000] or measured
        slope = np.polyfit(np.log([r["n"] for r in big]), np.log([r["dense"]["time"] for r in big]), 1)[0]
        print(f"dense time grows as n^{slope:.2f} over the measured sizes with n >= 1000")

    print()
    print("| feature size | pixels n | dense time (s) | sparse time (s) | speed-up | dense extra peak (MB) "
          "| sparse extra peak (MB) | max rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["sparse"]
        if r["dense"]:
            dt, dm, mark = r["dense"]["time"], r["dense"]["extra_mb"], ""
        else:
            dt, dm, mark = t_coef * r["n"] ** 3, m_coef * r["n"] ** 2, "~"
        rel = f"{r['rel']:.1e}" if r["rel"] is not None else "-"
        print(f"| {r['h']}x{r['w']} | {r['n']} | {mark}{dt:.2f} | {s['time']:.3f} | {mark}{dt / s['time']:.0f}x "
              f"| {mark}{dm:.0f} | {s['extra_mb']:.1f} | {rel} |")
    print()
    print("'~': dense value extrapolated (time ~ n^3, memory ~ n^2, from the largest measured sizes). "
          "max rel. diff = max |sparse - dense| / max |dense|.")
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s, load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
