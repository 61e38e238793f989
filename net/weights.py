"""The weights files of a run checked for their keys before the first step.

check(args, step, path, what) builds the network that `step` loads `path` into on the meta device (shapes only:
no memory, no initialisation) and runs that step's own loader on it. The check is therefore exactly as strict as
the load that comes hours later: the same key transforms (a whole CAM/IRN checkpoint's `resnet50.*` part as a
ResNet-50 backbone, torchvision's fc dropped, a ResNet-38 checkpoint's head dropped, IRNet's loss buffers
dropped, MXNet names renamed), the same missing / unexpected / wrong-shape test
(misc.torchutils.load_state_dict_checked, which loads nothing into a meta network). A .pth is memory-mapped, so
only its index is read; an MXNet .params file is read whole (NumPy, ~0.5 GB for ResNet-38).

LOADERS repeats how each step builds its network (step/<step>.py, the line that builds and loads it);
tests/test_config.py saves each real network and checks that it passes.
"""
import torch

from misc import pyutils, torchutils
from misc.pyutils import UserError
from net import deeplab, resnet38_aff, resnet38_cls, resnet38_SEAM, resnet50_cam, resnet50_irn

# What a file given to a step must be, for the hint of a mismatch
RESNET50 = "a ResNet-50 state dict (torchvision's, or a CAM / IRN checkpoint of this code, IRNet's or CDA's)"
RESNET38 = "ResNet-38 weights (the MXNet .params of ImageNet, or a .pth of the backbone or of a PSA / SEAM network)"


def _seg_classes(args):
    return len(args.data.class_names)


# step -> (load(args, path) as the step does it, what the file must be)
LOADERS = {
    # training steps: their backbone flag (step/train_cam.py, train_irn.py, train_cls.py, train_seam.py,
    # train_aff.py, train_seg.py)
    "train_cam": (lambda a, p: resnet50_cam.Net(a.data.num_classes, backbone_weights=p, from_scratch=a.from_scratch),
                  RESNET50),
    "train_irn": (lambda a, p: resnet50_irn.Net(backbone_weights=p), RESNET50),
    "train_cls": (lambda a, p: resnet38_cls.Net(a.data.num_classes, backbone_weights=p, width=a.resnet38_width),
                  RESNET38),
    "train_seam": (lambda a, p: resnet38_SEAM.Net(a.data.num_classes, backbone_weights=p, width=a.resnet38_width),
                   RESNET38),
    "train_aff": (lambda a, p: resnet38_aff.Net(backbone_weights=p, width=a.resnet38_width), RESNET38),
    "train_seg": (lambda a, p: deeplab.build(_seg_classes(a), a.seg_arch, a.seg_backbone_depth, p),
                  "a torchvision-style ResNet state dict of --seg_backbone_depth (its fc is dropped)"),
    # inference steps: the weights of a training step that does not run in this stage
    "make_cam": (lambda a, p: torchutils.load_weights(resnet50_cam.CAM(a.data.num_classes), p, "train_cam"),
                 "train_cam's weights (ours, IRNet's or CDA's res50_cam.pth)"),
    "infer_cls": (lambda a, p: torchutils.load_weights(
        resnet38_cls.Net(a.data.num_classes, width=a.resnet38_width), p, "train_cls"),
        "train_cls's weights (PSA's res38_cls.pth) of a ResNet-38 of --resnet38_width"),
    "infer_seam": (lambda a, p: torchutils.load_weights(
        resnet38_SEAM.Net(a.data.num_classes, width=a.resnet38_width), p, "train_seam"),
        "train_seam's weights (SEAM's resnet38_SEAM.pth) of a ResNet-38 of --resnet38_width"),
    "make_sem_seg": (lambda a, p: resnet50_irn.load_irn_weights(resnet50_irn.EdgeDisplacement(a.irn_crop_size), p),
                     "train_irn's weights (ours, IRNet's or CDA's res50_irn.pth)"),
    "infer_aff": (lambda a, p: torchutils.load_weights(
        resnet38_aff.Net(radius=a.aff_radius, width=a.resnet38_width, seam_small_maps=a.aff_seam_radius), p,
        "train_aff"), "train_aff's weights (PSA's res38_aff.pth) of a ResNet-38 of --resnet38_width"),
    "eval_seg": (lambda a, p: torchutils.load_checkpoint(
        deeplab.build(_seg_classes(a), a.seg_arch, a.seg_backbone_depth, "none"), p, what="segmentation weights",
        written_by="step train_seg"), "train_seg's weights of the same --seg_arch and --seg_backbone_depth"),
}


def check(args, step, path, what):
    """UserError (one line: `what`, the file, how many keys are missing / unexpected / of the wrong shape, what to
    do) unless `step` would load `path` without complaint."""
    load, expected = LOADERS[step]
    try:
        with torch.device("meta"):
            load(args, path)
    except UserError as e:
        fix = "or none / imagenet" if step.startswith("train_") else "or train it in this run (its step switch)"
        raise UserError(f"{what} (read by {step}): {pyutils.one_line(e)}; pass {expected}, {fix}") from e

