"""Does CDA help where context is biased, and not where it is not? Stage I vs stage II on the toy devkit.

For each context bias (0.9: every class mostly on its home background; 0: control) and each seed, runs
the demo pipeline (stage I and stage II) and evaluates CAMs and pseudo masks on the biased `train` list
(as the pipeline does) and on an unbiased held-out list. Prints mean and spread over seeds.

    python benchmarks/cda_effect.py                       # 2 biases x 3 seeds, about an hour on 2 CPU cores
    python benchmarks/cda_effect.py --seeds 0 --biases 0.9

Variants for finding out why (each writes its own work folders, named after --name):

    # stage II with a ground-truth instance pool, stage I reused from the runs above
    python benchmarks/cda_effect.py --biases 0.9 --name gtpool --run_args="--pool_source gt" --reuse_stage1
    python benchmarks/cda_effect.py --biases 0.0 --name gtpool --run_args="--pool_source gt" --reuse_stage1
    # longer classifier training in both stages; with the stage I pool the toy's run stops at an empty
    # pool (every stage I mask too large), so then with the ground-truth one
    python benchmarks/cda_effect.py --biases 0.9 --seeds 0 --name ep10 --run_args="--cam_num_epoches 10"
    python benchmarks/cda_effect.py --biases 0.9 --seeds 0 --name ep10gt --run_args="--cam_num_epoches 10 --pool_source gt"
    # 1.5x the resolution (192x144), crops and resizes scaled alike
    python benchmarks/cda_effect.py --biases 0.9 --seeds 0 --size 192x144 --name res192gt --run_args="--pool_source gt \
        --cam_crop_size 144 --cam_resize_long 120 192 --irn_crop_size 144"

A finished run keeps its numbers in <work>/cda_effect.json and is not run again.

Besides mIoU, each classifier is probed for context reliance: its mean score (sigmoid) for a class on
pictures of that class's home background with no object at all ("home"), against its score for the
class on the other backgrounds ("other"). CDA is meant to lower "home".
"""
import argparse
import io
import json
import os
import shlex
import shutil
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_sample  # noqa: E402
from misc import demo, imutils, pyutils  # noqa: E402
from net import resnet50_cam  # noqa: E402
from voc12 import CAT_NAME_TO_IDX, synth  # noqa: E402

METRICS = [("stage1", "cam"), ("stage2", "cam"), ("stage1", "sem_seg"), ("stage2", "sem_seg")]
HELDOUT_DIRS = ["--cam_out_dir", "result/cam_heldout", "--sem_seg_out_dir", "result/sem_seg_heldout",
                "--cam_aug_out_dir", "result/cam_aug_heldout", "--sem_seg_aug_out_dir", "result/sem_seg_aug_heldout"]
NO_TRAINING = ["--no-train_cam_pass", "--no-cam_to_ir_label_pass", "--no-train_irn_pass", "--no-make_instance_pool_pass",
               "--no-cda_train_cam_pass", "--no-cda_cam_to_ir_label_pass", "--no-cda_train_irn_pass"]


def run(argv):
    if run_sample.main(argv) != 0:
        raise SystemExit(f"run_sample.py failed: {' '.join(argv)}")


def work_dir(out, bias, seed, name):
    return os.path.join(out, f"work_bias{bias}_seed{seed}" + (f"_{name}" if name else ""))


def one_run(devkit, work, seed, extra=(), stage1_from=None):
    """Full demo pipeline, then the held-out evaluation; returns {'train': results, 'heldout': results}.

    With stage1_from (the work folder of a finished run with the same bias and seed) only stage II runs,
    its pool taken from that run's stage I masks, and stage I's numbers are that run's."""
    done = os.path.join(work, "cda_effect.json")
    if os.path.isfile(done):
        print(f"reusing {done}")
        return json.load(open(done))
    base = ["--demo", "--voc12_root", devkit, "--work_dir", work, "--seed", str(seed), *extra]
    if stage1_from:
        base += ["--no-stage1", "--sem_seg_out_dir", os.path.abspath(os.path.join(stage1_from, "result/sem_seg"))]
    run(base)
    out = {"train": json.load(open(os.path.join(work, "results.json")))}
    shutil.move(os.path.join(work, "results.json"), os.path.join(work, "results_train.json"))
    heldout = os.path.join(devkit, "heldout.txt")
    dirs = HELDOUT_DIRS[:2] + HELDOUT_DIRS[4:] if stage1_from else HELDOUT_DIRS
    run(base + ["--train_list", heldout, "--infer_list", heldout, "--eval_list", heldout, *dirs, *NO_TRAINING])
    out["heldout"] = json.load(open(os.path.join(work, "results.json")))
    if stage1_from:
        ref = json.load(open(os.path.join(stage1_from, "cda_effect.json")))
        for split in out:
            out[split]["stage1"] = ref[split]["stage1"]
    pyutils.save_json(done, out)
    return out


