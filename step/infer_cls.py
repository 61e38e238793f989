"""Step 2 of AffinityNet (psa): multi-scale CAMs of PSA's classifier (jiwoon-ahn/psa infer_cls.py:52-83).

For every image of the training list: scales 1, 0.5, 1.5, 2 (bicubic, Python-rounded sizes), each with its
flip; forward_cam (ReLU at stride 8), bilinear upsampling (align_corners=False) straight to the image size,
flips turned back, the eight maps summed; each present class's map divided by its maximum + 1e-5. Unlike
IRNet's make_cam there is no stride-16 grid and no crop. Writes <cam_out_dir>/<id>.npz with `keys`
(0-based classes present) and `high_res` (K, H, W) float32: the files eval_cam, cam_to_crf and infer_aff read.

args read: train_list, voc12_root, cls_labels, cam_scales, cam_weights_name, cam_out_dir, device, amp,
num_workers, force. Resumable (an output newer than the weights is kept) and sharded under torchrun.
"""
import torch
import torch.nn.functional as F

from misc import cams, torchutils, training
from net import resnet38_cls
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


def run(args):
    model = resnet38_cls.Net(args.data.num_classes, backbone_weights="none", width=args.resnet38_width)
    torchutils.load_weights(model, args.cam_weights_name, "train_cls")
    dataset = VOC12ClassificationDatasetMSF(args.train_list, args.data, args.cls_labels,
                                            scales=tuple(args.cam_scales))
    cams.write_cams(args, dataset, model.to(args.device).eval(), psa_cams, "infer_cls")
