"""Step 8: train the segmentation network (DeepLab) on the pseudo masks, as kazuto1011/deeplab-pytorch
trains DeepLab-v2 on PASCAL VOC (configs/voc12.yaml, main.py train, libs/datasets/base.py):

- poly learning rate 2.5e-4 * (1 - it / 20000) ** 0.9, recomputed every 10 iterations; the head gets 10x
  (weights) and 20x (biases, without weight decay); SGD momentum 0.9, weight decay 5e-4;
- 20,000 iterations of 10 images as theirs: 2 forward/backward passes of 5 with the gradients accumulated, each
  pass's loss averaged over its own labelled pixels and halved (--seg_iter_size 2: half the activation memory
  of one forward of 10; 1: one forward of 10 averaged over all its labelled pixels). Where a BatchNorm
  normalises with batch statistics (--from_scratch, the demo; DeepLab-v3+'s head) the 10 go through one forward
  with the same per-group loss, since passes of 5 would normalise with other statistics;
- crops of 321 after a rescale by a factor drawn from (0.5, 0.75, 1.0, 1.25, 1.5), random mirror;
- multi-scale loss (MSC): cross entropy (255 ignored) on the logits of the crop, of its 0.5x and 0.75x
  copies and of their pixel-wise max, each against the mask resized (nearest) to its size;
- BatchNorm frozen (statistics and affine parameters).
One difference: the backbone starts from torchvision's ImageNet ResNet-101 (deeplab-pytorch starts from the
DeepLab authors' COCO-trained caffemodel), so images are normalised with ImageNet's mean and std.

Reads from args (defaults in add_arguments; run_sample.py adds the environment ones):
  seg_arch, seg_backbone_depth, seg_backbone_weights, seg_label_dir (None: sem_seg_out_dir), seg_train_list,
  seg_crop_size, seg_rescale, seg_msc_scales, seg_batch_size, seg_iter_size, seg_num_iters, seg_learning_rate,
  seg_momentum, seg_weight_decay, seg_checkpoint_every, seg_weights_name;
  voc12_root, sem_seg_out_dir, from_scratch (False), device, amp, seed, num_workers, resume.
Writes seg_weights_name (a state dict) and seg_weights_name + '.ckpt' (resume point every
seg_checkpoint_every iterations).
"""
import math
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from misc import dist, pyutils, torchutils, training
from net import deeplab
from voc12.seg_dataset import PseudoMaskStream, StreamSampler

IGNORE = 255

# The demo (toy devkit, 2 CPU cores, no ImageNet weights; misc/demo.DEFAULTS takes these). A demo-sized network,
# named as such: DeepLab-v3+ on a ResNet-50 trained from scratch (--from_scratch: BatchNorm in training mode).
# DeepLab-v2's head sums four BatchNorm-free 3x3 convolutions over 2048 channels: on random features its 10x/20x
# rates either diverge (base lr >= 2.5e-4) or leave the loss flat (1e-4), while v3+'s normalised head learns at the
# CAM demo's lr 0.01. 100 iterations of 8 crops of 64 (~3 passes over the toy's 240 images), single-scale loss;
# inference keeps the reference's scales and CRF.
DEMO_DEFAULTS = dict(seg_arch="deeplabv3plus", seg_backbone_depth=50, seg_backbone_weights="none", seg_crop_size=64,
                     seg_batch_size=8, seg_num_iters=100, seg_checkpoint_every=25, seg_learning_rate=0.01,
                     seg_msc_scales=())
LR_DECAY_EVERY = 10  # deeplab-pytorch SOLVER.LR_DECAY: the poly rate is updated every 10 iterations
POLY_POWER = 0.9  # SOLVER.POLY_POWER


