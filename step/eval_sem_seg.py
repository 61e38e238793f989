"""Step 7: mIoU of the random-walk pseudo masks (255 counted as background)."""
import os

from tqdm import tqdm

from misc import dist, metrics, pyutils
from misc.imutils import read_label_png
from voc12.dataloader import eval_ids, gt_mask


@dist.main_only  # one writer of results.json; the other processes wait here
def run(args):
    conf = metrics.ConfusionMatrix(args.data.class_names)
    for name in tqdm(eval_ids(args.data, args.chainer_eval_set, args.eval_list), desc="eval_sem_seg",
                     dynamic_ncols=True):
        path = os.path.join(args.sem_seg_out_dir, name + ".png")
        pyutils.require_file(path, "pseudo mask", "run make_sem_seg_labels first (--make_sem_seg_pass True)")
        pred = read_label_png(path, num_classes=conf.n).copy()
        pred[pred == 255] = 0
        conf.update(gt_mask(args.data, name), pred, name)
    result = conf.as_dict()
    pyutils.log(metrics.format_iou_table(result, f"pseudo-mask IoU ({args.stage}, {args.sem_seg_out_dir})"))
    metrics.record(args.results_path, args.stage, "sem_seg", result)
    return result
