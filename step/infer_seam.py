"""Step 2 of SEAM: multi-scale CAMs of the PCM output (YudeWang/SEAM infer_SEAM.py:50-85).

For every image of the training list: scales 0.5, 1, 1.5, 2 (bicubic, Python-rounded sizes, as PSA's),
each with its flip; the PCM output cam_rv (already at the scaled input size) of the 20 classes, bilinear
upsampling (align_corners=False) to the image size, flips turned back, the eight maps summed; then
SEAM's min-max rule (seam_normalize). Writes <cam_out_dir>/<id>.npz with `keys` (0-based classes
present) and `high_res` (K, H, W) float32 (misc/cams.py).

args read: train_list, voc12_root, cls_labels, cam_scales, cam_weights_name, cam_out_dir, resnet38_width,
device, amp, num_workers, force. Resumable (an output newer than the weights is kept) and sharded under
torchrun.
"""
import torch
import torch.nn.functional as F

from misc import cams, torchutils, training
from net import resnet38_SEAM
from voc12.dataloader import VOC12ClassificationDatasetMSF


def seam_normalize(sum_cam, eps=1e-5):
    """SEAM's normalisation of summed CAMs (C, H, W) (infer_SEAM.py:73-77), per channel: negatives -> 0;
    with min and max of the result, values below min + eps -> 0, then (v - min - eps) / (max - min + eps).

    So the pixels at the minimum come out negative, -(min + eps) / (max - min + eps), and an all-zero
    map (an absent class, or a present one that the PCM never reaches) is -1 everywhere."""
    cam = F.relu(sum_cam)
    hi = torch.amax(cam, dim=(-2, -1), keepdim=True)
    lo = torch.amin(cam, dim=(-2, -1), keepdim=True)
    cam = torch.where(cam < lo + eps, torch.zeros_like(cam), cam)
    return (cam - lo - eps) / (hi - lo + eps)


def seam_cams(model, scales_imgs, size, keys, device, amp=False):
    """Normalised CAMs (K, H, W) of the classes `keys` (0-based) from the per-scale [image, flip] stacks
    (2, 3, h, w): channels 1.. of the PCM output. The reference multiplies every map by the 0/1 label
    before summing; keeping the present classes only is the same for them (the others would be -1)."""
    keys = torch.as_tensor(keys, device=device)
    total = 0
    for pair in scales_imgs:
        with training.autocast(device, amp):
            cam_rv = model(pair.to(device))[1].float()
        cam_rv = F.interpolate(cam_rv[:, 1:], size, mode="bilinear", align_corners=False)[:, keys]
        total = total + cam_rv[0] + cam_rv[1].flip(-1)
    if not torch.is_tensor(total):
        raise ValueError("no scale given")
    return seam_normalize(total)


def run(args):
    model = resnet38_SEAM.Net(args.data.num_classes, backbone_weights="none", width=args.resnet38_width)
    torchutils.load_weights(model, args.cam_weights_name, "train_seam")  # strict, as infer_SEAM.py:33
    dataset = VOC12ClassificationDatasetMSF(args.train_list, args.data, args.cls_labels,
                                            scales=tuple(args.cam_scales))
    cams.write_cams(args, dataset, model.to(args.device).eval(), seam_cams, "infer_seam")
