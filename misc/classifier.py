"""Classifier training shared by IRNet's train_cam, PSA's train_cls and SEAM's train_seam: poly SGD over the
network's parameter groups, a validation loss per epoch, checkpoints for --resume and, in stage II (args.cda),
the CDA paired training set: each batch holds B/2 originals and their B/2 augmented copies, one forward pass
and one loss.
"""
import torch
import torch.nn.functional as F

from misc import dist, pyutils, torchutils, training


def paired_dataset(base, pool, args):
    """Wrap a classification set with the CDA paste augmentation (stage II)."""
    from cda.dataset import PairedDataset
    from cda.paste import SCALE_JITTER
    return PairedDataset(base, pool, seed=args.seed, views=args.cda_pair_view,
                         num_instances=args.cda_num_instances, rotation=tuple(args.cda_rotation),
                         max_size=args.cda_max_size, blend=args.cda_blend, geometry=args.cda_paste,
                         scale_jitter=SCALE_JITTER if args.cda_scale_jitter else None)


def cam_max_step(num_images, loader_steps, args, cda):
    """Steps over which the poly schedule decays.

    CDA's aug_step/train_cam.py computes (len(train) // cam_batch_size) * epochs with the full batch while
    its loader takes cam_batch_size / 2 pairs a step: the run takes twice max_step steps, and from max_step
    on the poly optimiser leaves the lr at its floor base * (1 / max_step) ** 0.9. --cda_max_step reference
    (the default) reproduces that quirk; 'steps' decays over every step taken, as stage I does.
    """
    if cda and args.cda_max_step == "reference":
        return (num_images // args.cam_batch_size) * args.cam_num_epoches
    return loader_steps * args.cam_num_epoches


def unpack(batch, device):
    """Images and labels of a batch; a CDA batch becomes [originals; their copies]."""
    img, label = batch["img"], batch["label"]
    if "img_aug" in batch:
        img = torch.cat([img, batch["img_aug"]])
        label = torch.cat([label, batch["label_aug"]])
    return training.to_device(img, device), label.to(device)


def classification_loss(model, batch, device):
    img, label = unpack(batch, device)
    loss = F.multilabel_soft_margin_loss(model(img).float(), label)
    logs = {"loss": loss.item()}
    if "num_pasted" in batch:  # CDA: images whose every absent class lacks instances get no paste
        logs["n_images_without_paste"] = int((batch["num_pasted"] == 0).sum())
    return loss, logs


def validate(model, loader, device, amp):
    """Mean loss per image over the validation loader, or None when it yields no batch (a paired set with
    drop_last and fewer than one batch of pairs)."""
    model.eval()
    net = training.unwrap(model)  # not through DDP: shards differ in length, DDP's forward may sync buffers
    total = torch.zeros(2, dtype=torch.float64)
    with torch.inference_mode(), training.autocast(device, amp):
        for batch in loader:
            img, label = unpack(batch, device)
            loss = F.multilabel_soft_margin_loss(net(img).float(), label, reduction="sum")
            total += torch.tensor([loss.item(), img.shape[0]], dtype=torch.float64)
    total = dist.all_reduce_sum(total)
    model.train()
    return (total[0] / total[1]).item() if total[1] > 0 else None


def train_classifier(args, train_set, val_set, build_model, desc, loss_fn=None):
    """The classification training shared by IRNet's train_cam, PSA's train_cls and SEAM's train_seam: poly
    SGD, validation loss per epoch (none when val_set is None, as SEAM), checkpoints; with args.cda the CDA
    paired set (stage II).

    build_model() -> (model, optimiser param groups), called after seeding torch. loss_fn(model, batch, device)
    -> (loss, logs), by default classification_loss."""
    loss_fn = loss_fn or classification_loss
    device = args.device
    cda = args.cda
    batch = args.cam_batch_size
    if cda:
        from cda.pool import InstancePool
        pool = InstancePool.load(args.pool_dir)
        train_set = paired_dataset(train_set, pool, args)
        val_set = None if val_set is None else paired_dataset(val_set, pool, args)
        batch //= 2
        if dist.is_main():
            from cda.dataset import sample_grid
            sample_grid(train_set, 8, args.cda_samples_path)
            pyutils.log(f"wrote {args.cda_samples_path}")
    training.require_one_batch(train_set, batch, args.train_list, "cam_batch_size")
    loader = training.make_loader(train_set, batch, True, args.seed, args.num_workers, device, drop_last=True)
    # every reference validates with drop_last (IRNet's and ReCAM's train_cam, PSA's train_cls, CDA's pairs in
    # batches of cam_batch_size / 2): only the logged loss depends on it
    val_loader = None if val_set is None else training.make_loader(val_set, batch, False, args.seed,
                                                                    args.num_workers, device, drop_last=True)
    max_step = cam_max_step(len(train_set), len(loader), args, cda)

    torch.manual_seed(args.seed)  # the head's (and a 'none' backbone's) initial weights: same seed, same run
    model, groups = build_model()
    optimizer = torchutils.PolyOptimizer(groups, lr=args.cam_learning_rate, weight_decay=args.cam_weight_decay,
                                         max_step=max_step, momentum=args.cam_momentum)
    model = training.prepare_model(model, device)
    total_steps = len(loader) * args.cam_num_epoches
    pyutils.log(f"{desc}{' (CDA paired)' if cda else ''}: {len(train_set)} images, batch "
                f"{args.cam_batch_size}, {args.cam_num_epoches} epochs, {total_steps} steps, poly max_step "
                f"{max_step}{' (--cda_max_step ' + args.cda_max_step + ')' if cda else ''}, device {device}")
    if total_steps > max_step:
        pyutils.log(f"  the lr stays at its floor {optimizer.lr_mult(max_step):.3g} x base from step {max_step} on")

    def after_epoch(epoch):
        first, last = epoch * len(loader), (epoch + 1) * len(loader)
        mults = [optimizer.lr_mult(s) for s in range(first, last)]
        pyutils.log(f"  lr factor in epoch {epoch + 1}: {mults[0]:.4g} -> {mults[-1]:.4g}, mean "
                    f"{sum(mults) / len(mults):.4g} (backbone lr now {optimizer.param_groups[0]['lr']:.4g})")
        if val_loader is None:
            return
        loss = validate(model, val_loader, device, args.amp)
        pyutils.log(f"  validation loss {loss:.4f}" if loss is not None else
                    f"  validation: {args.val_list} holds fewer than one full batch (drop_last), no loss")

    ran = training.fit(model, loader, optimizer, lambda m, b: loss_fn(m, b, device),
                       args.cam_num_epoches, args.cam_weights_name, device, amp=args.amp, resume=args.resume,
                       desc=desc, after_epoch=after_epoch)
    if not ran and training.weights_current(args.cam_weights_name):
        pyutils.log(f"{args.cam_weights_name}: every epoch was done already, kept as it is")
        return
    training.save_weights(args.cam_weights_name, model)
    pyutils.log(f"saved {args.cam_weights_name}")


def add_arguments(g):
    g.add_argument("--cam_crop_size", default=512, type=int, help="random crop of the classifier's training images")
    g.add_argument("--cam_resize_long", default=(320, 640), type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random long side range")
    g.add_argument("--cam_color_jitter", default=None, type=float, nargs=4,
                   metavar=("BRIGHTNESS", "CONTRAST", "SATURATION", "HUE"),
                   help="colour jitter of the classifier's training images (psa, seam: 0.3 0.3 0.3 0.1; irn: none)")
    g.add_argument("--cam_val_crop", default="top_left", choices=["top_left", "center", "none"],
                   help="crop of the validation images (irn: top_left, psa: center)")
    g.add_argument("--cam_val_crop_size", default=None, type=int,
                   help="validation crop size (default: --cam_crop_size; psa: 500)")
    g.add_argument("--cam_batch_size", default=16, type=int, help="global batch; with CDA half originals, half their copies")
    g.add_argument("--cam_num_epoches", default=5, type=int)
    g.add_argument("--cam_learning_rate", default=0.1, type=float, help="backbone lr; the classifier gets 10x")
    g.add_argument("--cam_weight_decay", default=1e-4, type=float)
    g.add_argument("--cam_momentum", default=None, type=float,
                   help="SGD momentum; unset reproduces the reference (momentum = weight decay)")
    g.add_argument("--cda_paste", default="reference", choices=["reference", "trimmed"],
                   help="reference: CDA's paste functions pixel for pixel (cubic-spline rotation, untrimmed canvas, "
                        "bilinear class-valued mask); trimmed: ours (canvas trimmed to the object)")
    g.add_argument("--cda_pair_view", default="independent", choices=["independent", "shared"],
                   help="independent: the copy gets its own resize, flip and crop, as CDA; shared: the same view as "
                        "its original")
    g.add_argument("--cda_max_step", default="reference", choices=["reference", "steps"],
                   help="reference: CDA's poly max_step from the full batch while steps take half batches, so the lr "
                        "sits at its floor for the second half; steps: decay over every step")
    g.add_argument("--cda_rotation", default=(-90.0, 90.0), type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="rotation range of pasted objects, degrees (integer draws with --cda_paste reference)")
    g.add_argument("--cda_max_size", default=0.7, type=float,
                   help="pasted object at most this share of the image height and width")
    g.add_argument("--cda_blend", default="none", choices=["none", "gaussian"],
                   help="hard paste, or blend with a 3x3 Gaussian-blurred mask (reference: data_aug_rotation_blur)")
    g.add_argument("--cda_scale_jitter", type=pyutils.str2bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="scale the object by a factor in [0.8, 1.2): with --cda_paste reference this is CDA's "
                        "data_aug, which does not rotate; with trimmed, on top of the rotation")
    g.add_argument("--cda_num_instances", default=1, type=int,
                   help="instances pasted per image, classes without repetition")
    return g


def check_arguments(args):
    from misc import methods, stages
    pyutils.require_range(args, ("cam_crop_size", "cam_num_epoches", "cda_num_instances"), at_least=1)
    pyutils.require_range(args, ("cam_learning_rate", "cam_resize_long"), positive=True)
    pyutils.require_range(args, ("cam_weight_decay",), at_least=0)
    pyutils.require_range(args, ("cda_max_size",), unit=True)
    pyutils.require_ordered(args, ("cam_resize_long", "cda_rotation"))
    if args.cam_color_jitter is not None and min(args.cam_color_jitter) < 0:
        raise pyutils.UserError(f"--cam_color_jitter takes four non-negative numbers, got {args.cam_color_jitter}")
    if args.cda_paste == "reference" and args.cda_blend != "none" and args.cda_scale_jitter:
        raise pyutils.UserError("--cda_blend gaussian and --cda_scale_jitter together have no reference function "
                                "(data_aug_rotation_blur or data_aug): drop one, or use --cda_paste trimmed")
    # --cam_batch_size: every rule here. Under torchrun the global batch is split evenly over the processes; a
    # CDA batch is pairs (an original and its copy), so it splits per pair.
    batch, world = args.cam_batch_size, dist.world_size()
    training_stages = stages.trains(args, methods.TRAIN_CLASSIFIER[args.method])
    paired = any(s.cda for s in training_stages)
    if batch < 1:
        raise pyutils.UserError(f"--cam_batch_size must be at least 1, got {batch}")
    if paired and (batch < 2 or batch % 2):
        raise pyutils.UserError(f"CDA pairs each original with its copy: --cam_batch_size must be even and at least 2, "
                                f"got {batch}")
    for unit in sorted({2 if s.cda else 1 for s in training_stages}):
        if batch % (unit * world):
            raise pyutils.UserError(f"--cam_batch_size {batch} is the global batch of {world} processes"
                                    f"{' in CDA pairs' if unit == 2 else ''}: make it a multiple of {unit * world}")