def background_pictures(size, per_kind=20, seed=123):
    """{background kind: (n, 3, H, W) normalised float tensor} of object-free toy pictures, drawn and
    JPEG-encoded as the devkit's images are."""
    w, h = size
    rng = np.random.default_rng(seed)
    out = {}
    for kind in synth.BACKGROUNDS:
        batch = []
        for _ in range(per_kind):
            img = synth._background(kind, h, w, rng) + rng.normal(0, 4, (h, w, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
            img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            batch.append(imutils.HWC_to_CHW(imutils.Normalize()(img)))
        out[kind] = torch.from_numpy(np.stack(batch))
    return out


def context_reliance(weights, classes, pictures):
    """Mean over classes of the classifier's score for the class on its home background alone, and on
    the other backgrounds: {'home': float, 'other': float, and each per class}."""
    net = resnet50_cam.Net(20, from_scratch=True)
    resnet50_cam.load_cam_weights(net, weights)
    net.eval()
    with torch.inference_mode():
        scores = {kind: torch.sigmoid(net(x)).mean(0) for kind, x in pictures.items()}
    home = [scores[synth.HOME_OF[c]][CAT_NAME_TO_IDX[c]].item() for c in classes]
    other = [np.mean([scores[k][CAT_NAME_TO_IDX[c]].item() for k in pictures if k != synth.HOME_OF[c]])
             for c in classes]
    return {"home": float(np.mean(home)), "other": float(np.mean(other)),
            "home_per_class": dict(zip(classes, home)), "other_per_class": dict(zip(classes, other))}


def add_context(work, run_out, pictures, stage1_from=None):
    """Probe the run's classifiers (stage I's from stage1_from when it was reused) once; kept in its json."""
    if "context" in run_out:
        return run_out
    s1 = os.path.join(stage1_from or work, "sess", "res50_cam.pth")
    run_out["context"] = {"stage1": context_reliance(s1, demo.TOY["classes"], pictures),
                          "stage2": context_reliance(os.path.join(work, "sess", "cam_aug.pth"),
                                                     demo.TOY["classes"], pictures)}
    pyutils.save_json(os.path.join(work, "cda_effect.json"), run_out)
    return run_out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--biases", type=float, nargs="+", default=[0.9, 0.0])
    p.add_argument("--out", default="work_bench/cda_effect")
    p.add_argument("--name", default="", help="variant name: suffix of the work folders and the summary file")
    p.add_argument("--run_args", default="", help="extra run_sample.py flags for every run, in one string")
    p.add_argument("--size", default=None, help="toy image size WxH (default: the demo's, 128x96); scale the "
                   "crop and resize flags with --run_args to match")
    p.add_argument("--reuse_stage1", action="store_true",
                   help="run stage II only, on the stage I of the plain runs (no --name) with the same bias and seed")
    args = p.parse_args()
    extra = shlex.split(args.run_args)
    suffix = f"_{args.name}" if args.name else ""

    rows, context_rows = [], []
    size = tuple(int(v) for v in args.size.split("x")) if args.size else demo.TOY["size"]
    pictures = background_pictures(size)
    for bias in args.biases:
        devkit = os.path.join(args.out, f"toy_bias{bias}" + (f"_{size[0]}x{size[1]}" if args.size else ""))
        if not os.path.isfile(os.path.join(devkit, "synth.json")):
            synth.write_devkit(devkit, **{**demo.TOY, "context_bias": bias, "size": size})
        runs = []
        for seed in args.seeds:
            stage1_from = None
            if args.reuse_stage1:
                stage1_from = work_dir(args.out, bias, seed, "")
                one_run(devkit, stage1_from, seed)  # the plain run first, if it is not there yet
            work = work_dir(args.out, bias, seed, args.name)
            runs.append(add_context(work, one_run(devkit, work, seed, extra, stage1_from), pictures, stage1_from))
            pyutils.save_json(os.path.join(args.out, f"runs_bias{bias}{suffix}.json"), runs)
        for split in ("train", "heldout"):
            vals = np.array([[100 * r[split][s][m]["miou"] for s, m in METRICS] for r in runs])
            rows.append((bias, split, vals.mean(0), vals.std(0), vals[:, 1] - vals[:, 0], vals[:, 3] - vals[:, 2]))
        ctx = np.array([[100 * r["context"][st][k] for st in ("stage1", "stage2") for k in ("home", "other")]
                        for r in runs])
        context_rows.append((bias, ctx.mean(0), ctx.std(0)))

    title = f"CDA effect on the toy devkit{' (' + args.name + ': ' + args.run_args + ')' if args.name else ''}"
    print(f"\n{title}, seeds {args.seeds} (mIoU %, mean ± std over seeds)")
    print(f"{'bias':>5} {'eval on':<8} {'CAM I':>11} {'CAM II':>11} {'gain':>11} {'mask I':>11} {'mask II':>11} {'gain':>11}")
    for bias, split, mean, std, cam_gain, mask_gain in rows:
        cells = [f"{mean[i]:5.1f} ± {std[i]:3.1f}" for i in range(4)]
        print(f"{bias:>5} {split:<8} {cells[0]:>11} {cells[1]:>11} {cam_gain.mean():+5.1f} ± {cam_gain.std():3.1f} "
              f"{cells[2]:>11} {cells[3]:>11} {mask_gain.mean():+5.1f} ± {mask_gain.std():3.1f}")
    print("\nContext reliance: mean score (%) for a class on object-free pictures of its home background, "
          "and of the others")
    print(f"{'bias':>5} {'I home':>11} {'I other':>11} {'II home':>11} {'II other':>11}")
    for bias, mean, std in context_rows:
        print(f"{bias:>5} " + " ".join(f"{mean[i]:5.1f} ± {std[i]:3.1f}" for i in range(4)))


if __name__ == "__main__":
    main()
