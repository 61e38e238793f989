"""Step 2 of AffinityNet (psa): multi-scale CAMs of PSA's classifier (jiwoon-ahn/psa infer_cls.py:52-83).

For every image of the training list: scales 1, 0.5, 1.5, 2 (bicubic, Python-rounded sizes), each with its
flip; forward_cam (ReLU at stride 8), bilinear upsampling (align_corners=False) straight to the image size,
flips turned back, the eight maps summed; each present class's map divided by its maximum + 1e-5. Unlike
IRNet's make_cam there is no stride-16 grid and no crop. Writes <cam_out_dir>/<id>.npz with `keys`
(0-based classes present) and `high_res` (K, H, W) float32: the files eval_cam, cam_to_crf and infer_aff read.

args read: train_list, voc12_root, cls_labels, cam_scales, cam_weights_name, cam_out_dir, device, amp,
num_workers, force. Resumable (an output newer than the weights is kept) and sharded under torchrun.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from misc import dist, pyutils, torchutils, training
from net import resnet38_cls
from step.make_cam import cam_path
from voc12.dataloader import VOC12ClassificationDatasetMSF


def psa_cams(model, scales_imgs, size, keys, device, amp=False):
    """Normalised CAMs (K, H, W) of the classes `keys` (0-based) from the per-scale [image, flip] stacks."""
    total = 0
    for pair in scales_imgs:
        with training.autocast(device, amp):
            cam = model.forward_cam(pair.to(device)).float()
        cam = F.interpolate(cam, size, mode="bilinear", align_corners=False)[:, keys]
        total = total + cam[0] + cam[1].flip(-1)
    if not torch.is_tensor(total):
        raise ValueError("no scale given")
    return total / (F.adaptive_max_pool2d(total, (1, 1)) + 1e-5)


def write_cams(args, model, cams_fn, desc):
    """For every image of the training list still to do, cams_fn(model, per-scale [image, flip] stacks, (H, W),
    keys on the device, device, amp) -> (K, H, W) into <cam_out_dir>/<id>.npz (`keys`, `high_res`). Shared by
    infer_cls and infer_seam."""
    device = args.device
    dataset = VOC12ClassificationDatasetMSF(args.train_list, args.voc12_root, args.cls_labels,
                                            scales=tuple(args.cam_scales))
    os.makedirs(args.cam_out_dir, exist_ok=True)
    todo = dist.pending(dataset.img_name_list, lambda n: cam_path(args.cam_out_dir, n), args.force,
                        lambda n: (args.cam_weights_name,))
    pyutils.log(f"{desc}: {len(todo)} of {len(dataset)} images to do -> {args.cam_out_dir}")
    loader = DataLoader(Subset(dataset, todo), batch_size=None, num_workers=args.num_workers)
    with torch.inference_mode():
        for pack in tqdm(loader, desc=desc, disable=not dist.is_main(), dynamic_ncols=True):
            size = tuple(int(s) for s in pack["size"])
            keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0]
            high = cams_fn(model, [torch.as_tensor(x) for x in pack["img"]], size, keys.to(device), device, args.amp)
            pyutils.save_npz(cam_path(args.cam_out_dir, pack["name"]), keys=keys.numpy().astype(np.int64),
                             high_res=high.cpu().numpy().astype(np.float32))
    dist.barrier()


def run(args):
    model = resnet38_cls.Net(backbone_weights="none", width=args.resnet38_width)
    torchutils.load_weights(model, args.cam_weights_name, "train_cls")
    write_cams(args, model.to(args.device).eval(), psa_cams, "infer_cls")
