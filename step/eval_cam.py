"""Step 3: mIoU of the CAMs on the evaluation split, background = a constant threshold."""
import os

import numpy as np
from tqdm import tqdm

from misc import dist, metrics, pyutils
from misc.imutils import bg_argmax, image_size, read_label_png
from step.make_cam import load_cam
from voc12.dataloader import load_img_name_list


def eval_ids(args):
    """Ids of the evaluation split, read from the devkit as the reference did (chainer_eval_set)."""
    if getattr(args, "eval_list", None):
        return load_img_name_list(args.eval_list)
    return load_img_name_list(os.path.join(args.voc12_root, "ImageSets", "Segmentation",
                                           args.chainer_eval_set + ".txt"))


def gt_mask(args, name):
    """The ground truth of `name`, checked against its image's size and VOC's labels (0..20, 255): a bad
    mask is named as such instead of passing for a wrong prediction."""
    path = os.path.join(args.voc12_root, "SegmentationClass", name + ".png")
    pyutils.require_file(path, "ground-truth mask", "the devkit needs SegmentationClass/ for evaluation")
    size = image_size(os.path.join(args.voc12_root, "JPEGImages", name + ".jpg"))
    return read_label_png(path, size=size, num_classes=metrics.N_CLASSES)


def cam_to_label(cam, keys, threshold):
    """argmax over [threshold, cams], mapped to VOC labels (key + 1, background 0)."""
    return np.concatenate([[0], keys + 1])[bg_argmax(cam, threshold)]


@dist.main_only  # one writer of results.json; the other processes wait here
def run(args):
    conf = metrics.ConfusionMatrix()
    for name in tqdm(eval_ids(args), desc="eval_cam", dynamic_ncols=True):
        gt = gt_mask(args, name)
        d = load_cam(args.cam_out_dir, name, gt.shape, strided=False)
        conf.update(gt, cam_to_label(d["high_res"], d["keys"], args.cam_eval_thres), name)
    result = conf.as_dict()
    result["threshold"] = args.cam_eval_thres
    pyutils.log(metrics.format_iou_table(result, f"CAM IoU ({args.stage}, {args.cam_out_dir}, "
                                                 f"threshold {args.cam_eval_thres})"))
    metrics.record(args.results_path, args.stage, "cam", result)
    return result
