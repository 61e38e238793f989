"""torchrun helpers. A single process is world size 1, rank 0: the same code path, never a special case.

    torchrun --nproc_per_node 4 run_sample.py ...      # one node, 4 processes (NCCL on CUDA, gloo on CPU)

Training steps split the global batch over processes (misc.training); per-image steps take every
world_size-th image (shard) and meet at a barrier; steps that write one shared file (evaluation, the
instance pool) run on rank 0 while the others wait (main_only).
"""
import datetime
import functools
import os

import torch
import torch.distributed as td

from misc.pyutils import UserError


def init_distributed_mode(device):
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set); return the device to use."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not td.is_initialized():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            if device.startswith("cuda"):
                if local_rank >= torch.cuda.device_count():
                    raise UserError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs on this "
                                    f"node; use --nproc_per_node {torch.cuda.device_count()} or fewer")
                torch.cuda.set_device(local_rank)
            # NCCL between GPUs, gloo on CPU. Rank 0 runs the evaluation steps alone while the others wait
            # at a collective, hence a generous timeout.
            td.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                  timeout=datetime.timedelta(minutes=120))
        if device.startswith("cuda"):
            device = f"cuda:{torch.cuda.current_device()}"
    return device


def is_dist():
    return td.is_available() and td.is_initialized()


def rank():
    return td.get_rank() if is_dist() else 0


def world_size():
    return td.get_world_size() if is_dist() else 1


def is_main():
    return rank() == 0


def barrier():
    if is_dist():
        td.barrier()


def shard(items):
    """This process's share of a list (round robin), for inference steps."""
    return items[rank()::world_size()]


def pending(names, out_path, force=False, deps=lambda name: ()):
    """Indices of this process's share of `names` whose output out_path(name) is to be made: all with force,
    else those whose output is missing or older than one of deps(name) (weights, inputs). What makes the
    per-image steps resumable."""
    from misc.pyutils import is_fresh
    return [i for i in shard(list(range(len(names)))) if force or not is_fresh(out_path(names[i]), *deps(names[i]))]


def all_reduce_sum(t):
    """Sum a tensor over processes, in place. NCCL only reduces GPU tensors, so it makes the trip there."""
    if is_dist():
        if td.get_backend() == "nccl" and not t.is_cuda:
            on_gpu = t.cuda()
            td.all_reduce(on_gpu, op=td.ReduceOp.SUM)
            t.copy_(on_gpu.cpu())
        else:
            td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def broadcast_(t, src=0):
    """rank src's values of tensor t on every process, in place."""
    if is_dist():
        td.broadcast(t, src=src)
    return t


def broadcast_object(obj, src=0):
    """rank src's picklable `obj` on every process."""
    if not is_dist():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def main_only(fn):
    """Run `fn` on rank 0 only; the others wait for it and get its return value.

    For steps that write one shared file (results.json, the instance pool). If rank 0 fails, the
    others raise too instead of waiting forever at the next collective.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result, error = None, None
        if is_main():
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                if not is_dist():
                    raise
                error = e
        status = broadcast_object(("failed", f"{error.__class__.__name__}: {error}") if error is not None
                                  else ("ok", result))
        if error is not None:
            raise error
        if status[0] == "failed":
            raise UserError(f"{fn.__module__}.{fn.__name__} failed on rank 0 ({status[1]}); see its message")
        return status[1]
    return wrapper


def cleanup():
    if is_dist():
        td.destroy_process_group()
