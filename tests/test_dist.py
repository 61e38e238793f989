"""torchrun on CPU (gloo): two processes give what one process gives.

- loaders: same number of steps and the same global batches for world size 1 and 2;
- inference steps under a real `torchrun --nproc_per_node 2`: outputs byte-identical to one process;
- one training step of the CAM, IRN and segmentation networks in two spawned processes: parameters equal across ranks and
  equal (1e-5) to one process trained on the same global batch.
"""
from conftest import devkit_flags
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import run_sample
from misc import dist, imutils, pyutils, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_flags(devkit, work_dir):
    return devkit_flags(devkit, work_dir) + [
            "--backbone_weights", "none", "--cam_crop_size", "64", "--cam_resize_long", "48", "80",
            "--cam_scales", "1.0", "0.5", "--irn_crop_size", "96", "--irn_batch_size", "4",
            "--num_workers", "0", "--device", "cpu", "--exp_times", "4"]


# ---------------------------------------------------------------- loaders


class Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def loader_batches(monkeypatch, n, batch, world, drop_last):
    """Per rank, the list of batches (index lists) of epoch 1 of make_loader at this world size."""
    out = []
    for r in range(world):
        monkeypatch.setattr(dist, "world_size", lambda: world)
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        loader = training.make_loader(Items(n), batch, drop_last, 0, 0, "cpu", drop_last=drop_last)
        loader.sampler.set_epoch(1)
        out.append([b.tolist() for b in loader])
    return out


