"""The training loop shared by train_cam and train_irn: loaders, epochs, checkpoints, resume, AMP, DDP."""
import contextlib
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from misc import dist, pyutils, torchutils


class ShardSampler(torch.utils.data.Sampler):
    """Every item exactly once over all processes, in order, round robin: rank r gets r, r + world, ...

    For evaluation loaders. Unlike DistributedSampler it pads nothing (a padded item would count twice
    in a mean), so shards may differ by one item: no per-batch collective may run on such a loader.
    """

    def __init__(self, n, world, rank):
        self.indices = list(range(n))[rank::world]

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)

    def set_epoch(self, epoch):
        pass


def require_one_batch(dataset, batch_size, list_path, flag):
    """A training set smaller than one batch (drop_last would leave no step) is a UserError naming the list
    and the batch flag to lower."""
    if len(dataset) < batch_size:
        raise pyutils.UserError(f"{list_path} has {len(dataset)} images, fewer than one batch ({batch_size}); "
                                f"lower --{flag}")


def make_loader(dataset, batch_size, shuffle, seed, num_workers, device, drop_last, persistent=None):
    """A loader over this process's share of `dataset`, batch_size being the global batch.

    drop_last=True (training): DistributedSampler with drop_last, so each epoch has len(dataset) // batch_size
    steps whatever the world size, and step k's global batch is the same set of items as in one process
    (the shuffle depends on (seed, epoch) only; rank r takes every world-th item of it). World size 1 is
    a seeded shuffle, so one process and torchrun share a path.
    drop_last=False (evaluation): ShardSampler, no shuffle, every item once.
    """
    world = dist.world_size()
    if drop_last:
        if batch_size % world:
            raise pyutils.UserError(f"a batch of {batch_size} items does not split over {world} processes; "
                                    f"make the batch size a multiple of {world} (CDA batches hold pairs: "
                                    f"--cam_batch_size a multiple of {2 * world})")
        sampler = DistributedSampler(dataset, num_replicas=world, rank=dist.rank(), shuffle=shuffle, seed=seed,
                                     drop_last=True)
        per_process = batch_size // world
    else:
        sampler = ShardSampler(len(dataset), world, dist.rank())
        per_process = max(1, -(-batch_size // world))
    # Workers kept alive across epochs (no start-up per epoch) hold their own copy of the data set, which
    # dataset.set_epoch in this process no longer reaches: the epoch travels with every index instead.
    cuda = str(device).startswith("cuda")
    persistent = (cuda if persistent is None else persistent) and num_workers > 0
    return DataLoader(EpochDataset(dataset), batch_size=per_process, sampler=EpochSampler(sampler),
                      num_workers=num_workers, pin_memory=cuda, drop_last=drop_last, persistent_workers=persistent)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (epoch, index) pairs of the wrapped sampler, the epoch being the last set_epoch."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((self.epoch, i) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class EpochDataset(torch.utils.data.Dataset):
    """Takes (epoch, index) from EpochSampler and sets that epoch on its own copy of the data set first,
    so items depend on (seed, epoch, index) only, in this process or in a persistent worker alike."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, item):
        epoch, idx = item
        if hasattr(self.dataset, "set_epoch") and getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[idx]


def autocast(device, amp):
    """bf16 autocast on CUDA when asked; CPU runs stay fp32 and unchanged."""
    if amp and str(device).startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x, device):
    x = x.to(device, non_blocking=True)
    if str(device).startswith("cuda") and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def prepare_model(model, device):
    model = model.to(device)
    if str(device).startswith("cuda"):
        model = model.to(memory_format=torch.channels_last)
    if dist.is_dist():
        # No buffer broadcast before each forward: frozen BatchNorm changes none, the IRN's path-index buffers
        # are large constants, and sync_buffers aligns from-scratch BatchNorm statistics after each epoch.
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if str(device).startswith("cuda") else None,
            broadcast_buffers=False)
    return model


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def checkpoint_path(weights_path):
    return weights_path + ".ckpt"


def save_checkpoint(path, model, optimizer, epoch):
    """Everything an epoch boundary needs to go on exactly: weights and buffers, optimiser (momentum), step,
    schedule length and torch's RNG. Data randomness needs no state: it follows from (seed, epoch, index).

    The checkpoint is kept after the final weights are written: --resume on a finished training then finds
    all epochs done and leaves the weights (and so every output made from them) untouched."""
    if not dist.is_main():
        return
    state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "global_step": optimizer.global_step, "max_step": optimizer.max_step, "epoch": epoch,
             "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state()
    with pyutils.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, model, optimizer):
    """Restore model, optimiser, step and RNG; return the number of finished epochs.

    A checkpoint of another network or of another schedule (other epochs, batch size or list) would lead to
    weights no uninterrupted run gives: a UserError naming the file instead."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        epoch, step, weights = int(state["epoch"]), int(state["global_step"]), state["model"]
    except Exception as e:
        raise pyutils.UserError(f"cannot read the training checkpoint {path} ({e.__class__.__name__}); "
                                "delete it to start over")
    # another network's checkpoint: named with a summary of missing and unexpected keys
    torchutils.load_state_dict_checked(unwrap(model), weights, f"training checkpoint {path}")
    if state.get("max_step", optimizer.max_step) != optimizer.max_step:
        raise pyutils.UserError(f"training checkpoint {path} is from a run of {state['max_step']} steps, this run has "
                                f"{optimizer.max_step} (other epochs, batch size or list); rerun with that run's "
                                "flags or delete it to start over")
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise pyutils.UserError(f"training checkpoint {path} does not fit this optimiser ({e}); "
                                "delete it to start over")
    optimizer.global_step = step
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    return epoch


def split_batch(batch, parts):
    """A collated batch (a dict of tensors and lists, or a tensor) as `parts` consecutive equal slices."""
    if isinstance(batch, dict):
        split = {k: split_batch(v, parts) for k, v in batch.items()}
        return [{k: split[k][i] for k in batch} for i in range(parts)]
    if len(batch) % parts:
        raise ValueError(f"a batch of {len(batch)} items does not split into {parts} equal micro-batches")
    size = len(batch) // parts
    return [batch[i * size:(i + 1) * size] for i in range(parts)]


def accumulate_gradients(model, batch, loss_fn, micro_batches, device, amp=False):
    """Forward and backward `batch` as `micro_batches` consecutive slices, one after the other, adding up
    their gradients: only one slice's activations are alive at a time. loss_fn(model, part) returns that
    part's share of the step's loss (deeplab-pytorch divides each by its ITER_SIZE). Under DDP the gradients
    are averaged over processes once, with the last slice's backward (no_sync on the others), as one step.
    Returns (the summed loss as a float, the parts' logs summed key by key)."""
    parts = [batch] if micro_batches == 1 else split_batch(batch, micro_batches)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    total, logs = 0.0, {}
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        with contextlib.nullcontext() if last or not ddp else model.no_sync():
            with autocast(device, amp):
                loss, part_logs = loss_fn(model, part)
            loss.backward()
        total += loss.item()
        for k, v in part_logs.items():
            logs[k] = logs.get(k, 0.0) + v
    return total, logs


def fit(model, loader, optimizer, loss_fn, epochs, weights_path, device, amp=False, resume=False,
        desc="train", after_epoch=None, micro_batches=1):
    """Run `epochs` epochs of `loss_fn(model, batch) -> (loss, {name: float})`.

    Data randomness is a function of (seed, epoch, index) and the shuffle of (seed, epoch), so a run resumed
    from the checkpoint of epoch k reproduces the uninterrupted run exactly. Returns the number of epochs run:
    0 when resuming found every epoch done.

    micro_batches k > 1 is gradient accumulation (accumulate_gradients): each of this process's batches goes
    through the network as k forward/backward passes of a k-th of it, then one optimiser step; loss_fn is
    called per micro-batch and returns its share of the step's loss, and the logged values are the sums over
    the micro-batches.
    """
    ckpt = checkpoint_path(weights_path)
    start = 0
    if resume and os.path.isfile(ckpt):
        start = load_checkpoint(ckpt, model, optimizer)
        pyutils.log(f"resumed from {ckpt} after epoch {start}")
    for epoch in range(start, epochs):
        model.train()
        loader.sampler.set_epoch(epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
        sums, n = {}, 0
        bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=not dist.is_main(),
                   dynamic_ncols=True)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            loss, logs = accumulate_gradients(model, batch, loss_fn, micro_batches, device, amp)
            optimizer.step()
            n += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
        # over every process: keys starting with "n_" are counts (summed), the rest per-step means
        keys = list(sums)  # same keys in the same order on every rank: the same loss_fn made them
        totals = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
        steps = max(n * dist.world_size(), 1)
        means = " ".join(f"{k[2:]} {int(v)}" if k.startswith("n_") else f"{k} {v / steps:.4f}"
                         for k, v in zip(keys, totals))
        pyutils.log(f"{desc} epoch {epoch + 1}/{epochs}: {n} steps, {means}")
        sync_buffers(model)
        if after_epoch is not None:
            after_epoch(epoch)
        save_checkpoint(ckpt, model, optimizer, epoch + 1)
    return max(epochs - start, 0)


def weights_current(weights_path):
    """True when the final weights were written after the last checkpoint: a resumed run that found every
    epoch done has nothing to save, and rewriting them would make every output made from them stale."""
    return os.path.isfile(weights_path) and pyutils.is_fresh(weights_path, checkpoint_path(weights_path))


def sync_buffers(model):
    """Rank 0's buffers on every process. DDP broadcasts them before each training forward only, so after
    the last step each process holds its own BatchNorm running statistics (from_scratch mode)."""
    for b in unwrap(model).buffers():
        dist.broadcast_(b, src=0)


def save_weights(path, model):
    """Final weights: a plain state dict (the format IRNet released), written atomically by rank 0."""
    if dist.is_main():
        with pyutils.atomic_path(path) as tmp:
            torch.save(unwrap(model).state_dict(), tmp)
    dist.barrier()


def require_global_batch(args, flag, training_stages):
    """Under torchrun a batch flag is the global batch, split evenly over the processes."""
    world = dist.world_size()
    if training_stages and getattr(args, flag) % world:
        raise pyutils.UserError(f"--{flag} {getattr(args, flag)} is the global batch of {world} processes: "
                                f"make it a multiple of {world}")
