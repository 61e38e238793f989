"""Step 2: multi-scale, flip-augmented class activation maps for every image of the training list.

Writes <cam_out_dir>/<id>.npz with `keys` (0-based classes present), `cam` (stride 4) and `high_res`
(image size), each map divided by its maximum.
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from misc import cams, perimage, pyutils, torchutils, training
from misc.cams import strided_size
from net import resnet50_cam
from voc12.dataloader import VOC12ClassificationDatasetMSF


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


def size_batches(dataset, indices, batch_size):
    """Batches of at most batch_size dataset indices whose images share one size (read from the file
    headers, which costs no decoding), so that make_cam can stack them into one forward per scale."""
    if batch_size <= 1:
        return [[i] for i in indices]
    groups = {}
    for i in indices:
        try:
            with Image.open(dataset.data.image_path(dataset.img_name_list[i])) as im:
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


def add_arguments(g):
    g.add_argument("--cam_scales", default=(1.0, 0.5, 1.5, 2.0), type=float, nargs="+",
                   help="input scales of the CAM step (each with its flip)")
    g.add_argument("--cam_infer_batch", default=None, type=int,
                   help="make_cam: images of one size per forward (default 4 on CUDA, 1 on CPU)")
    g.add_argument("--compact_maps", type=pyutils.str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="store the CAMs (make_cam, infer_cls, infer_seam) and the la/ha CRF scores (cam_to_crf) as "
                        "float16, half the bytes (for COCO; README, Disk space); read back as float32. Existing "
                        "files are rewritten only with --force")


def check_arguments(args):
    pyutils.require_range(args, ("cam_scales",), positive=True)
    if args.cam_infer_batch is not None:
        pyutils.require_range(args, ("cam_infer_batch",), at_least=1)


def run(args):
    device = args.device
    model = resnet50_cam.CAM(args.data.num_classes)
    torchutils.load_weights(model, args.cam_weights_name, "train_cam")
    model = model.to(device).eval()
    if str(device).startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)

    dataset = VOC12ClassificationDatasetMSF(args.train_list, args.data, args.cls_labels,
                                            scales=tuple(args.cam_scales))
    pyutils.log(f"make_cam: {args.cam_infer_batch} images of one size per forward")
    todo = perimage.pending("make_cam", dataset.img_name_list,
                            lambda n: cams.cam_path(args.cam_out_dir, n), args, lambda n: (args.cam_weights_name,),
                            out_dirs=[args.cam_out_dir])

    compact = getattr(args, "compact_maps", False)  # a namespace made by hand may lack it

    def work(pack):
        keys = [torch.nonzero(label)[:, 0] for label in pack["label"]]
        outs = cams_for_batch(model, pack["img"], pack["size"], [k.to(device) for k in keys], device, args.amp)
        for name, k, (cam, high) in zip(pack["name"], keys, outs):
            cams.save_cams(args.cam_out_dir, name, k.numpy(), high, cam, compact=compact)
        return len(pack["name"])

    perimage.for_each_loaded("make_cam", dataset, todo, work, args.num_workers,
                             batch_sampler=size_batches(dataset, todo, args.cam_infer_batch),
                             collate_fn=collate_same_size, pin_memory=str(device).startswith("cuda"))