def add_arguments(group):
    """Every flag of train_seg and eval_seg, with deeplab-pytorch's VOC settings as defaults."""
    g = group
    g.add_argument("--seg_arch", default="deeplabv2", choices=deeplab.ARCHS,
                   help="segmentation network: DeepLab-v2 (ASPP 6/12/18/24, stride 8) or DeepLab-v3+")
    g.add_argument("--seg_backbone_depth", default=101, type=int, choices=sorted(deeplab.DEPTHS),
                   help="ResNet depth of the segmentation backbone (50 only for the demo)")
    g.add_argument("--seg_backbone_weights", default="imagenet",
                   help="imagenet | none | PATH to a ResNet state dict of that depth")
    g.add_argument("--seg_label_dir", default=None,
                   help="pseudo masks to train on (default: the stage's --sem_seg_out_dir)")
    g.add_argument("--seg_train_list", default=None, help="images that train the network (default: --train_list)")
    g.add_argument("--seg_val_list", default=None, help="images predicted and scored by eval_seg (default: --val_list)")
    g.add_argument("--seg_test_list", default=None,
                   help="images predicted for the evaluation server (default voc12: ImageSets/Segmentation/test.txt "
                        "of --data_root when it is there, else none; coco14: none; '' or absent images: skipped)")
    g.add_argument("--seg_crop_size", default=321, type=int, help="random crop of train_seg")
    g.add_argument("--seg_rescale", default=(0.5, 0.75, 1.0, 1.25, 1.5), type=float, nargs="+",
                   help="train_seg rescales each image by one of these factors")
    g.add_argument("--seg_msc_scales", default=(0.5, 0.75), type=float, nargs="*",
                   help="extra input scales of the multi-scale loss; none: one scale")
    g.add_argument("--seg_batch_size", default=10, type=int, help="global batch (deeplab-pytorch: 5 x 2 accumulated)")
    g.add_argument("--seg_iter_size", default=2, type=int,
                   help="gradient accumulation as deeplab-pytorch's ITER_SIZE 2: each step is this many "
                        "forward/backward passes of seg_batch_size / seg_iter_size images, each averaged over its own "
                        "labelled pixels; 1: one pass, one average (--from_scratch: one forward, the loss averaged "
                        "per group)")
    g.add_argument("--seg_num_iters", default=20000, type=int, help="training iterations")
    g.add_argument("--seg_learning_rate", default=2.5e-4, type=float,
                   help="backbone lr; head weights 10x, head biases 20x")
    g.add_argument("--seg_momentum", default=0.9, type=float)
    g.add_argument("--seg_weight_decay", default=5e-4, type=float, help="(none on the head's biases)")
    g.add_argument("--seg_checkpoint_every", default=1000, type=int,
                   help="iterations between resume checkpoints (and log lines)")
    g.add_argument("--seg_infer_scales", default=(1.0, 0.5, 0.75), type=float, nargs="+",
                   help="eval_seg input scales, fused by pixel-wise max")
    g.add_argument("--seg_infer_flip", type=pyutils.str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="eval_seg also fuses the mirrored image")
    g.add_argument("--seg_crf", type=pyutils.str2bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="dense CRF on eval_seg's probabilities")
    g.add_argument("--seg_crf_image", default="reference", choices=["reference", "raw"],
                   help="the image the CRF's bilateral kernel sees: reference = deeplab-pytorch main.py's, the BGR "
                        "image minus its mean cast to uint8 (values below the mean wrap around); raw = the image")
    return g


def check_arguments(args):
    """Nonsense seg flags: one line, before anything runs."""
    for name in ("seg_crop_size", "seg_batch_size", "seg_num_iters", "seg_checkpoint_every"):
        if getattr(args, name) < 1:
            raise pyutils.UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("seg_rescale", "seg_infer_scales", "seg_msc_scales"):
        v = list(getattr(args, name))
        if (not v and name != "seg_msc_scales") or any(s <= 0 for s in v):
            raise pyutils.UserError(f"--{name} needs positive scales, got {v}")
    if args.seg_learning_rate <= 0 or args.seg_weight_decay < 0 or not 0 <= args.seg_momentum < 1:
        raise pyutils.UserError("--seg_learning_rate must be positive, --seg_weight_decay not negative and "
                                "--seg_momentum within [0, 1)")
    if args.seg_batch_size % dist.world_size():
        raise pyutils.UserError(f"--seg_batch_size {args.seg_batch_size} is the global batch of "
                                f"{dist.world_size()} processes: make it a multiple of {dist.world_size()}")
    local_groups(args.seg_batch_size, args.seg_iter_size, dist.world_size())


