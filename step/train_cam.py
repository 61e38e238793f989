"""Step 1: train the classification network whose class activation maps seed everything else.

With args.cda the training set is the CDA paired set: each batch holds B/2 originals and their B/2
augmented copies, one forward pass and one loss (stage II).
"""
import torch
import torch.nn.functional as F

from misc import dist, pyutils, torchutils, training
from net import resnet50_cam
from voc12.dataloader import VOC12ClassificationDataset


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


def datasets(args, color_jitter=None, validation=True):
    """The classifier's training set (random resize, flip, optional colour jitter, random crop) and its
    validation set (--cam_val_crop: IRNet's top-left crop, PSA's centre crop, or none), or None."""
    train_set = VOC12ClassificationDataset(args.train_list, args.voc12_root, args.cls_labels,
                                           resize_long=tuple(args.cam_resize_long), hor_flip=True,
                                           crop_size=args.cam_crop_size, crop_method="random", seed=args.seed,
                                           color_jitter=color_jitter)
    if not validation:
        return train_set, None
    crop = getattr(args, "cam_val_crop", "top_left")
    val_set = VOC12ClassificationDataset(args.val_list, args.voc12_root, args.cls_labels,
                                         crop_size=None if crop == "none" else
                                         (getattr(args, "cam_val_crop_size", None) or args.cam_crop_size),
                                         crop_method=None if crop == "none" else crop, seed=args.seed)
    return train_set, val_set


def train_classifier(args, train_set, val_set, build_model, desc, val_drop_last=False, loss_fn=None):
    """The classification training shared by IRNet's train_cam, PSA's train_cls and SEAM's train_seam: poly
    SGD, validation loss per epoch (none when val_set is None, as SEAM), checkpoints; with args.cda the CDA
    paired set (stage II).

    build_model() -> (model, optimiser param groups), called after seeding torch. loss_fn(model, batch, device)
    -> (loss, logs), by default classification_loss."""
    loss_fn = loss_fn or classification_loss
    device = args.device
    cda = getattr(args, "cda", False)
    if cda and (args.cam_batch_size < 2 or args.cam_batch_size % 2):
        raise pyutils.UserError(f"CDA pairs originals with copies: --cam_batch_size must be even and >= 2, "
                                f"got {args.cam_batch_size}")
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
    # CDA validates pairs in batches of cam_batch_size / 2 with drop_last, as PSA does; IRNet keeps the last
    # partial batch
    val_loader = None if val_set is None else training.make_loader(val_set, batch, False, args.seed,
                                                                    args.num_workers, device,
                                                                    drop_last=cda or val_drop_last)
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


def run(args):
    train_set, val_set = datasets(args)

    def build_model():
        model = resnet50_cam.Net(backbone_weights=args.backbone_weights, from_scratch=args.from_scratch)
        backbone, head = model.trainable_parameters()
        return model, [{"params": backbone, "lr": args.cam_learning_rate, "weight_decay": args.cam_weight_decay},
                       {"params": head, "lr": 10 * args.cam_learning_rate, "weight_decay": args.cam_weight_decay}]

    train_classifier(args, train_set, val_set, build_model, "train_cam")
