"""Run a first-round WSSS method (stage I) and then Context Decoupling Augmentation (stage II), step by step.

    python run_sample.py --voc12_root VOCdevkit/VOC2012            # IRNet + CDA on PASCAL VOC 2012
    python run_sample.py --method psa --voc12_root ...             # AffinityNet (PSA, ResNet-38) + CDA
    python run_sample.py --dataset coco14 --data_root COCO2014     # MS COCO 2014 (80 classes)
    python run_sample.py --demo                                    # the toy devkit, sized for a laptop CPU
    torchrun --nproc_per_node 4 run_sample.py --voc12_root ...     # several GPUs

Flag names follow IRNet's run_sample.py. Outputs go under --work_dir; see the README for what each holds.
"""
import importlib
import os
import sys
import time

from misc import config, datasets, demo, diskspace, dist, methods, pyutils, stages

STAGE1_STEPS = list(methods.STEPS["irn"])  # IRNet's steps (the default method)


def write_toy(dataset, root, **toy):
    synth = importlib.import_module(f"{dataset}.synth")
    print(f"writing the toy {dataset} devkit to {root} ...")
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


def run_pipeline(args, space):
    for stage in stages.ran(args):
        a = stages.stage_args(args, stage)
        for step in stages.steps(args, stage):
            try:
                run_step(step, a, f"{stage.label}: {step}")
            except Exception as e:  # a full disk: say what the step still needed
                full = pyutils.as_disk_full(e, lambda: space.need_text(a, step, f"{stage.label} {step}"), a.work_dir)
                if full is None:
                    raise
                raise full from e


def results_table(results, method="irn", dataset="voc12"):
    """Stage I and stage II side by side, with the published (VOC) or listed (COCO) numbers for reference."""
    def cell(stage, metric):
        r = results.get(stage, {}).get(metric)
        return f"{100 * r['miou']:6.1f}" if r else "     -"

    def ref(stage):
        values = {m: methods.reference(method, dataset, stage, m) for m in ("cam", "sem_seg", "seg")}
        if values["seg"] is not None:
            return f"segmentation {values['seg']}"
        return f"{values['cam']} / {values['sem_seg']}" if values["cam"] is not None else "-"
    title = datasets.describe(dataset).TITLE
    lines = ["", f"{methods.TITLES[method]}, {title}",
             f"                   CAM mIoU   pseudo-mask mIoU   segmentation (val)   ({methods.PAPER_NOTE[dataset]})"]
    for s in stages.STAGES:
        label = s.label + (" (+CDA)" if s.cda else "")
        lines.append(f"{label:<20}{cell(s.name, 'cam')}          {cell(s.name, 'sem_seg')}             "
                     f"{cell(s.name, 'seg')}             {ref(s.name)}")
    for s in stages.STAGES:
        curve = results.get(s.name, {}).get("cam", {}).get("curve")
        if curve:
            lines.append(f"{s.label} CAM threshold sweep 0.00..0.59: best {curve['best_threshold']:.2f}, "
                         f"mIoU {100 * curve['best_miou']:.1f}")
    return "\n".join(lines)


def prepare_data(args):
    """The data set's own preparation when its outputs are missing (COCO: masks, labels and lists from the
    annotations; VOC: nothing), on rank 0 while the others wait."""
    if dist.is_main():
        args.data.description.prepare_data(args.data, args.num_workers, print)
    dist.barrier()


def check_inputs(args):
    """Every list, label, weights file (and its keys) and output folder the enabled steps need, before the first one
    starts. Returns the estimator of the disk space the per-image steps will take."""
    from voc12 import dataloader
    from net import weights
    lists, files, evaluates = config.inputs(args)
    for what, path, _ in files:
        pyutils.require_file(path, what, "train it in this run (its step switch) or pass the right path")
    ids = dataloader.eval_ids(args.data, args.chainer_eval_set, args.eval_list) if evaluates else None
    dataloader.check_inputs(args.data, lists, args.cls_labels, ids)
    config.check_writable(args.work_dir)
    for what, path, step in files:  # the keys of the network that will load it
        weights.check(args, step, path, what)
    return diskspace.Space(args, dataloader.load_img_name_list,
                           lambda: dataloader.load_cls_labels(args.cls_labels, args.data.cat_list))


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
        results = pyutils.load_json(args.results_path, default={})
        results.update(dataset=args.dataset, method=args.method, class_names=list(args.data.class_names))
        pyutils.save_json(args.results_path, results)
    dist.barrier()
    if args.demo:
        pyutils.log(demo.banner(args.method))


def finish(args):
    results = pyutils.load_json(args.results_path, default={})
    pyutils.log(results_table(results, args.method, args.dataset))
    from misc import report
    path = report.write_report(args, os.path.join(args.work_dir, "report.html"),
                               f"CDA on {methods.TITLES[args.method]}, {args.data.description.TITLE}: "
                               f"{args.data_root}",
                               note=demo.banner(args.method) if args.demo else "")
    pyutils.log(f"report: {path}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = None
    try:
        args = config.resolve(argv, description=__doc__, distributed=True, write_toy=write_toy)
        prepare_data(args)
        space = check_inputs(args)
        setup(args, argv)
        if dist.is_main():
            space.report()
        run_pipeline(args, space)
        if dist.is_main():
            finish(args)
        # every rank leaves together: a gloo rank that tears down while another still works (rank 0 writing
        # the report) can abort at exit ("terminate called without an active exception")
        dist.barrier()
    except Exception as exc:  # a bad input, or a full disk that no step turned into one line (a raw ENOSPC)
        e = exc if isinstance(exc, pyutils.UserError) else pyutils.as_disk_full(exc, directory=args and args.work_dir)
        if e is None:
            raise
        from tqdm import tqdm
        # a progress bar the failed step left open would otherwise take the start of the message's line
        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
        print(f"error: {pyutils.one_line(e)}", file=sys.stderr)
        # Free the failed step's frames now, by reference count: a DataLoader among them then stops its workers
        # at once. Left to the garbage collector (a re-raised worker error makes a reference cycle) its queues
        # may go first, and torch waits 5 s for each worker before killing it. The whole chain: a full disk's error
        # is re-raised from the step's (run_pipeline).
        for err in (e, exc):
            while err is not None:
                err.__traceback__, err = None, err.__cause__ or err.__context__
        return 2
    finally:
        dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
