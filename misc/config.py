"""The configuration of a run, resolved once: resolve(argv) -> args, which the steps read and never re-default.

In order: the method's and the demo's defaults (chosen by a first parse of --method and --demo alone, so an
explicit flag still wins), the full parse (no abbreviated flags: `--meth psa` is an error, not IRNet's defaults
for PSA), the defaults that follow other flags, the checks, the paths under --work_dir.

The parser is assembled from the flags' owners: each step module (and misc.classifier, which the three
classifier steps share) has add_arguments(group) and check_arguments(args) for its own flags; this module has
the environment, the data lists, the outputs (misc/stages.py) and the step switches.
"""
import argparse
import importlib
import os
import tempfile

import torch

from misc import datasets, demo, dist, imutils, methods, pyutils, stages
from misc.pyutils import str2bool

# Owners of flags, in the order of --help: (module, group title)
OWNERS = (
    ("misc.classifier", "classifier training (train_cam, train_cls, train_seam) and CDA's paired samples (stage II)"),
    ("step.make_cam", "class activation maps (make_cam, infer_cls, infer_seam)"),
    ("step.eval_cam", "CAM evaluation (eval_cam)"),
    ("step.cam_to_ir_label", "IR labels (irn: cam_to_ir_label)"),
    ("step.train_irn", "inter-pixel relation network (irn: train_irn)"),
    ("step.make_sem_seg_labels", "random walk (make_sem_seg, infer_aff)"),
    ("step.train_seam", "SEAM (seam: train_seam)"),
    ("step.cam_to_crf", "la/ha CRF score maps (psa, seam: cam_to_crf)"),
    ("step.train_aff", "AffinityNet (psa, seam: train_aff, infer_aff)"),
    ("step.infer_aff", "AffinityNet's walk (psa, seam: infer_aff)"),
    ("step.make_instance_pool", "instance pool (stage II: make_instance_pool)"),
    ("step.train_seg", "segmentation network (train_seg, eval_seg; kazuto1011/deeplab-pytorch's VOC configuration)"),
)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # a mistyped flag is a bad input like any other: one line and exit status 2, not the usage block
        raise pyutils.UserError(f"{message} (see python run_sample.py --help)")


def add_switch(group, name, help=None):
    """--name True|False (as in the reference, but typed) and --no-name."""
    group.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=True, metavar="BOOL", help=help)
    group.add_argument(f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def flag(group, name, help=None, **kw):
    """A boolean flag: --name, --name True|False."""
    group.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=kw.pop("default", False),
                       metavar="BOOL", help=help, **kw)


