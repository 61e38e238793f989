"""Step 4 of AffinityNet (psa): train AffinityNet on the la/ha CRF labels (jiwoon-ahn/psa train_aff.py).

Samples (voc12.dataloader.PSAAffinityDataset, SPEC_RESNET38 2.3): colour jitter, random crop of image and
la/ha scores (raw-image padding 0: black), normalise, flip, 8x8 block means, the la/ha label rule, and
bg/fg/neg labels of PSA's pairs within --aff_radius. Batch 8, 8 epochs, drop_last; PSA's four parameter
groups at lr x1/x2/x10/x20 (new layers f8_3, f8_4, f8_5, f9 at x10), weight decay on weights only, poly
schedule over len(loader) * epochs, momentum = weight decay unless --aff_momentum. Loss bg/4 + fg/4 + neg/2
with label counts over the global batch under torchrun. The network starts from --aff_backbone_weights
(ImageNet by default, in stage II too).

args read: train_list, voc12_root, la_crf_dir, ha_crf_dir, aff_crop_size, aff_radius, cam_color_jitter,
aff_batch_size, aff_num_epoches, aff_learning_rate, aff_weight_decay, aff_momentum, aff_backbone_weights,
aff_seam_radius, resnet38_width,
aff_weights_name, from_scratch, seed, num_workers, device, amp, resume.
"""
import torch

from misc import dist, pyutils, stages, torchutils, training
from net import resnet38_aff
from voc12.dataloader import PSAAffinityDataset

LABELS = ("aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label")


def aff_loss(model, batch, device):
    img = training.to_device(batch["img"], device)
    labels = [batch[k].to(device) for k in LABELS]
    # under torchrun the label-weighted means are over the global batch, as in one process
    reduce = dict(sum_over_processes=dist.all_reduce_sum, world_size=dist.world_size()) if dist.is_dist() else {}
    terms = resnet38_aff.affinity_loss(model(img), *labels, **reduce)
    return terms["total"], {k: v.item() for k, v in terms.items() if k != "total"}


def add_arguments(g):
    g.add_argument("--aff_crop_size", default=448, type=int, help="random crop of train_aff (a multiple of 8)")
    g.add_argument("--aff_batch_size", default=8, type=int)
    g.add_argument("--aff_num_epoches", default=8, type=int)
    g.add_argument("--aff_learning_rate", default=0.1, type=float, help="backbone lr; the new layers get 10x")
    g.add_argument("--aff_weight_decay", default=5e-4, type=float)
    g.add_argument("--aff_momentum", default=None, type=float,
                   help="SGD momentum; unset reproduces the reference (momentum = weight decay)")
    g.add_argument("--aff_radius", default=5, type=int, help="pair radius of AffinityNet (training and walk)")
    g.add_argument("--aff_backbone_weights", default=None,
                   help="backbone of AffinityNet (default: --backbone_weights); 'cam' takes the stage's classifier")
    g.add_argument("--aff_seam_radius", type=pyutils.str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="SEAM's rule: on a stride-8 map shorter than 2 * radius + 1, the radius becomes "
                        "(shorter side - 1) // 2 (seam: True)")


def check_arguments(args):
    pyutils.require_range(args, ("aff_batch_size", "aff_num_epoches", "aff_crop_size", "aff_radius"), at_least=1)
    pyutils.require_range(args, ("aff_learning_rate",), positive=True)
    pyutils.require_range(args, ("aff_weight_decay",), at_least=0)
    if args.aff_crop_size % 8:
        raise pyutils.UserError(f"--aff_crop_size must be a multiple of 8 (AffinityNet's stride), got {args.aff_crop_size}")
    training.require_global_batch(args, "aff_batch_size", stages.trains(args, "train_aff"))


def run(args):
    device = args.device
    jitter = tuple(args.cam_color_jitter) if args.cam_color_jitter is not None else None
    dataset = PSAAffinityDataset(args.train_list, args.la_crf_dir, args.ha_crf_dir, args.aff_crop_size,
                              args.data, radius=args.aff_radius, color_jitter=jitter, hor_flip=True,
                              seed=args.seed)
    training.require_one_batch(dataset, args.aff_batch_size, args.train_list, "aff_batch_size")
    loader = training.make_loader(dataset, args.aff_batch_size, True, args.seed, args.num_workers, device,
                                  drop_last=True)
    max_step = len(loader) * args.aff_num_epoches

    torch.manual_seed(args.seed)  # initial weights of the new layers: same seed, same run
    model = resnet38_aff.Net(backbone_weights=args.aff_backbone_weights, from_scratch=args.from_scratch,
                             radius=args.aff_radius, width=args.resnet38_width, seam_small_maps=args.aff_seam_radius)
    side = args.aff_crop_size // 8
    if model.radius_for(side, side) != args.aff_radius:
        raise pyutils.UserError(f"--aff_crop_size {args.aff_crop_size} gives a {side}x{side} map, on which SEAM's rule "
                                f"shrinks the radius below --aff_radius {args.aff_radius}: use a crop of at least "
                                f"{8 * (2 * args.aff_radius + 1)}")
    optimizer = torchutils.PolyOptimizer(model.optimizer_groups(args.aff_learning_rate, args.aff_weight_decay),
                                         lr=args.aff_learning_rate, weight_decay=args.aff_weight_decay,
                                         max_step=max_step, momentum=args.aff_momentum)
    model = training.prepare_model(model, device)
    pyutils.log(f"train_aff: {len(dataset)} images, batch {args.aff_batch_size}, {args.aff_num_epoches} epochs, "
                f"{max_step} steps, radius {args.aff_radius}, device {device}")
    ran = training.fit(model, loader, optimizer, lambda m, b: aff_loss(m, b, device), args.aff_num_epoches,
                       args.aff_weights_name, device, amp=args.amp, resume=args.resume, desc="train_aff")
    if not ran and training.weights_current(args.aff_weights_name):
        pyutils.log(f"{args.aff_weights_name}: every epoch was done already, kept as it is")
        return
    training.save_weights(args.aff_weights_name, model)
    pyutils.log(f"saved {args.aff_weights_name}")
