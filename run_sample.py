"""Run a first-round WSSS method (stage I) and then Context Decoupling Augmentation (stage II), step by step.

    python run_sample.py --voc12_root VOCdevkit/VOC2012            # IRNet + CDA on PASCAL VOC 2012
    python run_sample.py --method psa --voc12_root ...             # AffinityNet (PSA, ResNet-38) + CDA
    python run_sample.py --demo                                    # the toy devkit, sized for a laptop CPU
    torchrun --nproc_per_node 4 run_sample.py --voc12_root ...     # several GPUs

Flag names follow IRNet's run_sample.py. Outputs go under --work_dir; see the README for what each holds.
"""
import argparse
import copy
import importlib
import os
import sys
import time

import torch

from misc import dist, methods, pyutils
from misc.pyutils import str2bool

STAGE1_STEPS = list(methods.STEPS["irn"])  # IRNet's steps (the default method)
STEP_MODULES = methods.STEP_MODULES


def add_switch(parser, name, help=None):
    """--name True|False (as in the reference, but typed) and --no-name."""
    parser.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=True, metavar="BOOL", help=help)
    parser.add_argument(f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        # a mistyped flag is a bad input like any other: one line and exit status 2, not the usage block
        raise pyutils.UserError(f"{message} (see python run_sample.py --help)")


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    env = p.add_argument_group("environment")
    env.add_argument("--method", default="irn", choices=methods.METHODS,
                     help="first-round method: irn (IRNet, ResNet-50), psa (AffinityNet, ResNet-38) or seam (SEAM, "
                          "ResNet-38); sets the step list and the method's reference defaults (explicit flags win)")
    env.add_argument("--voc12_root", help="VOC 2012 devkit: JPEGImages/, SegmentationClass/, ImageSets/")
    env.add_argument("--work_dir", default="work", help="every output goes under this folder")
    env.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cuda when available, else cpu")
    env.add_argument("--num_workers", default=min(8, os.cpu_count() or 1), type=int,
                     help="data-loader workers and CRF processes (default: cores, at most 8)")
    env.add_argument("--seed", default=0, type=int, help="seeds weights, shuffles and every augmentation")
    env.add_argument("--amp", type=str2bool, nargs="?", const=True, default=False,
                     help="bf16 autocast on CUDA (no effect on CPU)")
    env.add_argument("--resume", type=str2bool, nargs="?", const=True, default=False,
                     help="continue training from the last epoch checkpoint (<weights>.ckpt, kept after training: "
                          "a finished training is left as it is)")
    env.add_argument("--force", type=str2bool, nargs="?", const=True, default=False,
                     help="redo per-image outputs that already exist and are newer than their inputs")
    env.add_argument("--demo", action="store_true",
                     help="toy devkit and CPU-sized settings; a randomly initialised backbone trained from scratch")

    data = p.add_argument_group("dataset")
    data.add_argument("--train_list", default="voc12/train_aug.txt",
                      help="images that train both networks (and get CAMs and IR labels)")
    data.add_argument("--val_list", default="voc12/val.txt", help="validation loss of train_cam")
    data.add_argument("--infer_list", default="voc12/train.txt",
                      help="images that get pseudo masks (evaluated as --chainer_eval_set)")
    data.add_argument("--pool_list", default=None,
                      help="images whose stage I pseudo masks feed the instance pool (default: --train_list, as "
                           "CDA: stage I's make_sem_seg then masks these too, in the same pass)")
    data.add_argument("--cls_labels", default="voc12/cls_labels.txt",
                      help="image-level labels: <id> <class name> ... per line")
    data.add_argument("--chainer_eval_set", default="train",
                      help="split of <voc12_root>/ImageSets/Segmentation evaluated by the eval steps")
    data.add_argument("--eval_list", default=None,
                      help="list file to evaluate instead of --chainer_eval_set (e.g. a held-out list)")

    cam = p.add_argument_group("class activation map")
    cam.add_argument("--backbone_weights", default="imagenet",
                     help="imagenet | none | PATH: a ResNet-50 state dict (irn); a ResNet-38 .params or .pth (psa, seam)")
    cam.add_argument("--from_scratch", type=str2bool, nargs="?", const=True, default=False,
                     help="demo only: train every stage with BatchNorm in training mode")
    cam.add_argument("--cam_crop_size", default=512, type=int, help="random crop of train_cam")
    cam.add_argument("--cam_resize_long", default=(320, 640), type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="random long side range")
    cam.add_argument("--cam_color_jitter", default=None, type=float, nargs=4,
                     metavar=("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"),
                     help="colour jitter of the classifier's training images (psa: 0.3 0.3 0.3 0.1; irn: none)")
    cam.add_argument("--cam_val_crop", default="top_left", choices=["top_left", "center", "none"],
                     help="crop of the validation images (irn: top_left, psa: center)")
    cam.add_argument("--cam_val_crop_size", default=None, type=int,
                     help="validation crop size (default: --cam_crop_size; psa: 500)")
    cam.add_argument("--cam_batch_size", default=16, type=int,
                     help="global batch; with CDA half originals, half their copies")
    cam.add_argument("--cam_num_epoches", default=5, type=int)
    cam.add_argument("--cam_learning_rate", default=0.1, type=float, help="backbone lr; the classifier gets 10x")
    cam.add_argument("--cam_weight_decay", default=1e-4, type=float)
    cam.add_argument("--cam_momentum", default=None, type=float,
                     help="SGD momentum; unset reproduces the reference (momentum = weight decay)")
    cam.add_argument("--cam_eval_thres", default=0.15, type=float, help="background score of eval_cam")
    cam.add_argument("--cam_eval_curve", type=str2bool, nargs="?", const=True, default=False,
                     help="eval_cam also sweeps the threshold over 0.00..0.59 (SEAM's --curve) and reports the best")
    cam.add_argument("--cam_scales", default=(1.0, 0.5, 1.5, 2.0), type=float, nargs="+",
                     help="make_cam scales (each with its flip)")
    cam.add_argument("--cam_infer_batch", default=None, type=int,
                     help="make_cam: images of one size per forward (default 4 on CUDA, 1 on CPU)")

    ir = p.add_argument_group("inter-pixel relations")
    ir.add_argument("--conf_fg_thres", default=0.30, type=float,
                    help="background score for confident foreground (IR labels)")
    ir.add_argument("--conf_bg_thres", default=0.05, type=float,
                    help="background score for confident background (IR labels)")
    ir.add_argument("--irn_backbone_weights", default=None,
                    help="backbone of the IRN (default: --backbone_weights); 'cam' takes the stage's CAM network")
    ir.add_argument("--irn_crop_size", default=512, type=int,
                    help="random crop of train_irn; images are padded to it at inference")
    ir.add_argument("--irn_rescale", default=(0.5, 1.5), type=float, nargs=2, metavar=("MIN", "MAX"),
                    help="random rescale range of train_irn")
    ir.add_argument("--irn_batch_size", default=32, type=int)
    ir.add_argument("--irn_num_epoches", default=3, type=int)
    ir.add_argument("--irn_learning_rate", default=0.1, type=float,
                    help="edge branch lr; the displacement branch gets 10x")
    ir.add_argument("--irn_weight_decay", default=1e-4, type=float)
    ir.add_argument("--irn_momentum", default=None, type=float,
                    help="SGD momentum; unset reproduces the reference (momentum = weight decay)")
    ir.add_argument("--beta", default=10, type=float, help="affinity exponent of the random walk (psa: 8)")
    ir.add_argument("--exp_times", "--logt", default=8, type=int,
                    help="the random walk takes 2**exp_times steps (PSA's --logt)")
    ir.add_argument("--sem_seg_bg_thres", default=0.25, type=float, help="background score of the pseudo masks")

    seam = p.add_argument_group("SEAM (seam)")
    seam.add_argument("--seam_scale_factor", default=0.3, type=float, help="the second view: the batch rescaled by this")
    seam.add_argument("--seam_ecr_topk", default=0.2, type=float,
                      help="ECR loss: mean of this top fraction of each image's errors")

    aff = p.add_argument_group("AffinityNet (psa, seam)")
    aff.add_argument("--resnet38_width", default=1.0, type=float,
                     help="channels of ResNet-38 times this (1 = the reference network; the toy demo uses a "
                          "narrower one, trained from scratch)")
    aff.add_argument("--low_alpha", default=4, type=float, help="la CRF: background (1 - max cam) ** low_alpha")
    aff.add_argument("--high_alpha", default=32, type=float, help="ha CRF: background (1 - max cam) ** high_alpha")
    aff.add_argument("--aff_crop_size", default=448, type=int, help="random crop of train_aff (a multiple of 8)")
    aff.add_argument("--aff_batch_size", default=8, type=int)
    aff.add_argument("--aff_num_epoches", default=8, type=int)
    aff.add_argument("--aff_learning_rate", default=0.1, type=float, help="backbone lr; the new layers get 10x")
    aff.add_argument("--aff_weight_decay", default=5e-4, type=float)
    aff.add_argument("--aff_momentum", default=None, type=float,
                     help="SGD momentum; unset reproduces the reference (momentum = weight decay)")
    aff.add_argument("--aff_radius", default=5, type=int, help="pair radius of AffinityNet (training and walk)")
    aff.add_argument("--aff_backbone_weights", default=None,
                     help="backbone of AffinityNet (default: --backbone_weights); 'cam' takes the stage's classifier")
    aff.add_argument("--aff_seam_radius", type=str2bool, nargs="?", const=True, default=False,
                     help="SEAM's rule: on a stride-8 map shorter than 2 * radius + 1, the radius becomes "
                          "(shorter side - 1) // 2 (seam: True)")
    aff.add_argument("--alpha", default=16, type=float,
                     help="infer_aff: background (1 - max cam) ** alpha before the walk")

    cda = p.add_argument_group("context decoupling augmentation (stage II)")
    cda.add_argument("--pool_source", default="sem_seg", choices=["sem_seg", "gt"],
                     help="instances from stage I pseudo masks, or from ground truth (upper-bound ablation)")
    cda.add_argument("--pool_min_ratio", default=0.1, type=float,
                     help="smallest foreground share of an image kept in the pool (inclusive)")
    cda.add_argument("--pool_max_ratio", default=0.7, type=float,
                     help="largest foreground share kept in the pool (inclusive)")
    cda.add_argument("--cda_paste", default="reference", choices=["reference", "trimmed"],
                     help="reference: CDA's paste functions pixel for pixel (cubic-spline rotation, untrimmed "
                          "canvas, bilinear class-valued mask); trimmed: ours (canvas trimmed to the object)")
    cda.add_argument("--cda_pair_view", default="independent", choices=["independent", "shared"],
                     help="independent: the copy gets its own resize, flip and crop, as CDA; shared: the same "
                          "view as its original")
    cda.add_argument("--cda_max_step", default="reference", choices=["reference", "steps"],
                     help="reference: CDA's poly max_step from the full batch while steps take half batches, "
                          "so the lr sits at its floor for the second half; steps: decay over every step")
    cda.add_argument("--cda_rotation", default=(-90.0, 90.0), type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="rotation range of pasted objects, degrees (integer draws with --cda_paste reference)")
    cda.add_argument("--cda_max_size", default=0.7, type=float,
                     help="pasted object at most this share of the image height and width")
    cda.add_argument("--cda_blend", default="none", choices=["none", "gaussian"],
                     help="hard paste, or blend with a 3x3 Gaussian-blurred mask (reference: "
                          "data_aug_rotation_blur)")
    cda.add_argument("--cda_scale_jitter", type=str2bool, nargs="?", const=True, default=False,
                     help="scale the object by a factor in [0.8, 1.2): with --cda_paste reference this is CDA's data_aug, "
                          "which does not rotate; with trimmed, on top of the rotation")
    cda.add_argument("--cda_num_instances", default=1, type=int,
                     help="instances pasted per image, classes without repetition")

    from step import train_seg
    seg = train_seg.add_arguments(p.add_argument_group(
        "segmentation network (the last step; settings of kazuto1011/deeplab-pytorch's VOC configuration)"))
    seg.add_argument("--seg_stages", default="all", choices=["all", "last"],
                     help="train and score a segmentation network on the pseudo masks of every stage that ran, or "
                          "of the last one only")

    out = p.add_argument_group("outputs (relative paths are under --work_dir)")
    out.add_argument("--log_name", default="run.log", help="log file")
    out.add_argument("--cam_weights_name", default="sess/res50_cam.pth")
    out.add_argument("--irn_weights_name", default="sess/res50_irn.pth")
    out.add_argument("--cam_out_dir", default="result/cam")
    out.add_argument("--ir_label_out_dir", default="result/ir_label")
    out.add_argument("--sem_seg_out_dir", default="result/sem_seg")
    out.add_argument("--cam_aug_weights_name", default="sess/cam_aug.pth")
    out.add_argument("--irn_aug_weights_name", default="sess/irn_aug.pth")
    out.add_argument("--cam_aug_out_dir", default="result/cam_aug")
    out.add_argument("--ir_label_aug_out_dir", default="result/ir_label_aug")
    out.add_argument("--sem_seg_aug_out_dir", default="result/sem_seg_aug")
    out.add_argument("--pool_dir", default="instance_pool")
    out.add_argument("--la_crf_dir", default="result/crf_la", help="psa, seam: la CRF score maps")
    out.add_argument("--ha_crf_dir", default="result/crf_ha", help="psa, seam: ha CRF score maps")
    out.add_argument("--la_crf_aug_dir", default="result/crf_la_aug")
    out.add_argument("--ha_crf_aug_dir", default="result/crf_ha_aug")
    out.add_argument("--aff_weights_name", default="sess/res38_aff.pth")
    out.add_argument("--aff_aug_weights_name", default="sess/res38_aff_aug.pth")
    out.add_argument("--seg_aug_weights_name", default="sess/deeplab_aug.pth")
    out.add_argument("--seg_aug_out_dir", default="result/seg_aug")
    out.add_argument("--seg_test_aug_out_dir", default="seg_test_aug")

    steps = p.add_argument_group("steps (each takes True/False; --no-<step> turns one off)")
    add_switch(steps, "stage1", "run stage I (the --method)")
    add_switch(steps, "stage2", "run stage II (CDA)")
    for s in methods.ALL_STEPS:
        add_switch(steps, f"{s}_pass")
    add_switch(steps, "make_instance_pool_pass")
    for s in methods.ALL_STEPS:
        add_switch(steps, f"cda_{s}_pass")
    return p


def check_args(args):
    """Nonsense flags: one line, exit 2, before anything runs."""
    for name in ("cam_eval_thres", "conf_fg_thres", "conf_bg_thres", "sem_seg_bg_thres", "pool_min_ratio",
                 "pool_max_ratio", "cda_max_size"):
        v = getattr(args, name)
        if not 0 <= v <= 1:
            raise pyutils.UserError(f"--{name} must be within [0, 1], got {v}")
    if args.cda_paste == "reference" and args.cda_blend != "none" and args.cda_scale_jitter:
        raise pyutils.UserError("--cda_blend gaussian and --cda_scale_jitter together have no reference function "
                                "(data_aug_rotation_blur or data_aug): drop one, or use --cda_paste trimmed")
    if args.pool_min_ratio > args.pool_max_ratio:
        raise pyutils.UserError("--pool_min_ratio must not exceed --pool_max_ratio")
    for name in ("cam_batch_size", "cam_num_epoches", "irn_batch_size", "irn_num_epoches", "cam_crop_size",
                 "irn_crop_size", "cda_num_instances", "aff_batch_size", "aff_num_epoches", "aff_crop_size",
                 "aff_radius"):
        if getattr(args, name) < 1:
            raise pyutils.UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.num_workers < 0 or args.exp_times < 0:
        raise pyutils.UserError("--num_workers and --exp_times must not be negative")
    if args.aff_crop_size % 8:
        raise pyutils.UserError(f"--aff_crop_size must be a multiple of 8 (AffinityNet's stride), got {args.aff_crop_size}")
    if not 0 < args.seam_scale_factor <= 1 or not 0 < args.seam_ecr_topk <= 1:
        raise pyutils.UserError("--seam_scale_factor and --seam_ecr_topk must be within (0, 1]")
    if args.cam_color_jitter is not None and min(args.cam_color_jitter) < 0:
        raise pyutils.UserError(f"--cam_color_jitter takes four non-negative numbers, got {args.cam_color_jitter}")
    train_cls = methods.TRAIN_CLASSIFIER[args.method]
    if args.stage2 and getattr(args, f"cda_{train_cls}_pass") and (args.cam_batch_size < 2 or args.cam_batch_size % 2):
        raise pyutils.UserError(f"CDA pairs each original with its copy: --cam_batch_size must be even and "
                                f"at least 2, got {args.cam_batch_size}")
    # torchrun: the global batch is split evenly over the processes (a CDA batch is pairs: per pair, not image)
    world = dist.world_size()
    steps = methods.STEPS[args.method]

    def trains(step):
        return step in steps and ((args.stage1 and getattr(args, f"{step}_pass"))
                                  or (args.stage2 and getattr(args, f"cda_{step}_pass")))
    for name, on, unit in (("cam_batch_size", args.stage1 and getattr(args, f"{train_cls}_pass"), 1),
                           ("cam_batch_size", args.stage2 and getattr(args, f"cda_{train_cls}_pass"), 2),
                           ("irn_batch_size", trains("train_irn"), 1),
                           ("aff_batch_size", trains("train_aff"), 1)):
        if on and getattr(args, name) % (unit * world):
            raise pyutils.UserError(f"--{name} {getattr(args, name)} is the global batch of {world} processes"
                                    f"{' in CDA pairs' if unit == 2 else ''}: make it a multiple of {unit * world}")
    if any(seg_on(args, stage) for stage in ("stage1", "stage2")):
        from step import train_seg
        train_seg.check_arguments(args)
    if not args.cam_scales or args.irn_crop_size % 4:
        raise pyutils.UserError("--cam_scales needs at least one scale and --irn_crop_size a multiple of 4")
    if args.irn_crop_size < 76:  # train_irn pairs pixels up to radius 10 apart on the stride-4 map: 19 columns
        raise pyutils.UserError(f"--irn_crop_size must be at least 76, got {args.irn_crop_size}")
    for name in ("cam_learning_rate", "irn_learning_rate", "beta", "cam_scales", "cam_resize_long", "irn_rescale",
                 "aff_learning_rate", "low_alpha", "high_alpha", "alpha"):
        v = getattr(args, name)
        if min(v) <= 0 if isinstance(v, (list, tuple)) else v <= 0:
            raise pyutils.UserError(f"--{name} must be positive, got {v}")
    for name in ("cam_weight_decay", "irn_weight_decay", "aff_weight_decay"):
        if getattr(args, name) < 0:
            raise pyutils.UserError(f"--{name} must not be negative, got {getattr(args, name)}")
    for name in ("cam_resize_long", "irn_rescale", "cda_rotation"):
        lo, hi = getattr(args, name)
        if lo > hi:
            raise pyutils.UserError(f"--{name} MIN MAX: MIN must not exceed MAX, got {lo} {hi}")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise pyutils.UserError(f"--device {args.device}, but PyTorch sees no CUDA device here; use --device cpu")
    if args.voc12_root is None:
        raise pyutils.UserError("--voc12_root is required (the VOC 2012 devkit folder), or use --demo")
    pyutils.require_dir(os.path.join(args.voc12_root, "JPEGImages"), "JPEGImages folder of --voc12_root",
                        "point --voc12_root at VOCdevkit/VOC2012")


def seg_on(args, stage):
    """Whether the segmentation steps run after `stage` (--seg_stages, the stage and step switches)."""
    ran = [s for s in ("stage1", "stage2") if getattr(args, s)]
    if stage not in ran or (args.seg_stages == "last" and stage != ran[-1]):
        return False
    prefix = "" if stage == "stage1" else "cda_"
    return any(getattr(args, f"{prefix}{s}_pass") for s in methods.SEG_STEPS)


def stage_args(args, stage):
    """The namespace one stage's steps read: same step modules, other folders and data set."""
    a = copy.copy(args)
    a.stage = stage
    a.sem_seg_lists = [args.infer_list]
    if stage == "stage1" and args.stage2 and args.make_instance_pool_pass and args.pool_source == "sem_seg":
        a.sem_seg_lists.append(args.pool_list)
    if seg_on(args, stage) and getattr(args, f"{'' if stage == 'stage1' else 'cda_'}train_seg_pass") \
            and not args.seg_label_dir:  # the segmentation network trains on this stage's masks of seg_train_list
        a.sem_seg_lists.append(args.seg_train_list)
    if stage == "stage2":
        a.cam_weights_name, a.irn_weights_name = args.cam_aug_weights_name, args.irn_aug_weights_name
        a.cam_out_dir, a.ir_label_out_dir = args.cam_aug_out_dir, args.ir_label_aug_out_dir
        a.sem_seg_out_dir = args.sem_seg_aug_out_dir
        a.la_crf_dir, a.ha_crf_dir = args.la_crf_aug_dir, args.ha_crf_aug_dir
        a.aff_weights_name = args.aff_aug_weights_name
        a.seg_weights_name, a.seg_out_dir = args.seg_aug_weights_name, args.seg_aug_out_dir
        a.seg_test_out_dir = args.seg_test_aug_out_dir
        a.pool_mask_dir = args.sem_seg_out_dir
        a.cda = True
    else:
        a.cda = False
    if args.irn_backbone_weights in (None, ""):
        a.irn_backbone_weights = args.backbone_weights
    elif args.irn_backbone_weights == "cam":
        a.irn_backbone_weights = a.cam_weights_name
    if args.aff_backbone_weights in (None, ""):
        a.aff_backbone_weights = args.backbone_weights
    elif args.aff_backbone_weights == "cam":
        a.aff_backbone_weights = a.cam_weights_name
    return a


def resolve_defaults(args):
    """Defaults that follow other flags."""
    if args.pool_list in (None, ""):
        args.pool_list = args.train_list
    if args.cam_val_crop_size is None:
        args.cam_val_crop_size = args.cam_crop_size


def resolve_paths(args):
    def under(p):
        return p if os.path.isabs(p) else os.path.join(args.work_dir, p)
    for name in ("log_name", "cam_weights_name", "irn_weights_name", "cam_out_dir", "ir_label_out_dir",
                 "sem_seg_out_dir", "cam_aug_weights_name", "irn_aug_weights_name", "cam_aug_out_dir",
                 "ir_label_aug_out_dir", "sem_seg_aug_out_dir", "pool_dir", "la_crf_dir", "ha_crf_dir",
                 "la_crf_aug_dir", "ha_crf_aug_dir", "aff_weights_name", "aff_aug_weights_name", "seg_weights_name",
                 "seg_out_dir", "seg_test_out_dir", "seg_aug_weights_name", "seg_aug_out_dir", "seg_test_aug_out_dir"):
        setattr(args, name, under(getattr(args, name)))
    args.results_path = os.path.join(args.work_dir, "results.json")
    args.cda_samples_path = os.path.join(args.work_dir, "cda_samples.png")
    os.makedirs(os.path.join(args.work_dir, "sess"), exist_ok=True)


def remove_leftovers(args):
    """Delete the temporary files a killed run left (atomic writes that never got renamed) in every output
    folder, so a rerun ends with nothing half-written anywhere. Outputs themselves are never touched."""
    def outside(paths):  # the work dir is searched as a whole
        work = os.path.abspath(args.work_dir) + os.sep
        return list(dict.fromkeys(p for p in paths if not os.path.abspath(p).startswith(work)))
    folders = outside(getattr(args, n) for n in ("cam_out_dir", "ir_label_out_dir", "sem_seg_out_dir",
                                                  "cam_aug_out_dir", "ir_label_aug_out_dir", "sem_seg_aug_out_dir",
                                                  "la_crf_dir", "ha_crf_dir", "la_crf_aug_dir", "ha_crf_aug_dir",
                                                  "seg_out_dir", "seg_aug_out_dir", "seg_test_out_dir",
                                                  "seg_test_aug_out_dir"))
    parents = outside(os.path.dirname(os.path.abspath(getattr(args, n))) for n in (
        "cam_weights_name", "irn_weights_name", "cam_aug_weights_name", "irn_aug_weights_name", "pool_dir",
        "aff_weights_name", "aff_aug_weights_name", "seg_weights_name", "seg_aug_weights_name"))
    n = pyutils.remove_temp_files(args.work_dir, *folders) + pyutils.remove_temp_files(*parents, recursive=False)
    if n:
        pyutils.log(f"removed {n} temporary files left by an interrupted run")


def run_step(module, args, label):
    pyutils.log(f"\n=== {label} ===")
    start = time.time()
    importlib.import_module(f"step.{module}").run(args)
    seconds = time.time() - start
    pyutils.log(f"=== {label}: {seconds:.1f} s ===")
    if dist.is_main():
        data = pyutils.load_json(args.results_path, default={})
        data.setdefault("seconds", {})[label] = round(seconds, 2)
        pyutils.save_json(args.results_path, data)


def run_pipeline(args):
    steps = methods.STEPS[args.method]
    if args.stage1:
        a = stage_args(args, "stage1")
        for s in steps + (methods.SEG_STEPS if seg_on(args, "stage1") else ()):
            if getattr(args, f"{s}_pass"):
                run_step(STEP_MODULES.get(s, s), a, f"stage I: {s}")
    if args.stage2:
        a = stage_args(args, "stage2")
        if args.make_instance_pool_pass:
            run_step("make_instance_pool", a, "stage II: make_instance_pool")
        for s in steps + (methods.SEG_STEPS if seg_on(args, "stage2") else ()):
            if getattr(args, f"cda_{s}_pass"):
                run_step(STEP_MODULES.get(s, s), a, f"stage II: {s}")


def results_table(results, method="irn"):
    """Stage I and stage II side by side, with the paper's VOC numbers for reference."""
    paper = methods.PAPER[method]

    def cell(stage, metric):
        r = results.get(stage, {}).get(metric)
        return f"{100 * r['miou']:6.1f}" if r else "     -"
    lines = ["", f"{methods.TITLES[method]}",
             "                   CAM mIoU   pseudo-mask mIoU   segmentation (val)   (paper, VOC train: CAM / mask)",
             f"stage I             {cell('stage1', 'cam')}          {cell('stage1', 'sem_seg')}             "
             f"{cell('stage1', 'seg')}             {paper['stage1']['cam']} / {paper['stage1']['sem_seg']}",
             f"stage II (+CDA)     {cell('stage2', 'cam')}          {cell('stage2', 'sem_seg')}             "
             f"{cell('stage2', 'seg')}             {paper['stage2']['cam']} / {paper['stage2']['sem_seg']}"]
    for stage, label in (("stage1", "stage I"), ("stage2", "stage II")):
        curve = results.get(stage, {}).get("cam", {}).get("curve")
        if curve:
            lines.append(f"{label} CAM threshold sweep 0.00..0.59: best {curve['best_threshold']:.2f}, "
                         f"mIoU {100 * curve['best_miou']:.1f}")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    from misc import demo
    method = methods.method_from_argv(argv)
    if method in methods.DEFAULTS:  # an unknown one is reported by the parse below
        parser.set_defaults(**methods.DEFAULTS[method])
    if "--demo" in argv:
        parser.set_defaults(**demo.defaults(method))
    try:
        args = parser.parse_args(argv)
        args.device = dist.init_distributed_mode(args.device)
        if args.demo:
            if dist.is_main():  # rank 0 writes the toy devkit if missing; then every process points its flags at it
                demo.prepare(args)
            dist.barrier()
            demo.prepare(args)
        resolve_defaults(args)
        check_args(args)
        resolve_paths(args)
        pyutils.setup_logging(args.log_name if dist.is_main() else None)
        if not dist.is_main():
            pyutils.get_logger().setLevel("WARNING")
        pyutils.log(f"run_sample.py {' '.join(argv)}\narguments: {vars(args)}")
        if dist.is_main():
            remove_leftovers(args)
        dist.barrier()
        if args.demo:
            pyutils.log(demo.banner(args.method))
        run_pipeline(args)
        if dist.is_main():
            results = pyutils.load_json(args.results_path, default={})
            pyutils.log(results_table(results, args.method))
            from misc import report
            path = report.write_report(args, os.path.join(args.work_dir, "report.html"),
                                       f"CDA on {methods.TITLES[args.method]}: {args.voc12_root}",
                                       note=demo.banner(args.method) if args.demo else "")
            pyutils.log(f"report: {path}")
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
