"""Peak memory of every training and inference step on toy images of VOC size (500x375), each step run by
run_sample.py with the method's real defaults except the length (one epoch or iteration over a few images).

    .venv/bin/python benchmarks/bench_memory.py [--only irn:train_cam,seg:train_seg,...] [--device cpu|cuda]
        [--code DIR[=LABEL] ...] [--resnet38_batch 2] [--min_free_gb 0] [--out FILE]

Rows (method:step): irn: train_cam, make_cam, cam_to_ir_label, train_irn, make_sem_seg; psa: train_cls,
infer_cls, cam_to_crf, train_aff, infer_aff; seam: train_seam, infer_seam; seg: train_seg, eval_seg (DeepLab on
the devkit's ground-truth masks). Random backbones (--backbone_weights none, --seg_backbone_weights none): memory
does not depend on the weights.

Each row is its own process (benchmarks/bench_memory.py --child) that runs run_sample.main with that step alone;
its peak resident size is the process's ru_maxrss (torch and the weights included, loader workers not), and
"with workers" adds the proportional set size of its children (data-loader workers, CRF pools) sampled every
5 ms (bench_steps.PeakMemory). On CUDA the GPU column is torch.cuda.max_memory_allocated.

The training rows keep their reference batch (train_cam 16, train_irn 32, train_seg 10 as 2 x 5): the list is
the few distinct images repeated to one batch. The ResNet-38 rows (train_cls, train_aff, train_seam) train on
--resnet38_batch images (default 2, against the reference's 16 / 8 / 8: a full-width ResNet-38 takes about a
second per 96x96 image on a laptop CPU) and the ResNet-38 inference rows run on one image. The "images per
forward" column is measured: the largest batch any convolution saw. A row whose inputs another step makes
(make_cam needs CAM weights, ...) finds them from the rows before it in its chain; with --only the missing ones
are made first by a light run of those steps (small crops, one scale; not measured).

--code runs the rows with another checkout of the project (e.g. `git worktree add /tmp/seg_before HEAD` before a
change), once per --code given, side by side in the table.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC_SIZE = (500, 375)  # (W, H)
GB = 2 ** 30

# (method, step, the reference's images per forward)
ROWS = [
    ("irn", "train_cam", "16 (IRNet train_cam.py)"),
    ("irn", "make_cam", "2: image + flip, per scale (IRNet make_cam.py)"),
    ("irn", "cam_to_ir_label", "no network: 2 CRFs per image"),
    ("irn", "train_irn", "32 (IRNet train_irn.py)"),
    ("irn", "make_sem_seg", "2: image + flip (IRNet make_sem_seg_labels.py)"),
    ("psa", "train_cls", "16 (PSA train_cls.py)"),
    ("psa", "infer_cls", "1: 4 scales x flip, one forward each (PSA infer_cls.py)"),
    ("psa", "cam_to_crf", "no network: la and ha CRF per image"),
    ("psa", "train_aff", "8 (PSA train_aff.py)"),
    ("psa", "infer_aff", "1 (PSA infer_aff.py)"),
    ("seam", "train_seam", "8, then the 8 at 0.3x, one backward (SEAM train_SEAM.py)"),
    ("seam", "infer_seam", "1: 4 scales x flip, one forward each (SEAM infer_SEAM.py)"),
    ("seg", "train_seg", "5: 2 passes of 5 accumulated, each + its 0.5x, 0.75x copies (deeplab-pytorch main.py)"),
    ("seg", "eval_seg", "1, at scales 1, 0.5, 0.75 (deeplab-pytorch main.py test)"),
]
CHAINS = {m: [s for mm, s, _ in ROWS if mm == m] for m in ("irn", "psa", "seam", "seg")}
ALL_STEPS = [s for _, s, _ in ROWS] + ["eval_cam", "eval_sem_seg"]


def lists(cfg, n, name):
    """A list file of the first n distinct training images."""
    path = os.path.join(cfg["tmp"], f"{name}.txt")
    with open(path, "w") as f:
        f.write("".join(x + "\n" for x in cfg["names"][:n]))
    return path


def repeated(cfg, n, batch):
    """A list of `batch` lines cycling over the first n distinct images: one batch of the step's real size."""
    path = os.path.join(cfg["tmp"], f"repeat_{n}_{batch}.txt")
    with open(path, "w") as f:
        f.write("".join(cfg["names"][i % n] + "\n" for i in range(batch)))
    return path


