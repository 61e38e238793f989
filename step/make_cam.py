"""Step 2: multi-scale, flip-augmented class activation maps for every image of the training list.

Writes <cam_out_dir>/<id>.npz with `keys` (0-based classes present), `cam` (stride 4) and `high_res`
(image size), each map divided by its maximum.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from misc import dist, pyutils, torchutils, training
from net import resnet50_cam
from voc12.dataloader import VOC12ClassificationDatasetMSF, get_img_path


def strided_size(size, stride):
    return (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1


def _normalise(strided, high, keys, size):
    """Keep the maps of `keys`, crop high_res to the image and divide each map by its maximum."""
    strided = strided[keys]
    high = high[keys, :size[0], :size[1]]
    strided = strided / (F.adaptive_max_pool2d(strided, (1, 1)) + 1e-5)
    high = high / (F.adaptive_max_pool2d(high, (1, 1)) + 1e-5)
    return strided, high


def cams_for_image(model, scales_imgs, size, keys, device, amp=False):
    """Sum over scales of CAM(image) + flipped-back CAM(flip); returns (cam at stride 4, high_res), keys only.

    The straightforward path (one forward per scale); cams_for_batch is the same for several images."""
    h4, w4 = strided_size(size, 4)
    h16, w16 = strided_size(size, 16)
    strided, high = 0, 0
    for img in scales_imgs:
        with training.autocast(device, amp):
            out = model(training.to_device(img, device)).float()[None]  # (1, 20, h, w)
        strided = strided + F.interpolate(out, (h4, w4), mode="bilinear", align_corners=False)[0]
        high = high + F.interpolate(out, (h16 * 16, w16 * 16), mode="bilinear", align_corners=False)[0]
    return _normalise(strided, high, keys, size)


def cams_for_batch(model, scales_imgs, size, keys_list, device, amp=False):
    """cams_for_image for N images of one size (H, W): per scale one forward of all N image+flip pairs.

    scales_imgs: per scale a (N, 2, 3, h, w) tensor; keys_list: per image its class indices.
    Returns a list of N (cam, high_res) pairs."""
    h4, w4 = strided_size(size, 4)
    h16, w16 = strided_size(size, 16)
    strided, high = 0, 0
    for imgs in scales_imgs:
        with training.autocast(device, amp):
            out = model.forward_pairs(training.to_device(imgs.flatten(0, 1), device)).float()  # (N, 20, h, w)
        strided = strided + F.interpolate(out, (h4, w4), mode="bilinear", align_corners=False)
        high = high + F.interpolate(out, (h16 * 16, w16 * 16), mode="bilinear", align_corners=False)
    return [_normalise(strided[i], high[i], keys, size) for i, keys in enumerate(keys_list)]


def cam_path(cam_dir, name):
    return os.path.join(cam_dir, name + ".npz")


def load_cam(cam_dir, name, size=None, keys=None, strided=True):
    """Read one CAM file and check it: arrays that fit together, made for an image of `size` (H, W) and,
    given `keys` (the image's 0-based classes), for those classes. A file that fails is a UserError.
    strided=False accepts files without the stride-4 `cam` (infer_cls of psa writes `keys` and `high_res`)."""
    path = cam_path(cam_dir, name)
    pyutils.require_file(path, "CAM file", "run the make_cam step first (--make_cam_pass True)")
    d = pyutils.load_npz(path, keys=("keys", "cam", "high_res") if strided else ("keys", "high_res"))
    k, high = d["keys"], d["high_res"]
    cam = d.get("cam", high)  # without a stride-4 map, the checks below see high_res twice
    if not (k.ndim == 1 and k.dtype.kind in "iu" and cam.ndim == 3 and high.ndim == 3
            and cam.shape[0] == high.shape[0] == k.size and ((k >= 0) & (k < resnet50_cam.N_CLASSES)).all()):
        raise pyutils.UserError(f"{path} is not a CAM file of make_cam (keys {k.tolist()[:25]}, cam {cam.shape}, "
                                f"high_res {high.shape}); delete it and rerun make_cam")
    if size is not None:
        size = (int(size[0]), int(size[1]))
        h4, w4 = strided_size(size, 4) if "cam" in d else size
        if high.shape[1:] != size or cam.shape[1:] != (h4, w4):
            raise pyutils.UserError(f"{path} does not fit {name}, a {size[1]}x{size[0]} image: its high_res is "
                                    f"{high.shape[2]}x{high.shape[1]}, its stride-4 cam {cam.shape[2]}x{cam.shape[1]} "
                                    f"(expected {w4}x{h4}); it is another image's: rerun make_cam with --force")
    if keys is not None and not np.array_equal(k, np.asarray(keys).reshape(-1)):
        raise pyutils.UserError(f"{path} holds the CAMs of classes {k.tolist()}, but {name} has classes "
                                f"{np.asarray(keys).reshape(-1).tolist()}; rerun make_cam with --force")
    return d


def size_batches(dataset, indices, batch_size):
    """Batches of at most batch_size dataset indices whose images share one size (read from the file
    headers, which costs no decoding), so that make_cam can stack them into one forward per scale."""
    if batch_size <= 1:
        return [[i] for i in indices]
    groups = {}
    for i in indices:
        try:
            with Image.open(get_img_path(dataset.img_name_list[i], dataset.voc12_root)) as im:
                key = im.size
        except OSError:  # alone in its batch; the loader then reports the unreadable file
            key = ("unreadable", i)
        groups.setdefault(key, []).append(i)
    return [g[k:k + batch_size] for g in groups.values() for k in range(0, len(g), batch_size)]


def collate_same_size(items):
    """MSF items of one image size -> per scale one (N, 2, 3, h, w) tensor, and names, labels, size."""
    return {"name": [it["name"] for it in items],
            "img": [torch.from_numpy(np.stack([it["img"][s] for it in items])) for s in range(len(items[0]["img"]))],
            "size": tuple(int(v) for v in items[0]["size"]),
            "label": torch.from_numpy(np.stack([it["label"] for it in items]))}


def default_batch(device):
    # Batching same-size images fills a GPU better; on the CPU it gains little and costs memory.
    return 4 if str(device).startswith("cuda") else 1


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
    todo = dist.pending(dataset.img_name_list, lambda n: cam_path(args.cam_out_dir, n), args.force,
                        lambda n: (args.cam_weights_name,))
    batch = getattr(args, "cam_infer_batch", None) or default_batch(device)
    pyutils.log(f"make_cam: {len(todo)} of {len(dataset)} images to do, {batch} per forward -> {args.cam_out_dir}")
    loader = DataLoader(dataset, batch_sampler=size_batches(dataset, todo, batch), collate_fn=collate_same_size,
                        num_workers=args.num_workers, pin_memory=str(device).startswith("cuda"))
    bar = tqdm(total=len(todo), desc="make_cam", disable=not dist.is_main(), dynamic_ncols=True)
    with torch.inference_mode():
        for pack in loader:
            keys = [torch.nonzero(label)[:, 0] for label in pack["label"]]
            outs = cams_for_batch(model, pack["img"], pack["size"], [k.to(device) for k in keys], device, args.amp)
            for name, k, (cam, high) in zip(pack["name"], keys, outs):
                pyutils.save_npz(cam_path(args.cam_out_dir, name), keys=k.numpy().astype(np.int64),
                                 cam=cam.cpu().numpy().astype(np.float32),
                                 high_res=high.cpu().numpy().astype(np.float32))
            bar.update(len(pack["name"]))
    bar.close()
    dist.barrier()
