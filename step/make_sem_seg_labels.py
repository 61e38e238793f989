"""Step 6: pseudo masks by a random walk of the CAMs over the affinities of the predicted boundary map.

Images: args.sem_seg_lists (list files, their union in order, each image once; the driver sets it to
--infer_list plus, in stage I, --pool_list), or args.infer_list alone.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from misc import dist, imutils, indexing, pyutils
from net import resnet50_irn
from step.make_cam import cam_path, load_cam
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


def run(args):
    device = args.device
    # Padding to the training crop (512 in the reference) keeps GroupNorm statistics as in training.
    model = resnet50_irn.EdgeDisplacement(crop_size=args.irn_crop_size)
    resnet50_irn.load_irn_weights(model, args.irn_weights_name)
    model = model.to(device).eval()

    # stage I also masks --pool_list for the instance pool (CDA walks over train_aug): one pass, each image once
    lists = getattr(args, "sem_seg_lists", None) or [args.infer_list]
    dataset = VOC12ClassificationDatasetMSF(lists, args.voc12_root, args.cls_labels, scales=(1.0,))
    os.makedirs(args.sem_seg_out_dir, exist_ok=True)

    def out(name):
        return os.path.join(args.sem_seg_out_dir, name + ".png")

    todo = dist.pending(dataset.img_name_list, out, args.force,
                        lambda n: (args.irn_weights_name, cam_path(args.cam_out_dir, n)))
    pyutils.log(f"make_sem_seg_labels: {len(todo)} of {len(dataset)} images to do -> {args.sem_seg_out_dir}")
    loader = DataLoader(Subset(dataset, todo), batch_size=None, num_workers=args.num_workers)
    with torch.inference_mode():
        for pack in tqdm(loader, desc="make_sem_seg_labels", disable=not dist.is_main(), dynamic_ncols=True):
            size = tuple(int(s) for s in pack["size"])
            keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0].numpy()
            cam = load_cam(args.cam_out_dir, pack["name"], size, keys)
            edge, _ = model(pack["img"][0].to(device))
            cams = torch.from_numpy(cam["cam"]).to(device)
            label = walk_to_label(cams, cam["keys"], edge, size, args.beta, args.exp_times, args.sem_seg_bg_thres)
            imutils.save_label_png(out(pack["name"]), label)
    dist.barrier()