def step_flags(cfg, method, step, light):
    """run_sample.py flags of one row: the step alone, the real defaults but one epoch over one batch (or the
    few images of a per-image step); light: the cheapest run that writes the same kind of output."""
    few, one = cfg["few"], cfg["one"]
    r38_batch = 2 if light else cfg["resnet38_batch"]
    r38_list = repeated(cfg, min(r38_batch, cfg["images"]), r38_batch)
    flags = {
        "train_cam": ["--train_list", repeated(cfg, cfg["images"], 16), "--val_list", few, "--cam_num_epoches", "1"]
        + (["--cam_batch_size", "2", "--cam_crop_size", "64", "--train_list", few] if light else []),
        "make_cam": ["--train_list", few] + (["--cam_scales", "1.0"] if light else []),
        "cam_to_ir_label": ["--train_list", few],
        "train_irn": ["--train_list", repeated(cfg, cfg["images"], 32), "--irn_num_epoches", "1"]
        + (["--irn_batch_size", "2", "--irn_crop_size", "128", "--train_list", few] if light else []),
        "make_sem_seg": ["--infer_list", few],
        "train_cls": ["--train_list", r38_list, "--val_list", r38_list, "--cam_batch_size", str(r38_batch),
                      "--cam_num_epoches", "1"] + (["--cam_crop_size", "64"] if light else []),
        "infer_cls": ["--train_list", one] + (["--cam_scales", "1.0"] if light else []),
        "cam_to_crf": ["--train_list", one],
        "train_aff": ["--train_list", repeated(cfg, 1, r38_batch), "--aff_batch_size", str(r38_batch),
                      "--aff_num_epoches", "1"]
        + (["--aff_crop_size", "64"] if light else []),
        "infer_aff": ["--infer_list", one],
        "train_seam": ["--train_list", r38_list, "--cam_batch_size", str(r38_batch), "--cam_num_epoches", "1"]
        + (["--cam_crop_size", "64"] if light else []),
        "infer_seam": ["--train_list", one] + (["--cam_scales", "1.0"] if light else []),
        "train_seg": ["--seg_train_list", few, "--seg_num_iters", "1"]
        + (["--seg_batch_size", "2", "--seg_iter_size", "1", "--seg_crop_size", "65", "--seg_msc_scales"]
           if light else []),
        "eval_seg": ["--seg_val_list", few, "--seg_test_list", ""] + (["--seg_infer_scales", "1.0"] if light else []),
    }[step]
    # every step switch off but this row's (the checkout's own step list is not imported: --code may be another)
    switches = [f"--{s}_pass=False" for s in ALL_STEPS] + [f"--{step}_pass=True"]
    common = ["--voc12_root", cfg["devkit"], "--cls_labels", os.path.join(cfg["devkit"], "cls_labels.txt"),
              "--train_list", few, "--val_list", few, "--infer_list", few, "--seg_train_list", few,
              "--seg_val_list", few, "--seg_test_list", "",  # every list on the toy images; the row's own win
              "--backbone_weights", "none", "--seg_backbone_weights", "none", "--seg_label_dir",
              os.path.join(cfg["devkit"], "SegmentationClass"), "--stage2", "False", "--device", cfg["device"]]
    return ["--method", "irn" if method == "seg" else method] + common + switches + flags


def flag_value(argv, name):
    """The last value of --name in argv (later flags win), or None."""
    value = None
    for i, a in enumerate(argv[:-1]):
        if a == f"--{name}":
            value = argv[i + 1]
    return value


def count_batches(torch):
    """Records the largest batch any 2-d convolution sees from now on: the images per forward."""
    seen = {"batch": 0}
    forward = torch.nn.Conv2d.forward

    def counted(self, x):
        seen["batch"] = max(seen["batch"], int(x.shape[0]))
        return forward(self, x)
    torch.nn.Conv2d.forward = counted
    return seen


# ---------------------------------------------------------------- child: one step, measured


def child(code, argv_json, out_path):
    import bench_steps  # puts this checkout on sys.path: the --code checkout goes before it
    sys.path.insert(0, code)
    os.chdir(code)
    with open(argv_json) as f:
        argv = json.load(f)
    import torch
    import run_sample
    gpu = flag_value(argv, "device").startswith("cuda")
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    seen = count_batches(torch)
    t0 = time.perf_counter()
    with bench_steps.PeakMemory() as mem:
        rc = run_sample.main(argv)
    seconds = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res = {"rc": rc, "seconds": seconds, "rss": maxrss, "tree": max(mem.peak, maxrss), "batch": seen["batch"],
           "gpu": torch.cuda.max_memory_allocated() if gpu else None}
    with open(out_path, "w") as f:
        json.dump(res, f)


# ---------------------------------------------------------------- parent


