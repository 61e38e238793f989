"""Stage II, first step: build the CDA instance pool from stage I's pseudo masks (or the ground truth).

--pool_source sem_seg reads args.pool_mask_dir (stage I's make_sem_seg_labels output, which covers
--pool_list: the training list by default, as CDA pools from its walks over train_aug); --pool_source gt
reads <voc12_root>/SegmentationClass, an upper-bound ablation. The images are those of --pool_list.
"""
import os

from cda.pool import build_pool
from misc import dist, pyutils
from misc.pyutils import UserError, log
from voc12.dataloader import load_cls_labels, load_img_name_list


def classes_never_pasted(meta, ids, labels, cat_list):
    """The classes without instances that the list's images hold (the toy devkit has 6 of VOC's classes: the
    others are absent, not missing)."""
    present = {c for i in ids if i in labels for c, on in zip(cat_list, labels[i]) if on}
    return [c for c in meta["classes_without_instances"] if c in present]


def add_arguments(g):
    g.add_argument("--pool_source", default="sem_seg", choices=["sem_seg", "gt"],
                   help="instances from stage I pseudo masks, or from ground truth (upper-bound ablation)")
    g.add_argument("--pool_min_ratio", default=0.1, type=float,
                   help="smallest foreground share of an image kept in the pool (inclusive)")
    g.add_argument("--pool_max_ratio", default=0.7, type=float, help="largest foreground share kept in the pool (inclusive)")


def check_arguments(args):
    pyutils.require_range(args, ("pool_min_ratio", "pool_max_ratio"), unit=True)
    if args.pool_min_ratio > args.pool_max_ratio:
        raise pyutils.UserError("--pool_min_ratio must not exceed --pool_max_ratio")


@dist.main_only  # one process builds the pool folder; the others wait, then read it
def run(args):
    if args.pool_source == "sem_seg":
        mask_dir = args.pool_mask_dir
    elif args.pool_source == "gt":
        mask_dir = os.path.dirname(args.data.gt_path("x"))
    else:
        raise UserError(f"--pool_source must be 'sem_seg' or 'gt', got {args.pool_source!r}")
    ids = load_img_name_list(args.pool_list)
    log(f"instance pool: {len(ids)} masks of {args.pool_list} from {args.pool_source} ({mask_dir}), "
        f"foreground ratio {args.pool_min_ratio}..{args.pool_max_ratio}")
    meta = build_pool(ids, mask_dir, args.data.image_path, args.pool_dir,
                      min_ratio=args.pool_min_ratio, max_ratio=args.pool_max_ratio,
                      class_names=args.data.cat_list, source=args.pool_source, list_path=args.pool_list)
    log(f"instance pool: {meta['num_instances']} instances in {args.pool_dir}; rejected {meta['rejected']}")
    log("  " + ", ".join(f"{c} {n}" for c, n in meta["counts"].items() if n))
    missing = classes_never_pasted(meta, ids, load_cls_labels(args.cls_labels, args.data.cat_list), args.data.cat_list)
    if missing:
        log(f"  classes of {args.pool_list} without instances (never pasted): {', '.join(missing)}")
    return meta