def build_parser(description=None):
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                       allow_abbrev=False)
    env = p.add_argument_group("environment")
    env.add_argument("--method", default="irn", choices=methods.METHODS,
                     help="first-round method: irn (IRNet, ResNet-50), psa (AffinityNet, ResNet-38) or seam (SEAM, "
                          "ResNet-38); sets the step list and the method's reference defaults (explicit flags win)")
    env.add_argument("--dataset", default="voc12", choices=datasets.NAMES,
                     help="voc12 (PASCAL VOC 2012) or coco14 (MS COCO 2014, 80 classes); sets the lists, the class "
                          "list and the data set's published settings (explicit flags win)")
    env.add_argument("--data_root", "--voc12_root", dest="data_root",
                     help="voc12: the devkit (JPEGImages/, SegmentationClass/, ImageSets/); coco14: the folder of "
                          "train2014/, val2014/ and annotations/ (--voc12_root is IRNet's name for it)")
    env.add_argument("--label_root", default=None,
                     help="the folder of SegmentationClass/ ground truth (voc12: --data_root; coco14: the output of "
                          "python -m coco14.prepare, default <data_root>/cda_labels, written on first use)")
    env.add_argument("--work_dir", default="work", help="every output goes under this folder")
    env.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cuda when available, else cpu")
    env.add_argument("--num_workers", default=min(8, os.cpu_count() or 1), type=int,
                     help="data-loader workers and CRF processes (default: cores, at most 8)")
    env.add_argument("--seed", default=0, type=int, help="seeds weights, shuffles and every augmentation")
    flag(env, "amp", "bf16 autocast on CUDA (no effect on CPU)")
    flag(env, "resume", "continue training from the last epoch checkpoint (<weights>.ckpt, kept after training: "
                        "a finished training is left as it is)")
    flag(env, "force", "redo per-image outputs that already exist and are newer than their inputs")
    env.add_argument("--crf_backend", default="auto", choices=["auto", "pydensecrf", "torch"],
                     help="every dense CRF: pydensecrf (C++, CPU, a process per core) or torch (misc/densecrf.py, "
                          "the same CRF batched on --device); auto: torch on CUDA, else pydensecrf")
    env.add_argument("--crf_batch", default=8, type=int, help="images per torch CRF call")
    env.add_argument("--demo", action="store_true",
                     help="toy devkit and CPU-sized settings; a randomly initialised backbone trained from scratch")

    data = p.add_argument_group("dataset")
    data.add_argument("--train_list", help="images that train both networks (and get CAMs and IR labels)")
    data.add_argument("--val_list", help="validation loss of the classifier")
    data.add_argument("--infer_list", help="images that get pseudo masks (evaluated as --chainer_eval_set)")
    data.add_argument("--pool_list", default=None,
                      help="images whose stage I pseudo masks feed the instance pool (default: --train_list, as "
                           "CDA: stage I's walk then masks these too, in the same pass)")
    data.add_argument("--cls_labels", help="image-level labels: <id> <class name> ... per line")
    data.add_argument("--chainer_eval_set",
                      help="split evaluated by the eval steps (voc12: of <data_root>/ImageSets/Segmentation; coco14: "
                           "<label_root>/<set>14.txt)")
    data.add_argument("--eval_list", default=None,
                      help="list file to evaluate instead of --chainer_eval_set (e.g. a held-out list)")

    nets = p.add_argument_group("networks")
    nets.add_argument("--backbone_weights", default="imagenet",
                      help="imagenet | none | PATH: a ResNet-50 state dict (irn); a ResNet-38 .params or .pth "
                           "(psa, seam)")
    flag(nets, "from_scratch", "demo only: train every stage with BatchNorm in training mode")
    nets.add_argument("--resnet38_width", default=1.0, type=float,
                      help="channels of ResNet-38 times this (1 = the reference network; the toy demo uses a "
                           "narrower one, trained from scratch)")

    for module, title in OWNERS:
        importlib.import_module(module).add_arguments(p.add_argument_group(title))

    out = p.add_argument_group("outputs (relative paths are under --work_dir)")
    out.add_argument("--log_name", default="run.log", help="log file")
    out.add_argument("--pool_dir", default="instance_pool", help="stage II: the instance pool")
    stages.add_arguments(out)

    switches = p.add_argument_group("steps (each takes True/False; --no-<step> turns one off)")
    switches.add_argument("--seg_stages", default="all", choices=["all", "last"],
                          help="train and score a segmentation network on the pseudo masks of every stage that ran, "
                               "or of the last one only")
    for stage in stages.STAGES:
        add_switch(switches, stage.name, f"run {stage.label}")
    for stage in stages.STAGES:
        for step in stage.first_steps + methods.ALL_STEPS:
            if stages.switch(stage, step) not in {a.dest for a in switches._group_actions}:
                add_switch(switches, stages.switch(stage, step))
    return p


