"""Step 2: multi-scale, flip-augmented class activation maps for every image of the training list.

Writes <cam_out_dir>/<id>.npz with `keys` (0-based classes present), `cam` (stride 4) and `high_res`
(image size), each map divided by its maximum.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from misc import dist, pyutils, torchutils, training
from net import resnet50_cam
from voc12.dataloader import VOC12ClassificationDatasetMSF


def strided_size(size, stride):
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def cams_for_image(model, scales_imgs, size, keys, device, amp=False):
    """Sum over scales of CAM(image) + flipped-back CAM(flip); returns (cam at stride 4, high_res), keys only."""
    h4, w4 = strided_size(size, 4)
    h16, w16 = strided_size(size, 16)
    strided, high = 0, 0
    for img in scales_imgs:
        with training.autocast(device, amp):
            out = model(training.to_device(img, device)).float()[None]  # (1, 20, h, w)
        strided = strided + F.interpolate(out, (h4, w4), mode="bilinear", align_corners=False)[0]
        high = high + F.interpolate(out, (h16 * 16, w16 * 16), mode="bilinear", align_corners=False)[0]
    strided = strided[keys]
    high = high[keys, :size[0], :size[1]]
    strided = strided / (F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5)
    high = high / (F.adaptive_max_pool2d(high, (1, 1)) + 1e-5)
    return strided, high


def cam_path(cam_dir, name):
    return os.path.join(cam_dir, name + ".npz")


def load_cam(cam_dir, name, size=None):
    """Read one CAM file and check it belongs to an image of `size` (H, W)."""
    path = cam_path(cam_dir, name)
    pyutils.require_file(path, "CAM file", "run the make_cam step first (--make_cam_pass True)")
    d = pyutils.load_npz(path, keys=("keys", "cam", "high_res"))
    if size is not None and tuple(d["high_res"].shape[1:]) != tuple(size) and d["keys"].size:
        raise pyutils.UserError(f"{path} is for a {d['high_res'].shape[2]}x{d['high_res'].shape[1]} image but "
                                f"{name} is {size[1]}x{size[0]}; rerun make_cam with --force")
    return d


def run(args):
    device = args.device
    model = resnet50_cam.CAM()
    torchutils.load_weights(model, args.cam_weights_name, "train_cam")
    model = model.to(device).eval()
    if str(device).startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)

    dataset = VOC12ClassificationDatasetMSF(args.train_list, args.voc12_root, args.cls_labels,
                                            scales=tuple(args.cam_scales))
    os.makedirs(args.cam_out_dir, exist_ok=True)
    todo = [i for i in dist.shard(list(range(len(dataset))))
            if args.force or not pyutils.is_fresh(cam_path(args.cam_out_dir, dataset.img_name_list[i]),
                                                  args.cam_weights_name)]
    pyutils.log(f"make_cam: {len(todo)} of {len(dataset)} images to do -> {args.cam_out_dir}")
    loader = DataLoader(Subset(dataset, todo), batch_size=None, num_workers=args.num_workers)
    with torch.inference_mode():
        for pack in tqdm(loader, desc="make_cam", disable=not dist.is_main(), dynamic_ncols=True):
            size = tuple(int(s) for s in pack["size"])
            keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0]
            cam, high = cams_for_image(model, pack["img"], size, keys.to(device), device, args.amp)
            pyutils.save_npz(cam_path(args.cam_out_dir, pack["name"]), keys=keys.numpy().astype(np.int64),
                             cam=cam.cpu().numpy().astype(np.float32), high_res=high.cpu().numpy().astype(np.float32))
    dist.barrier()
