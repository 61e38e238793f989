"""Run a first-round WSSS method (stage I) and then Context Decoupling Augmentation (stage II), step by step.

    python run_sample.py --voc12_root VOCdevkit/VOC2012            # IRNet + CDA on PASCAL VOC 2012
    python run_sample.py --method psa --voc12_root ...             # AffinityNet (PSA, ResNet-38) + CDA
    python run_sample.py --demo                                    # the toy devkit, sized for a laptop CPU
    torchrun --nproc_per_node 4 run_sample.py --voc12_root ...     # several GPUs

Flag names follow IRNet's run_sample.py. Outputs go under --work_dir; see the README for what each holds.
"""
import importlib
import os
import sys
import time

from misc import config, demo, dist, methods, pyutils, stages

STAGE1_STEPS = list(methods.STEPS["irn"])  # IRNet's steps (the default method)


def write_toy(root, **toy):
    from voc12 import synth
    print(f"writing the toy devkit to {root} ...")
    synth.write_devkit(root, **toy)


def remove_leftovers(args):
    """Delete the temporary files a killed run left (atomic writes that never got renamed) in every output
    folder, so a rerun ends with nothing half-written anywhere. Outputs themselves are never touched."""
    work = os.path.abspath(args.work_dir) + os.sep

    def outside(paths):  # the work dir is searched as a whole
        return list(dict.fromkeys(p for p in paths if not os.path.abspath(p).startswith(work)))
    outputs = dict(stages.all_outputs(args))
    folders = outside(p for n, p in outputs.items() if not n.endswith("_weights_name"))
    parents = outside(os.path.dirname(os.path.abspath(p)) for n, p in outputs.items() if n.endswith("_weights_name"))
    parents += outside([os.path.dirname(os.path.abspath(args.pool_dir))])
    n = pyutils.remove_temp_files(args.work_dir, *folders) + pyutils.remove_temp_files(*parents, recursive=False)
    if n:
        pyutils.log(f"removed {n} temporary files left by an interrupted run")


def run_step(step, args, label):
    pyutils.log(f"\n=== {label} ===")
    start = time.time()
    importlib.import_module(f"step.{methods.STEP_MODULES.get(step, step)}").run(args)
    seconds = time.time() - start
    pyutils.log(f"=== {label}: {seconds:.1f} s ===")
    if dist.is_main():
        data = pyutils.load_json(args.results_path, default={})
        data.setdefault("seconds", {})[label] = round(seconds, 2)
        pyutils.save_json(args.results_path, data)


def run_pipeline(args):
    for stage in stages.ran(args):
        a = stages.stage_args(args, stage)
        for step in stages.steps(args, stage):
            run_step(step, a, f"{stage.label}: {step}")


def results_table(results, method="irn"):
    """Stage I and stage II side by side, with the paper's VOC numbers for reference."""
    paper = methods.PAPER[method]

    def cell(stage, metric):
        r = results.get(stage, {}).get(metric)
        return f"{100 * r['miou']:6.1f}" if r else "     -"
    lines = ["", f"{methods.TITLES[method]}",
             "                   CAM mIoU   pseudo-mask mIoU   segmentation (val)   (paper, VOC train: CAM / mask)"]
    for s in stages.STAGES:
        label = s.label + (" (+CDA)" if s.cda else "")
        lines.append(f"{label:<20}{cell(s.name, 'cam')}          {cell(s.name, 'sem_seg')}             "
                     f"{cell(s.name, 'seg')}             {paper[s.name]['cam']} / {paper[s.name]['sem_seg']}")
    for s in stages.STAGES:
        curve = results.get(s.name, {}).get("cam", {}).get("curve")
        if curve:
            lines.append(f"{s.label} CAM threshold sweep 0.00..0.59: best {curve['best_threshold']:.2f}, "
                         f"mIoU {100 * curve['best_miou']:.1f}")
    return "\n".join(lines)


def check_inputs(args):
    """Every list, label, weights file and output folder the enabled steps need, before the first one starts."""
    from voc12 import dataloader
    lists, files, evaluates = config.inputs(args)
    for what, path in files:
        pyutils.require_file(path, what, "train it in this run (its step switch) or pass the right path")
    ids = dataloader.eval_ids(args.voc12_root, args.chainer_eval_set, args.eval_list) if evaluates else None
    dataloader.check_inputs(args.voc12_root, lists, args.cls_labels, ids)
    config.check_writable(args.work_dir)


def setup(args, argv):
    os.makedirs(os.path.join(args.work_dir, "sess"), exist_ok=True)
    pyutils.setup_logging(args.log_name if dist.is_main() else None)
    if not dist.is_main():
        pyutils.get_logger().setLevel("WARNING")
    pyutils.log(f"run_sample.py {' '.join(argv)}\narguments: {vars(args)}")
    for note in args.config_notes:
        pyutils.log(note)
    if dist.is_main():
        remove_leftovers(args)
    dist.barrier()
    if args.demo:
        pyutils.log(demo.banner(args.method))


def finish(args):
    results = pyutils.load_json(args.results_path, default={})
    pyutils.log(results_table(results, args.method))
    from misc import report
    path = report.write_report(args, os.path.join(args.work_dir, "report.html"),
                               f"CDA on {methods.TITLES[args.method]}: {args.voc12_root}",
                               note=demo.banner(args.method) if args.demo else "")
    pyutils.log(f"report: {path}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = config.resolve(argv, description=__doc__, distributed=True, write_toy=write_toy)
        check_inputs(args)
        setup(args, argv)
        run_pipeline(args)
        if dist.is_main():
            finish(args)
        # every rank leaves together: a gloo rank that tears down while another still works (rank 0 writing
        # the report) can abort at exit ("terminate called without an active exception")
        dist.barrier()
    except pyutils.UserError as e:
        from tqdm import tqdm
        # a progress bar the failed step left open would otherwise take the start of the message's line
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        print(f"error: {pyutils.one_line(e)}", file=sys.stderr)
        # Free the failed step's frames now, by reference count: a DataLoader among them then stops its workers
        # at once. Left to the garbage collector (a re-raised worker error makes a reference cycle) its queues
        # may go first, and torch waits 5 s for each worker before killing it.
        e.__traceback__ = None
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
