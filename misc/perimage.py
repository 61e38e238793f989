"""The skeleton every per-image step shares: which images are still to do, a loop over them with a progress
bar, and the barrier that lets the processes of a torchrun leave together.

A step writes each output with the atomic helpers of misc.pyutils, so an interrupted step leaves whole files
only, and pending() makes the step resumable: an output that exists and is newer than its inputs is kept.
"""
import multiprocessing
import os

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from misc import dist, pyutils


def pending(desc, names, out_path, args, deps=lambda name: (), out_dirs=()):
    """Indices of this process's share of `names` whose output out_path(name) is to be made (all with
    --force), after creating the output folders; logs how many."""
    for d in out_dirs:
        os.makedirs(d, exist_ok=True)
    todo = dist.pending(names, out_path, args.force, deps)
    pyutils.log(f"{desc}: {len(todo)} of {len(names)} images to do" + (f" -> {', '.join(out_dirs)}" if out_dirs else ""))
    return todo


def bar(desc, total=None):
    return tqdm(total=total, desc=desc, disable=not dist.is_main(), dynamic_ncols=True)


def for_each_loaded(desc, dataset, todo, work, num_workers, **loader_kw):
    """work(item) for the dataset items `todo` (one per load unless loader_kw says otherwise), in inference
    mode, then wait for the other processes."""
    if "batch_sampler" in loader_kw:
        loader = DataLoader(dataset, num_workers=num_workers, **loader_kw)
    else:
        loader = DataLoader(Subset(dataset, todo), batch_size=None, num_workers=num_workers, **loader_kw)
    progress = bar(desc, len(todo))
    with torch.inference_mode():
        for item in loader:
            progress.update(work(item) or 1)
    progress.close()
    dist.barrier()


def for_each_in_processes(desc, jobs, work, num_workers, total=None):
    """work(job) -> images done (None: 1) for every job, in a pool of num_workers processes when there are several
    (the CRF steps: independent images, single-threaded work), then wait for the other processes."""
    progress = bar(desc, len(jobs) if total is None else total)
    if num_workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(num_workers) as pool:
            # one job per task: a CRF takes ~1 s, so the queue costs nothing and no worker idles while
            # another holds a chunk of several jobs at the end
            for n in pool.imap_unordered(work, jobs, chunksize=1):
                progress.update(n or 1)
    else:
        for job in jobs:
            progress.update(work(job) or 1)
    progress.close()
    dist.barrier()


def crf_chunks(jobs, args):
    """The CRF steps' jobs grouped for one call each and the processes to run them: one image per job in a pool
    of --num_workers processes with pydensecrf (single-threaded C++), --crf_batch images per call in this
    process with the torch CRF (one batched lattice on the device)."""
    if args.crf_backend == "torch":
        return [jobs[i:i + args.crf_batch] for i in range(0, len(jobs), args.crf_batch)], 1
    return [[job] for job in jobs], args.num_workers
