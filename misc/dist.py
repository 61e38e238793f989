"""torchrun helpers. A single process is world size 1, rank 0: the same code path, never a special case."""
import os

import torch
import torch.distributed as td


def init_distributed_mode(device):
    """Join the process group when started by torchrun (RANK/WORLD_SIZE set); return the device to use."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not td.is_initialized():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            if device.startswith("cuda"):
                torch.cuda.set_device(local_rank)
                device = f"cuda:{local_rank}"
            td.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
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


def all_reduce_sum(t):
    if is_dist():
        td.all_reduce(t, op=td.ReduceOp.SUM)
    return t


def cleanup():
    if is_dist():
        td.destroy_process_group()
