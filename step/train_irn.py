"""Step 5: train the inter-pixel relation network (boundary + displacement branches) on the IR labels.

After training, the mean displacement over the inference list is stored in the mean-shift buffer, which
inference subtracts.
"""
import torch
from tqdm import tqdm

from misc import dist, indexing, pyutils, stages, torchutils, training
from net import resnet50_irn
from voc12.dataloader import VOC12AffinityDataset, VOC12ClassificationDataset


def irn_loss(model, batch, device):
    img = training.to_device(batch["img"], device)
    labels = [batch[k].to(device) for k in ("aff_bg_pos_label", "aff_fg_pos_label", "aff_neg_label")]
    # under torchrun every mean is over the global batch, as in one process
    reduce = dict(sum_over_processes=dist.all_reduce_sum, world_size=dist.world_size()) if dist.is_dist() else {}
    terms = resnet50_irn.irn_loss(model(img, True), *labels, **reduce)
    return terms["total"], {k: v.item() for k, v in terms.items() if k != "total"}


def mean_displacement(model, args):
    """Mean predicted displacement over the (top-left cropped) inference images. The reference's loader drops
    the last partial batch (drop_last=True: 1,440 of VOC train's 1,464 images), so the mean is over the first
    (n // irn_batch_size) * irn_batch_size images (all of them when there are fewer than a batch, where the
    reference fails). Only the displacement field uses this buffer: the semantic pseudo masks do not."""
    dataset = VOC12ClassificationDataset(args.infer_list, args.data, args.cls_labels,
                                         crop_size=args.irn_crop_size, crop_method="top_left")
    keep = (len(dataset) // args.irn_batch_size) * args.irn_batch_size or len(dataset)
    dataset = torch.utils.data.Subset(dataset, range(keep))
    loader = training.make_loader(dataset, min(args.irn_batch_size, keep), False, args.seed,
                                  args.num_workers, args.device, drop_last=False)
    total = torch.zeros(3, dtype=torch.float64)  # (sum of dx, sum of dy, number of images)
    model.eval()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="mean displacement", disable=not dist.is_main(), dynamic_ncols=True):
            with training.autocast(args.device, args.amp):
                # not through DDP: shards differ in length, and DDP's forward may sync buffers
                _, dp = training.unwrap(model)(training.to_device(batch["img"], args.device), False)
            per_image = dp.float().mean(dim=(2, 3)).double().cpu()
            total += torch.cat([per_image.sum(0), torch.tensor([per_image.shape[0]], dtype=torch.float64)])
    total = dist.all_reduce_sum(total)
    return (total[:2] / total[2]).float()


def add_arguments(g):
    g.add_argument("--irn_backbone_weights", default=None,
                   help="backbone of the IRN (default: --backbone_weights); 'cam' takes the stage's CAM network")
    g.add_argument("--irn_crop_size", default=512, type=int,
                   help="random crop of train_irn; images are padded to it at inference (make_sem_seg)")
    g.add_argument("--irn_rescale", default=(0.5, 1.5), type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random rescale range of train_irn")
    g.add_argument("--irn_batch_size", default=32, type=int)
    g.add_argument("--irn_num_epoches", default=3, type=int)
    g.add_argument("--irn_learning_rate", default=0.1, type=float, help="edge branch lr; the displacement branch gets 10x")
    g.add_argument("--irn_weight_decay", default=1e-4, type=float)
    g.add_argument("--irn_momentum", default=None, type=float,
                   help="SGD momentum; unset reproduces the reference (momentum = weight decay)")


def check_arguments(args):
    pyutils.require_range(args, ("irn_batch_size", "irn_num_epoches", "irn_crop_size"), at_least=1)
    pyutils.require_range(args, ("irn_learning_rate", "irn_rescale"), positive=True)
    pyutils.require_range(args, ("irn_weight_decay",), at_least=0)
    pyutils.require_ordered(args, ("irn_rescale",))
    if args.irn_crop_size % 4:
        raise pyutils.UserError(f"--irn_crop_size must be a multiple of 4, got {args.irn_crop_size}")
    if args.irn_crop_size < 76:  # train_irn pairs pixels up to radius 10 apart on the stride-4 map: 19 columns
        raise pyutils.UserError(f"--irn_crop_size must be at least 76, got {args.irn_crop_size}")
    training.require_global_batch(args, "irn_batch_size", stages.trains(args, "train_irn"))


def run(args):
    device = args.device
    path_index = indexing.PathIndex(radius=10, default_size=(args.irn_crop_size // 4, args.irn_crop_size // 4))
    dataset = VOC12AffinityDataset(args.train_list, label_dir=args.ir_label_out_dir,
                                   crop_size=args.irn_crop_size, root=args.data,
                                   rescale=tuple(args.irn_rescale), hor_flip=True, crop_method="random",
                                   indices_from=path_index.src_indices, indices_to=path_index.dst_indices,
                                   seed=args.seed)
    training.require_one_batch(dataset, args.irn_batch_size, args.train_list, "irn_batch_size")
    loader = training.make_loader(dataset, args.irn_batch_size, True, args.seed, args.num_workers, device,
                                  drop_last=True)
    max_step = len(loader) * args.irn_num_epoches

    torch.manual_seed(args.seed)  # initial weights of the new layers: same seed, same run
    model = resnet50_irn.AffinityDisplacementLoss(path_index, backbone_weights=args.irn_backbone_weights)
    edge_params, dp_params = model.trainable_parameters()
    optimizer = torchutils.PolyOptimizer(
        [{"params": edge_params, "lr": args.irn_learning_rate, "weight_decay": args.irn_weight_decay},
         {"params": dp_params, "lr": 10 * args.irn_learning_rate, "weight_decay": args.irn_weight_decay}],
        lr=args.irn_learning_rate, weight_decay=args.irn_weight_decay, max_step=max_step,
        momentum=args.irn_momentum)
    model = training.prepare_model(model, device)
    pyutils.log(f"train_irn: {len(dataset)} images, batch {args.irn_batch_size}, {args.irn_num_epoches} epochs, "
                f"{max_step} steps, device {device}")
    ran = training.fit(model, loader, optimizer, lambda m, b: irn_loss(m, b, device), args.irn_num_epoches,
                       args.irn_weights_name, device, amp=args.amp, resume=args.resume, desc="train_irn")
    if not ran and training.weights_current(args.irn_weights_name):
        pyutils.log(f"{args.irn_weights_name}: every epoch was done already, kept as it is")
        return

    net = training.unwrap(model)
    net.mean_shift.running_mean.copy_(mean_displacement(model, args).to(net.mean_shift.running_mean.device))
    pyutils.log(f"mean displacement {net.mean_shift.running_mean.tolist()}")
    training.save_weights(args.irn_weights_name, model)
    pyutils.log(f"saved {args.irn_weights_name}")
