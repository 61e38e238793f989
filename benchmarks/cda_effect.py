"""Does CDA help where context is biased, and not where it is not? Stage I vs stage II on the toy devkit.

For each context bias (0.9: every class mostly on its home background; 0: control) and each seed, runs
the demo pipeline (stage I and stage II) and evaluates CAMs and pseudo masks on the biased `train` list
(as the pipeline does) and on an unbiased held-out list. Prints mean and spread over seeds.

    python benchmarks/cda_effect.py                       # 2 biases x 3 seeds, about an hour on 2 CPU cores
    python benchmarks/cda_effect.py --seeds 0 --biases 0.9
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import run_sample  # noqa: E402
from misc import demo  # noqa: E402
from voc12 import synth  # noqa: E402

METRICS = [("stage1", "cam"), ("stage2", "cam"), ("stage1", "sem_seg"), ("stage2", "sem_seg")]


def run(argv):
    if run_sample.main(argv) != 0:
        raise SystemExit(f"run_sample.py failed: {' '.join(argv)}")


def one_run(devkit, work, seed):
    """Full demo pipeline, then the held-out evaluation; returns {'train': results, 'heldout': results}."""
    base = ["--demo", "--voc12_root", devkit, "--work_dir", work, "--seed", str(seed)]
    run(base)
    out = {"train": json.load(open(os.path.join(work, "results.json")))}
    shutil.move(os.path.join(work, "results.json"), os.path.join(work, "results_train.json"))
    heldout = os.path.join(devkit, "heldout.txt")
    run(base + ["--train_list", heldout, "--infer_list", heldout, "--eval_list", heldout,
                "--cam_out_dir", "result/cam_heldout", "--sem_seg_out_dir", "result/sem_seg_heldout",
                "--cam_aug_out_dir", "result/cam_aug_heldout", "--sem_seg_aug_out_dir", "result/sem_seg_aug_heldout",
                "--no-train_cam_pass", "--no-cam_to_ir_label_pass", "--no-train_irn_pass",
                "--no-make_instance_pool_pass", "--no-cda_train_cam_pass", "--no-cda_cam_to_ir_label_pass",
                "--no-cda_train_irn_pass"])
    out["heldout"] = json.load(open(os.path.join(work, "results.json")))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--biases", type=float, nargs="+", default=[0.9, 0.0])
    p.add_argument("--out", default="work_bench/cda_effect")
    args = p.parse_args()

    rows = []
    for bias in args.biases:
        devkit = os.path.join(args.out, f"toy_bias{bias}")
        if not os.path.isdir(os.path.join(devkit, "JPEGImages")):
            synth.write_devkit(devkit, **{**demo.TOY, "context_bias": bias})
        runs = []
        for seed in args.seeds:
            runs.append(one_run(devkit, os.path.join(args.out, f"work_bias{bias}_seed{seed}"), seed))
            json.dump(runs, open(os.path.join(args.out, f"runs_bias{bias}.json"), "w"), indent=1)
        for split in ("train", "heldout"):
            vals = np.array([[100 * r[split][s][m]["miou"] for s, m in METRICS] for r in runs])
            rows.append((bias, split, vals.mean(0), vals.std(0), vals[:, 1] - vals[:, 0], vals[:, 3] - vals[:, 2]))

    print(f"\nCDA effect on the toy devkit, seeds {args.seeds} (mIoU %, mean ± std over seeds)")
    print(f"{'bias':>5} {'eval on':<8} {'CAM I':>11} {'CAM II':>11} {'gain':>11} {'mask I':>11} {'mask II':>11} {'gain':>11}")
    for bias, split, mean, std, cam_gain, mask_gain in rows:
        cells = [f"{mean[i]:5.1f} ± {std[i]:3.1f}" for i in range(4)]
        print(f"{bias:>5} {split:<8} {cells[0]:>11} {cells[1]:>11} {cam_gain.mean():+5.1f} ± {cam_gain.std():3.1f} "
              f"{cells[2]:>11} {cells[3]:>11} {mask_gain.mean():+5.1f} ± {mask_gain.std():3.1f}")


if __name__ == "__main__":
    main()