def available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_row(cfg, code, work, method, step, light=False):
    argv = step_flags(cfg, method, step, light) + ["--work_dir", work]
    argv_json = os.path.join(cfg["tmp"], "argv.json")
    out_path = os.path.join(cfg["tmp"], "result.json")
    with open(argv_json, "w") as f:
        json.dump(argv, f)
    if os.path.exists(out_path):
        os.remove(out_path)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", code, argv_json, out_path]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=code)
    res = None
    if proc.returncode == 0 and os.path.exists(out_path):
        with open(out_path) as f:
            res = json.load(f)
    if res is None or res["rc"] != 0:  # reported, and the rows that do not need it go on
        print(f"{method}:{step} ({code}) failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}", flush=True)
        return None
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", help="comma-separated rows, method:step or a method (" +
                    ", ".join(f"{m}:{s}" for m, s, _ in ROWS) + ")")
    ap.add_argument("--images", type=int, default=4, help="distinct toy images of 500x375 (repeated to a batch)")
    ap.add_argument("--resnet38_batch", type=int, default=2, help="batch of the ResNet-38 training rows")
    ap.add_argument("--code", action="append", metavar="DIR[=LABEL]",
                    help="project checkout whose run_sample.py runs the steps (repeatable; default this one)")
    ap.add_argument("--min_free_gb", type=float, default=0,
                    help="skip a row when less memory than this is available when it starts (a shared machine)")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return

    sys.path.insert(0, ROOT)
    from voc12.synth import write_devkit
    codes = []
    for c in args.code or [ROOT]:
        path, _, label = c.partition("=")
        codes.append((os.path.abspath(path), label or os.path.basename(os.path.abspath(path))))
    wanted = [r for r in ROWS if not args.only or any(o in (r[0], f"{r[0]}:{r[1]}") for o in args.only.split(","))]
    if not wanted:
        sys.exit(f"--only {args.only}: no such row")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        devkit = os.path.join(tmp, "voc")
        n_train = max(args.images, args.resnet38_batch)
        write_devkit(devkit, num_images=n_train * 5 // 4 + 2, size=VOC_SIZE, seed=0, progress=False)
        with open(os.path.join(devkit, "train_aug.txt")) as f:
            names = [line.split()[0] for line in f if line.strip()]
        cfg = {"devkit": devkit, "names": names, "tmp": tmp, "device": args.device, "images": args.images,
               "resnet38_batch": args.resnet38_batch}
        cfg["few"], cfg["one"] = lists(cfg, args.images, "few"), lists(cfg, 1, "one")
        import torch
        print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{args.images} images of {VOC_SIZE[0]}x{VOC_SIZE[1]}, {available_bytes() / GB:.1f} GB available",
              flush=True)
        for code, label in codes:
            done = set()
            for method, step, ref in wanted:
                work = os.path.join(tmp, "work", label, method)
                for before in CHAINS[method][:CHAINS[method].index(step)]:
                    if (method, before) not in done:  # its output is an input of this row
                        print(f"  [{label}] {method}:{before} (light, for {step}'s inputs)", flush=True)
                        if run_row(cfg, code, work, method, before, light=True) is not None:
                            done.add((method, before))
                free = available_bytes()
                if free < args.min_free_gb * GB:
                    print(f"  [{label}] {method}:{step} skipped: {free / GB:.1f} GB available", flush=True)
                    rows.append((label, method, step, ref, None))
                    continue
                res = run_row(cfg, code, work, method, step)
                if res is None:
                    rows.append((label, method, step, ref, None))
                    continue
                done.add((method, step))
                print(f"  [{label}] {method}:{step}: peak RSS {res['rss'] / GB:.2f} GB, with workers "
                      f"{res['tree'] / GB:.2f} GB, {res['batch']} per forward, {res['seconds']:.0f} s", flush=True)
                rows.append((label, method, step, ref, res))

    gpu = args.device == "cuda"
    many = len(codes) > 1
    head = ("| code " if many else "") + "| method | step | images per forward | reference per forward " \
        "| peak RSS (GB) | with workers (GB) |" + (" peak GPU (GB) |" if gpu else "") + " time (s) |"
    lines = [f"Device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if gpu else
                                          f" ({os.cpu_count()} cores, torch {torch.get_num_threads()} threads)")
             + f"; {args.images} toy images of {VOC_SIZE[0]}x{VOC_SIZE[1]}; total {time.perf_counter() - t_start:.0f} s.",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for label, method, step, ref, r in rows:
        cells = ([label] if many else []) + [method, step, (r["batch"] or "-") if r else "", ref]
        if r is None:
            cells += ["skipped or failed (see above)", ""] + ([""] if gpu else []) + [""]
        else:
            cells += [f"{r['rss'] / GB:.2f}", f"{r['tree'] / GB:.2f}"] + \
                ([f"{r['gpu'] / GB:.2f}"] if gpu else []) + [f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "images per forward: the largest batch a convolution saw in this run (the ResNet-38 training "
              f"rows: --resnet38_batch {args.resnet38_batch}). peak RSS: the step's process (ru_maxrss: torch, "
              "weights and activations); with workers: plus its data-loader and CRF worker processes (PSS, "
              "sampled every 5 ms)."]
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