def parse(argv, description=None):
    """Parse with the data set's, the method's and (with --demo) the demo's defaults in place, in that order (a
    later table wins; an explicit flag wins over all)."""
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--method", default="irn")
    first.add_argument("--dataset", default="voc12")
    first.add_argument("--demo", action="store_true")
    known, _ = first.parse_known_args(argv)
    parser = build_parser(description)
    if known.dataset in datasets.NAMES:  # an unknown one is reported by the full parse
        parser.set_defaults(**datasets.describe(known.dataset).DEFAULTS)
    if known.method in methods.DEFAULTS:
        parser.set_defaults(**methods.DEFAULTS[known.method])
        parser.set_defaults(**stages.output_defaults(methods.OUTPUTS[known.method]))
        if known.dataset in datasets.NAMES:
            parser.set_defaults(**datasets.describe(known.dataset).METHOD_DEFAULTS.get(known.method, {}))
    if known.demo:
        parser.set_defaults(**demo.defaults(known.method, known.dataset))
    return parser.parse_args(argv)


LABELS = "{labels}/"  # a data set's default list under its label root


def derive(args):
    """Defaults that follow other flags. Returns log lines about them."""
    notes = []
    desc = datasets.describe(args.dataset)
    if args.label_root is None and args.data_root is not None:
        args.label_root = desc.default_label_root(args.data_root)
    args.data = datasets.Data(args.dataset, args.data_root or "", args.label_root or "")
    for flag in ("train_list", "val_list", "infer_list", "cls_labels"):  # the data set's lists live with its labels
        value = getattr(args, flag)
        if value and value.startswith(LABELS):
            setattr(args, flag, os.path.join(args.label_root or "", value[len(LABELS):]))
    args.pool_list = args.pool_list or args.train_list
    args.seg_train_list = args.seg_train_list or args.train_list
    args.seg_val_list = args.seg_val_list or args.val_list
    if args.seg_test_list is None:
        test = desc.test_list_path(args.label_root) if args.label_root else None
        args.seg_test_list = test if test and os.path.isfile(test) else ""
        if not args.seg_test_list:
            notes.append(f"no test-set predictions: {test} is not there (VOC 2012 test is a separate download; "
                         "or pass --seg_test_list)" if test else
                         f"no test-set predictions: {desc.TITLE} has no test list here (pass --seg_test_list)")
    if args.cam_val_crop_size is None:
        args.cam_val_crop_size = args.cam_crop_size
    if args.cam_infer_batch is None:  # batching same-size images fills a GPU; on a CPU it gains little
        args.cam_infer_batch = 4 if str(args.device).startswith("cuda") else 1
    args.crf_backend = imutils.resolve_crf_backend(args.crf_backend, args.device)
    for name in ("irn_backbone_weights", "aff_backbone_weights"):  # 'cam' is resolved per stage
        if not getattr(args, name):
            setattr(args, name, args.backbone_weights)
    return notes


def check(args):
    """Nonsense flags: one line, exit 2, before anything runs."""
    for module, _ in OWNERS:
        importlib.import_module(module).check_arguments(args)
    pyutils.require_range(args, ("num_workers",), at_least=0)
    pyutils.require_range(args, ("crf_batch",), at_least=1)
    if not 0 < args.resnet38_width <= 1:
        raise pyutils.UserError(f"--resnet38_width must be within (0, 1], got {args.resnet38_width}")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise pyutils.UserError(f"--device {args.device}, but PyTorch sees no CUDA device here; use --device cpu")
    if args.data_root is None:
        raise pyutils.UserError("--data_root is required (voc12: the VOC 2012 devkit folder; coco14: the COCO 2014 "
                                "folder), or use --demo")
    datasets.describe(args.dataset).check_root(args.data_root, args.label_root)


def resolve_paths(args):
    def under(p):
        return p if os.path.isabs(p) else os.path.join(args.work_dir, p)
    args.log_name, args.pool_dir = under(args.log_name), under(args.pool_dir)
    for name, path in stages.all_outputs(args):
        setattr(args, name, under(path))
    args.results_path = os.path.join(args.work_dir, "results.json")
    args.cda_samples_path = os.path.join(args.work_dir, "cda_samples.png")


