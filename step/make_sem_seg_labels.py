"""Step 6: pseudo masks by a random walk of the CAMs over the affinities of the predicted boundary map.

Images: args.sem_seg_lists (list files, their union in order, each image once; misc.stages.stage_args sets
it: --infer_list, plus in stage I --pool_list, plus --seg_train_list when the segmentation network follows).
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

from misc import cams, imutils, indexing, perimage, pyutils
from net import resnet50_irn
from voc12.dataloader import VOC12ClassificationDatasetMSF


def walk_to_label(cams, keys, edge, size, beta, exp_times, bg_thres):
    """Propagate the stride-4 CAMs along the boundary map, upsample x4 and threshold the background."""
    if keys.size == 0:
        return np.zeros(size, np.uint8)
    rw = indexing.propagate_to_edge(cams, edge, beta=beta, exp_times=exp_times, radius=5)
    rw = F.interpolate(rw, scale_factor=4, mode="bilinear", align_corners=False)[:, 0, :size[0], :size[1]]
    rw = rw / torch.max(rw)
    scores = F.pad(rw, (0, 0, 0, 0, 1, 0), value=bg_thres)
    labels = np.concatenate([[0], keys + 1]).astype(np.uint8)
    return labels[torch.argmax(scores, dim=0).cpu().numpy()]


def add_arguments(g):
    g.add_argument("--beta", default=10, type=float, help="affinity exponent of the random walk (psa: 8)")
    g.add_argument("--exp_times", "--logt", default=8, type=int,
                   help="the random walk takes 2**exp_times steps (PSA's --logt)")
    g.add_argument("--sem_seg_bg_thres", default=0.25, type=float, help="irn: background score of the pseudo masks")


def check_arguments(args):
    pyutils.require_range(args, ("beta",), positive=True)
    pyutils.require_range(args, ("exp_times",), at_least=0)
    pyutils.require_range(args, ("sem_seg_bg_thres",), unit=True)


def run(args):
    device = args.device
    # Padding to the training crop (512 in the reference) keeps GroupNorm statistics as in training.
    model = resnet50_irn.EdgeDisplacement(crop_size=args.irn_crop_size)
    resnet50_irn.load_irn_weights(model, args.irn_weights_name)
    model = model.to(device).eval()

    # stage I also masks --pool_list for the instance pool (CDA walks over train_aug): one pass, each image once
    dataset = VOC12ClassificationDatasetMSF(args.sem_seg_lists, args.data, args.cls_labels, scales=(1.0,))

    def out(name):
        return os.path.join(args.sem_seg_out_dir, name + ".png")

    todo = perimage.pending("make_sem_seg_labels", dataset.img_name_list, out, args,
                            lambda n: (args.irn_weights_name, cams.cam_path(args.cam_out_dir, n)),
                            out_dirs=[args.sem_seg_out_dir])

    def work(pack):
        size = tuple(int(s) for s in pack["size"])
        keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0].numpy()
        cam = cams.load_cam(args.cam_out_dir, pack["name"], size, keys, num_classes=args.data.num_classes)
        edge, _ = model(pack["img"][0].to(device))
        label = walk_to_label(torch.from_numpy(cam["cam"]).to(device), cam["keys"], edge, size, args.beta,
                              args.exp_times, args.sem_seg_bg_thres)
        imutils.save_label_png(out(pack["name"]), label, args.data.palette)

    perimage.for_each_loaded("make_sem_seg_labels", dataset, todo, work, args.num_workers)