def local_groups(batch, iter_size, world):
    """Loss groups of each process, its forward/backward passes per step: the global batch is iter_size
    groups of batch / iter_size images, and each process must hold whole groups (UserError otherwise)."""
    if iter_size < 1 or batch % iter_size:
        raise pyutils.UserError(f"--seg_iter_size {iter_size} must be at least 1 and divide --seg_batch_size {batch}")
    group, per = batch // iter_size, batch // world
    if iter_size > 1 and per % group:
        raise pyutils.UserError(f"--seg_iter_size {iter_size}: each of the {world} processes holds {per} images, not "
                                f"a whole number of loss groups of {group}; pick another --seg_iter_size (1: one "
                                "average over the global batch) or --seg_batch_size")
    return per // group if iter_size > 1 else 1


class SegPolyOptimizer(torchutils.PolyOptimizer):
    """Poly decay updated every LR_DECAY_EVERY iterations (deeplab-pytorch's PolynomialLR)."""

    def poly_lr_mult(self, step):
        return super().poly_lr_mult(step - step % LR_DECAY_EVERY)


def resize_labels(label, size):
    """Masks (N, H, W) to a logit size, nearest neighbour with pixel-centre sampling (PIL's NEAREST, which
    deeplab-pytorch uses: it names other nearest modes misaligned)."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()


def segmentation_loss(outputs, label, groups=1, iter_size=1):
    """Sum over the outputs of the cross entropy (255 ignored).

    iter_size 1: averaged over the labelled pixels of the *global* batch (the counts are summed over processes,
    so a step on several processes moves the weights as one does). iter_size > 1: deeplab-pytorch's
    accumulation, each of the batch's iter_size groups of consecutive images averaged over its own labelled
    pixels and divided by iter_size; `outputs` hold `groups` of them, whose losses are summed (one per
    accumulated pass: groups 1; the from-scratch single forward: all of this process's). Scaled by the world
    size, which DistributedDataParallel's gradient mean divides out. A group without a labelled pixel adds 0
    (the reference's loss would be NaN)."""
    labels = [resize_labels(label, o.shape[-2:]) for o in outputs]
    if iter_size > 1:
        total = 0
        for o, lab in zip(outputs, labels):
            ce = F.cross_entropy(o.float(), lab, ignore_index=IGNORE, reduction="none").flatten(1).sum(1)
            n = (lab != IGNORE).flatten(1).sum(1)
            ce, n = ce.view(groups, -1).sum(1), n.view(groups, -1).sum(1)
            total = total + (ce / n.clamp(min=1)).sum()
        return total * dist.world_size() / iter_size
    counts = torch.stack([(lab != IGNORE).sum() for lab in labels]).double()
    counts = dist.all_reduce_sum(counts) / dist.world_size()
    total = 0
    for o, lab, n in zip(outputs, labels, counts.tolist()):
        total = total + F.cross_entropy(o.float(), lab, ignore_index=IGNORE, reduction="sum") / max(n, 1.0)
    return total


def uses_batch_statistics(net):
    """Whether a BatchNorm of `net` normalises with its batch's statistics in training mode (--from_scratch, or
    DeepLab-v3+'s head): then the logits of a part of a batch differ from that part of the batch's logits."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not getattr(m, "frozen", False)
               for m in net.modules())


def label_dir(args):
    return args.seg_label_dir or args.sem_seg_out_dir


def check_resume_point(args, segment_steps, total):
    """The checkpoint's epochs count segments of seg_checkpoint_every iterations: another segment length would
    resume at the wrong iteration."""
    ckpt = training.checkpoint_path(args.seg_weights_name)
    if not (args.resume and os.path.isfile(ckpt)):
        return
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        epoch, step = int(state["epoch"]), int(state["global_step"])
    except Exception as e:
        raise pyutils.UserError(f"cannot read the training checkpoint {ckpt} ({e.__class__.__name__}); "
                                "delete it to start over")
    if step != min(epoch * segment_steps, total):
        raise pyutils.UserError(f"training checkpoint {ckpt} is at iteration {step} after {epoch} segments: it was "
                                f"written with another --seg_checkpoint_every than {segment_steps}; rerun with "
                                "that value or delete it to start over")


def run(args):
    device = args.device
    from_scratch = args.from_scratch
    dataset = PseudoMaskStream(args.seg_train_list, args.data, label_dir(args), crop_size=args.seg_crop_size,
                               scales=tuple(args.seg_rescale), flip=True, seed=args.seed)
    total, every = args.seg_num_iters, args.seg_checkpoint_every
    segments = math.ceil(total / every)
    sampler = StreamSampler(args.seg_batch_size, every, total, dist.world_size(), dist.rank())
    cuda = str(device).startswith("cuda")
    loader = DataLoader(dataset, batch_size=sampler.per, sampler=sampler, num_workers=args.num_workers,
                        pin_memory=cuda, persistent_workers=cuda and args.num_workers > 0)

    torch.manual_seed(args.seed)  # the head's (and a 'none' backbone's) initial weights
    net = deeplab.build(len(args.data.class_names), args.seg_arch, args.seg_backbone_depth, args.seg_backbone_weights, from_scratch)
    backbone, head_w, head_b = net.param_groups()
    lr, wd = args.seg_learning_rate, args.seg_weight_decay
    groups = [{"params": backbone, "lr": lr, "weight_decay": wd},
              {"params": head_w, "lr": 10 * lr, "weight_decay": wd},
              {"params": head_b, "lr": 20 * lr, "weight_decay": 0.0}]
    optimizer = SegPolyOptimizer([g for g in groups if g["params"]], lr=lr, weight_decay=wd, max_step=total,
                                 momentum=args.seg_momentum, power=POLY_POWER)
    model = training.prepare_model(deeplab.MultiScaleTrainer(net, tuple(args.seg_msc_scales)), device)
    check_resume_point(args, every, total)
    loss_groups = local_groups(args.seg_batch_size, args.seg_iter_size, dist.world_size())
    # With every BatchNorm frozen an image's logits do not depend on the others in its forward, so this
    # process's groups go through one at a time, gradients accumulated (deeplab-pytorch's ITER_SIZE): the same
    # step as one forward of all of them, with one group's activations in memory instead of the batch's. A
    # BatchNorm on batch statistics (--from_scratch, the demo; DeepLab-v3+'s head) would normalise each pass
    # with its own: another step, so there one forward of the batch keeps the per-group loss.
    passes = 1 if uses_batch_statistics(net) else loss_groups
    group = args.seg_batch_size // args.seg_iter_size
    if args.seg_iter_size == 1:
        layout = "one forward, one average over its labelled pixels"
    elif passes == 1 and loss_groups > 1:
        layout = (f"one forward, the loss averaged per group of {group}; not {loss_groups} accumulated passes, "
                  f"since BatchNorm in training mode ({'--from_scratch' if from_scratch else 'the head'}) "
                  "normalises with each forward's statistics")
    else:
        layout = (f"{args.seg_iter_size} forward/backward passes of {group} accumulated"
                  + (f", {passes} in each process" if dist.world_size() > 1 else ""))
    pyutils.log(f"train_seg: {args.seg_arch} ResNet-{args.seg_backbone_depth} "
                f"({'from scratch' if from_scratch else f'backbone {args.seg_backbone_weights}'}), "
                f"{len(dataset)} images with pseudo masks of {label_dir(args)}, batch {args.seg_batch_size} "
                f"(--seg_iter_size {args.seg_iter_size}: {layout}), "
                f"{total} iterations (~{total * args.seg_batch_size / len(dataset):.1f} passes) in {segments} "
                f"segments of {every}, device {device}")

    def loss_fn(m, batch):
        img = training.to_device(batch["img"], device)
        loss = segmentation_loss(m(img), batch["label"].to(device, non_blocking=True), loss_groups // passes,
                                 args.seg_iter_size)
        return loss, {"loss": loss.item()}

    ran = training.fit(model, loader, optimizer, loss_fn, segments, args.seg_weights_name, device, amp=args.amp,
                       resume=args.resume, desc="train_seg", micro_batches=passes)
    if not ran and training.weights_current(args.seg_weights_name):
        pyutils.log(f"{args.seg_weights_name}: every iteration was done already, kept as it is")
        return
    training.save_weights(args.seg_weights_name, training.unwrap(model).base)
    pyutils.log(f"saved {args.seg_weights_name}")
