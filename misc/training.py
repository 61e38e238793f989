"""The training loop shared by train_cam and train_irn: loaders, epochs, checkpoints, resume, AMP, DDP."""
import contextlib
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from misc import dist, pyutils


def make_loader(dataset, batch_size, shuffle, seed, num_workers, device, drop_last):
    """A loader over this process's share of `dataset`, batch_size being the global batch.

    DistributedSampler with world size 1 is a seeded shuffle, so one process and torchrun share a path.
    """
    world = dist.world_size()
    if batch_size % world:
        raise pyutils.UserError(f"batch size {batch_size} does not split over {world} processes; "
                                f"use a multiple of {world}")
    sampler = DistributedSampler(dataset, num_replicas=world, rank=dist.rank(), shuffle=shuffle, seed=seed)
    return DataLoader(dataset, batch_size=batch_size // world, sampler=sampler, num_workers=num_workers,
                      pin_memory=str(device).startswith("cuda"), drop_last=drop_last)


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
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if str(device).startswith("cuda") else None)
    return model


def unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def checkpoint_path(weights_path):
    return weights_path + ".ckpt"


def save_checkpoint(path, model, optimizer, epoch):
    if not dist.is_main():
        return
    state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "global_step": optimizer.global_step, "epoch": epoch}
    with pyutils.atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path, model, optimizer):
    """Restore model, optimiser and step; return the number of finished epochs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except Exception as e:
        raise pyutils.UserError(f"cannot resume from {path} ({e.__class__.__name__}); delete it to start over")
    optimizer.global_step = state["global_step"]
    return state["epoch"]


def fit(model, loader, optimizer, loss_fn, epochs, weights_path, device, amp=False, resume=False,
        desc="train", after_epoch=None):
    """Run `epochs` epochs of `loss_fn(model, batch) -> (loss, {name: float})`.

    Data randomness is a function of (seed, epoch, index) and the shuffle of (seed, epoch), so a run resumed
    from the checkpoint of epoch k reproduces the uninterrupted run exactly.
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
            with autocast(device, amp):
                loss, logs = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
        # keys starting with "n_" are counts (summed), the rest per-step means
        means = " ".join(f"{k[2:]} {int(v)}" if k.startswith("n_") else f"{k} {v / max(n, 1):.4f}"
                         for k, v in sums.items())
        pyutils.log(f"{desc} epoch {epoch + 1}/{epochs}: {n} steps, {means}")
        if after_epoch is not None:
            after_epoch(epoch)
        save_checkpoint(ckpt, model, optimizer, epoch + 1)


def save_weights(path, model):
    """Final weights: a plain state dict (the format IRNet released), written atomically by rank 0."""
    if dist.is_main():
        with pyutils.atomic_path(path) as tmp:
            torch.save(unwrap(model).state_dict(), tmp)
    dist.barrier()