def resolve(argv, description=None, distributed=False, write_toy=None):
    """The run's configuration from the command line, checked. distributed: join torchrun's process group
    (the checks need the number of processes). write_toy(root, **toy): writes the demo's toy devkit when it is
    missing (rank 0 only; the others wait for it)."""
    args = parse(argv, description)
    if distributed:
        args.device = dist.init_distributed_mode(args.device)
    if args.demo:
        toy = demo.point_at_toy(args)
        if toy and write_toy and dist.is_main():
            write_toy(args.dataset, args.data_root, **toy)
        dist.barrier()
    args.config_notes = derive(args)
    check(args)
    resolve_paths(args)
    return args


# Which steps read which list (the per-image steps of every method and the training steps)
LIST_READERS = {
    "train_list": ("train_cam", "train_cls", "train_seam", "make_cam", "infer_cls", "infer_seam", "cam_to_ir_label",
                   "cam_to_crf", "train_irn", "train_aff"),
    "val_list": ("train_cam", "train_cls"),
    "infer_list": ("train_irn", "make_sem_seg", "infer_aff"),
    "pool_list": ("make_instance_pool",),
    "seg_train_list": ("train_seg",),
    "seg_val_list": ("eval_seg",),
}
# Weights a step loads, with the step that writes them: made earlier in the run, or already on disk
WEIGHTS_READERS = (("cam_weights_name", ("make_cam", "infer_cls", "infer_seam")),
                   ("irn_weights_name", ("make_sem_seg",)), ("aff_weights_name", ("infer_aff",)),
                   ("seg_weights_name", ("eval_seg",)))
WEIGHTS_WRITERS = {"cam_weights_name": ("train_cam", "train_cls", "train_seam"), "irn_weights_name": ("train_irn",),
                   "aff_weights_name": ("train_aff",), "seg_weights_name": ("train_seg",)}
# Backbone flags, with the training steps that start from them ('cam': the stage's classifier weights)
BACKBONE_READERS = {"backbone_weights": ("train_cam", "train_cls", "train_seam"),
                    "irn_backbone_weights": ("train_irn",), "aff_backbone_weights": ("train_aff",),
                    "seg_backbone_weights": ("train_seg",)}


def inputs(args):
    """What the enabled steps will read, known before the first one starts: the list files (flag, path), the
    weights files that must already exist (what, path, the step that loads them: net/weights.py checks their
    keys for it), and whether the evaluation split is read."""
    on = [(s, step) for s in stages.ran(args) for step in stages.steps(args, s)]
    steps = {step for _, step in on}
    lists = [(flag, getattr(args, flag)) for flag, readers in LIST_READERS.items() if steps & set(readers)]
    if "eval_seg" in steps and args.seg_test_list:
        lists.append(("seg_test_list", args.seg_test_list))
    files = []
    for stage in stages.ran(args):
        done = set()  # steps of this stage that run before
        for step in stages.steps(args, stage):
            for flag, readers in BACKBONE_READERS.items():
                value = getattr(args, flag)
                if step not in readers or value in (None, "", "none", "imagenet"):
                    continue
                if value != "cam":
                    files.append((f"--{flag}", value, step))
                elif not done & set(WEIGHTS_WRITERS["cam_weights_name"]):
                    files.append((f"{stage.label} {step}: --{flag} cam", stages.output(args, stage, "cam_weights_name"),
                                  step))
            for name, readers in WEIGHTS_READERS:
                if step in readers and not done & set(WEIGHTS_WRITERS[name]):
                    files.append((f"{stage.label} {step}: weights", stages.output(args, stage, name), step))
            done.add(step)
    return lists, list(dict.fromkeys(files)), bool(steps & {"eval_cam", "eval_sem_seg"})


def check_writable(folder):
    """UserError unless `folder` can be made and written."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # removed on close
            pass
    except OSError as e:
        raise pyutils.UserError(f"cannot write into {folder} ({e.__class__.__name__}: {e}); pick another --work_dir "
                                "or fix its permissions")