@pytest.mark.parametrize("n,batch", [(10, 4), (11, 4), (13, 2), (17, 8), (8, 8)])
def test_train_loader_steps_and_global_batches(monkeypatch, n, batch):
    (single,) = loader_batches(monkeypatch, n, batch, 1, True)
    ranks = loader_batches(monkeypatch, n, batch, 2, True)
    # max_step = len(loader) * epochs is the single-process (len(dataset) // batch) * epochs
    assert len(single) == n // batch
    assert [len(b) for b in ranks] == [n // batch] * 2
    for k, global_batch in enumerate(single):
        assert [len(r[k]) for r in ranks] == [batch // 2] * 2
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(global_batch)


def test_eval_loader_covers_every_item_once(monkeypatch):
    for world in (1, 2, 3):
        ranks = loader_batches(monkeypatch, 7, 4, world, False)
        seen = [i for r in ranks for b in r for i in b]
        assert sorted(seen) == list(range(7))  # no padding item counted twice


def test_batch_must_split(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(pyutils.UserError, match="multiple of 2"):
        training.make_loader(Items(10), 3, True, 0, 0, "cpu", drop_last=True)


def test_batch_that_does_not_split_is_refused_up_front(tiny_devkit, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    # 6 images split over 2 processes, but stage II's 3 CDA pairs do not
    assert run_sample.main(base_flags(tiny_devkit, tmp_path / "w") + ["--cam_batch_size", "6"]) == 2
    err = capsys.readouterr().err
    assert "--cam_batch_size 6" in err and "multiple of 4" in err
    assert not (tmp_path / "w").exists()  # refused before anything ran


# ---------------------------------------------------------------- inference steps under torchrun


# stage I: the inference steps and evaluation on given weights; stage II: the instance pool from stage I's
# masks (so rank 0 reads what both processes wrote). Thresholds high enough that the labels vary in an image.
INFERENCE = ["--train_cam_pass", "False", "--train_irn_pass", "False", "--pool_source", "sem_seg",
             "--conf_fg_thres", "0.6", "--conf_bg_thres", "0.4", "--sem_seg_bg_thres", "0.6", "--cam_eval_thres", "0.5"]
INFERENCE_ONLY = INFERENCE + [f"--cda_{s}_pass=False" for s in run_sample.STAGE1_STEPS]
# ... and then stage II trained under DDP too: CDA pairs in train_cam, train_irn, mean displacement
WITH_STAGE2 = INFERENCE + ["--cam_batch_size", "8", "--cam_num_epoches", "1", "--irn_num_epoches", "1"]


@contextlib.contextmanager
def one_thread():
    """The reference run with one thread, as each worker (torchrun's OMP_NUM_THREADS=1): CPU kernels pick
    their algorithm by thread count, which alone moves a trained weight by ~1e-5 (measured here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_weights(work, devkit):
    """Seeded random CAM and IRN weights where the pipeline expects trained ones. The CAM network's BatchNorm
    statistics are those of the devkit's images, so that its maps vary over an image (with the initial
    ones, mean 0 and variance 1, they are flat)."""
    from net import resnet50_cam, resnet50_irn
    torch.manual_seed(0)
    net = resnet50_cam.Net(20, from_scratch=True).train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the one batch
    imgs = [imutils.read_image(str(p)) for p in sorted((devkit / "JPEGImages").glob("*.jpg"))]
    x = torch.stack([torch.from_numpy(imutils.HWC_to_CHW(imutils.Normalize()(im)).copy()) for im in imgs])
    with torch.no_grad():
        net(x.float())
    os.makedirs(work / "sess", exist_ok=True)
    torch.save(net.state_dict(), work / "sess" / "res50_cam.pth")
    torch.save(resnet50_irn.Net().state_dict(), work / "sess" / "res50_irn.pth")


def output_files(work):
    skip = {"run.log", "report.html", "results.json"}
    return sorted(p.relative_to(work) for p in work.rglob("*")
                  if p.is_file() and p.name not in skip and p.parent.name != "sess")


def same_file(a, b, work_a, work_b):
    if a.suffix == ".npz":  # zip entries carry a time stamp: compare the arrays' bytes
        x, y = pyutils.load_npz(str(a)), pyutils.load_npz(str(b))
        return x.keys() == y.keys() and all(x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                                            and x[k].tobytes() == y[k].tobytes() for k in x)
    if a.suffix == ".json":  # pool.json names its (work dir) folders
        return a.read_text().replace(str(work_a), "W") == b.read_text().replace(str(work_b), "W")
    return a.read_bytes() == b.read_bytes()


def test_torchrun_pipeline_matches_one_process(tiny_devkit, tmp_path):
    """torchrun --nproc_per_node 2 run_sample.py: stage I's inference outputs and the instance pool are
    byte-identical to one process's; stage II then trains (DDP) and runs to the end."""
    one, two = tmp_path / "one", tmp_path / "two"
    for work in (one, two):
        random_weights(work, tiny_devkit)
    with one_thread():
        assert run_sample.main(base_flags(tiny_devkit, one) + INFERENCE_ONLY) == 0

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "run_sample.py"] + base_flags(tiny_devkit, two) + WITH_STAGE2
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    names = output_files(one)
    n_train = len(open(tiny_devkit / "train_aug.txt").read().split())
    assert sum(1 for p in names if p.parts[:2] == ("result", "cam")) == n_train
    # not a vacuous comparison: the masks vary within images, the pool holds instances cut from them
    def most_values(folder):
        return max(len(np.unique(imutils.read_label_png(str(one / p)))) for p in names
                   if p.parts[:2] == ("result", folder))
    assert most_values("ir_label") >= 3 and most_values("sem_seg") >= 2
    pool = json.loads((one / "instance_pool" / "pool.json").read_text())
    assert pool["source"] == "sem_seg" and pool["num_instances"] > 0
    assert set(names) <= set(output_files(two))
    different = [str(p) for p in names if not same_file(one / p, two / p, one, two)]
    assert not different

    # each process did its half; rank 0 alone logged, evaluated and wrote results.json, weights, samples
    assert f"make_cam: {(n_train + 1) // 2} of {n_train} images to do" in proc.stdout
    log = (two / "run.log").read_text()
    assert log.count("=== stage I: make_cam ===") == 1 and log.count("CAM IoU") == 2
    r1, r2 = (json.loads((w / "results.json").read_text()) for w in (one, two))
    assert r1["stage1"] == r2["stage1"]
    assert set(r2["stage2"]) == {"cam", "sem_seg"}
    for f in ("sess/cam_aug.pth", "sess/irn_aug.pth", "cda_samples.png", "report.html"):
        assert (two / f).stat().st_size > 0
    assert len(list((two / "result" / "sem_seg_aug").iterdir())) == len(open(tiny_devkit / "train.txt").read().split())
    assert not [p for p in two.rglob("*") if ".tmp" in p.name]


# ---------------------------------------------------------------- one training step, spawned processes


def train_flags(devkit, work_dir):
    # faithful mode (frozen BatchNorm: no per-process batch statistics), one step of the global batch 8
    return base_flags(devkit, work_dir) + [
        "--cam_batch_size", "8", "--cam_num_epoches", "1", "--cam_learning_rate", "0.01",
        "--stage2", "False"] + [f"--{s}_pass=False" for s in run_sample.STAGE1_STEPS if s != "train_cam"]


def save_per_rank(path, model):
    """Stands in for training.save_weights: every rank writes what it holds."""
    torch.save(training.unwrap(model).state_dict(), f"{path}.rank{dist.rank()}")
    dist.barrier()


def _fail_on_rank0():
    raise pyutils.UserError("no ground truth")


def _train_worker(rank, world, port, flags):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert dist.init_distributed_mode("cpu") == "cpu" and dist.world_size() == world
    # main_only: rank 0 runs it, every rank gets the result, and a failure on rank 0 reaches the others
    assert dist.main_only(lambda: dist.rank() + 7)() == 7
    with pytest.raises(pyutils.UserError, match="no ground truth" if rank == 0 else "failed on rank 0"):
        dist.main_only(_fail_on_rank0)()
    training.save_weights = save_per_rank
    torch.manual_seed(rank)  # different initialisations: DDP must start every rank from rank 0's
    if run_sample.main(flags) != 0:
        raise SystemExit(1)


def train_one_step_both_ways(one, two, flags_one, flags_two, weights, init_net):
    """Train in one process (work dir one) and in two spawned ones (two); check the two ranks hold equal
    weights and those equal (1e-5) the one process's. Returns the names of the float entries the step moved
    away from init_net() (made with seed 0, as the steps make theirs)."""
    torch.manual_seed(0)
    with one_thread():
        assert run_sample.main(flags_one) == 0
    torch.multiprocessing.start_processes(_train_worker, args=(2, free_port(), flags_two),
                                          nprocs=2, join=True, start_method="spawn")
    ref = torch.load(one / "sess" / f"{weights}.rank0")
    r0, r1 = (torch.load(two / "sess" / f"{weights}.rank{r}") for r in (0, 1))
    for k in ref:
        assert torch.equal(r0[k], r1[k]), k
        torch.testing.assert_close(r0[k], ref[k], rtol=0, atol=1e-5, msg=k)
    torch.manual_seed(0)
    init = init_net().state_dict()
    return [k for k in ref if ref[k].is_floating_point() and k in init and not torch.equal(ref[k], init[k])]


def test_one_training_step_matches_one_process(tiny_devkit, tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    n_train = len(open(tiny_devkit / "train_aug.txt").read().split())
    assert n_train // 8 == 1  # exactly one step

    monkeypatch.setattr(training, "save_weights", save_per_rank)
    from net import resnet50_cam
    moved = train_one_step_both_ways(one, two, train_flags(tiny_devkit, one), train_flags(tiny_devkit, two),
                                     "res50_cam.pth", lambda **kw: resnet50_cam.Net(20, **kw))
    # the step moved the trained layers (and the two processes moved them as one does)
    assert "classifier.weight" in moved and any(k.startswith("stage4") for k in moved)


def test_one_irn_training_step_matches_one_process(tiny_devkit, tmp_path, monkeypatch):
    """train_irn in two processes: each affinity/displacement mean is over the global batch (label counts
    summed over processes), so one step moves the weights as one process does on the same batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    random_weights(one, tiny_devkit)
    until_ir_labels = ["--make_sem_seg_pass", "False", "--eval_cam_pass", "False", "--eval_sem_seg_pass", "False",
                       "--stage2", "False"]
    assert run_sample.main(base_flags(tiny_devkit, one) + INFERENCE + until_ir_labels) == 0  # labels to learn from
    shutil.copytree(one, two)
    n_train = len(open(tiny_devkit / "train_aug.txt").read().split())
    assert n_train // 8 == 1  # exactly one step
    flags = ["--irn_batch_size", "8", "--irn_num_epoches", "1", "--irn_learning_rate", "0.1", "--stage2", "False"] + \
        [f"--{s}_pass=False" for s in run_sample.STAGE1_STEPS if s != "train_irn"]

    monkeypatch.setattr(training, "save_weights", save_per_rank)
    from net import resnet50_irn
    moved = train_one_step_both_ways(one, two, base_flags(tiny_devkit, one) + flags,
                                     base_flags(tiny_devkit, two) + flags, "res50_irn.pth", resnet50_irn.Net)
    assert any(k.startswith("fc_edge") for k in moved) and any(k.startswith("fc_dp") for k in moved)


def test_one_seg_training_step_matches_one_process(tiny_devkit, tmp_path, monkeypatch):
    """train_seg in two processes with deeplab-pytorch's loss groups (--seg_iter_size 2: each process holds one
    group of the global batch of 4): one step moves the weights as one process does on the same batch."""
    one, two = tmp_path / "one", tmp_path / "two"

    def flags(work):
        return base_flags(tiny_devkit, work) + ["--stage2", "False"] + \
            [f"--{s}_pass=False" for s in run_sample.STAGE1_STEPS] + [
            "--train_seg_pass=True", "--seg_label_dir", str(tiny_devkit / "SegmentationClass"),
            "--seg_arch", "deeplabv2", "--seg_backbone_depth", "50", "--seg_backbone_weights", "none",
            "--seg_crop_size", "32", "--seg_batch_size", "4", "--seg_iter_size", "2", "--seg_num_iters", "1",
            "--seg_checkpoint_every", "1", "--seg_learning_rate", "0.01", "--seg_msc_scales", "0.5"]

    monkeypatch.setattr(training, "save_weights", save_per_rank)
    from net import deeplab
    moved = train_one_step_both_ways(one, two, flags(one), flags(two), "deeplab.pth",
                                     lambda: deeplab.build(21, "deeplabv2", 50, "none"))
    assert any(k.startswith("head.branches") for k in moved) and any(k.startswith("backbone.layer4") for k in moved)
