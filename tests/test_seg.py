"""The segmentation step: DeepLab shapes, the ASPP, fused inference, train_seg and eval_seg on the tiny devkit."""
import argparse
import json
import os
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import devkit_flags
from misc import config, pyutils, stages, training
from misc.imutils import read_image
from misc.pyutils import UserError
from net import deeplab
from step import eval_seg, train_seg
from voc12.seg_dataset import PseudoMaskStream, StreamSampler


def seg_args(devkit, work, *flags, **attrs):
    """The stage I namespace run_sample.py would hand the segmentation steps (config.resolve, stages.stage_args),
    with attributes set by the test on top."""
    d = str(devkit)
    # the demo's network (DeepLab-v3+ on a ResNet-50 from scratch: v2's BatchNorm-free head does not learn from
    # random features), small; the multi-scale loss on
    argv = devkit_flags(devkit, work) + [
        "--seg_arch", "deeplabv3plus", "--seg_backbone_weights", "none", "--seg_backbone_depth", "50",
        "--seg_crop_size", "32", "--seg_batch_size", "2", "--seg_num_iters", "6", "--seg_checkpoint_every", "3",
        "--seg_learning_rate", "0.01", "--seg_infer_scales", "1.0", "0.5", "--seg_infer_flip", "True",
        "--seg_label_dir", f"{d}/SegmentationClass", "--seg_test_list", "", "--device", "cpu", "--num_workers", "0",
        "--from_scratch", "--sem_seg_out_dir", str(work / "sem_seg"), *flags]
    a = stages.stage_args(config.resolve(argv), stages.STAGES[0])
    for k, v in attrs.items():
        setattr(a, k, v)
    return a


# ---------------------------------------------------------------- network

def test_defaults_are_deeplab_pytorch_voc12():
    p = argparse.ArgumentParser()
    train_seg.add_arguments(p)
    a = p.parse_args([])
    assert (a.seg_arch, a.seg_backbone_depth, a.seg_crop_size, a.seg_batch_size, a.seg_num_iters) == \
        ("deeplabv2", 101, 321, 10, 20000)
    assert (a.seg_learning_rate, a.seg_momentum, a.seg_weight_decay) == (2.5e-4, 0.9, 5e-4)
    assert tuple(a.seg_rescale) == (0.5, 0.75, 1.0, 1.25, 1.5) and tuple(a.seg_msc_scales) == (0.5, 0.75)
    assert tuple(a.seg_infer_scales) == (1.0, 0.5, 0.75) and a.seg_crf is True
    assert a.seg_iter_size == 2 and a.seg_crf_image == "reference"  # BATCH_SIZE.TRAIN 5 x ITER_SIZE 2; main.py's CRF
    p.set_defaults(**train_seg.DEMO_DEFAULTS)  # every demo setting is one of the flags
    demo = p.parse_args([])
    assert all(getattr(demo, k) == v for k, v in train_seg.DEMO_DEFAULTS.items())
    assert eval_seg.CRF == dict(iter_max=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3)


@pytest.mark.parametrize("arch,depth", [("deeplabv2", 101), ("deeplabv2", 50), ("deeplabv3plus", 50)])
def test_output_stride_and_upsampled_logits(arch, depth):
    torch.manual_seed(0)
    model = deeplab.build(21, arch, depth, "none").eval()
    stride = 8 if arch == "deeplabv2" else 4
    for h, w in ((41, 26), (40, 24))[:1 if depth == 101 else 2]:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert out.shape == (2, 21, -(-h // stride), -(-w // stride)) and model.logit_size(h, w) == out.shape[-2:]
        assert model.infer(torch.randn(1, 3, h, w), scales=(1.0, 0.5)).shape == (1, 21, h, w)
    if arch == "deeplabv2":  # DeepLab-v2's dilations: 2 in every block of layer3, 4 in layer4, stride 8
        assert {b.conv2.dilation for b in model.backbone.layer3} == {(2, 2)}
        assert {b.conv2.dilation for b in model.backbone.layer4} == {(4, 4)}
        assert [c.dilation for c in model.head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    # frozen BatchNorm (the faithful mode): nothing of it is trained
    assert not any(p.requires_grad for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)
                   for p in m.parameters())


def test_aspp_sums_four_branches():
    torch.manual_seed(0)
    aspp = deeplab.ASPPSum(8, 5)
    assert len(aspp.branches) == 4 and all(float(c.bias.detach().abs().max()) == 0 for c in aspp.branches)
    for c in aspp.branches:
        torch.nn.init.normal_(c.bias)
    x = torch.randn(2, 8, 30, 30)
    parts = [F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(aspp.branches, (6, 12, 18, 24))]
    torch.testing.assert_close(aspp(x), sum(parts))
    assert aspp(x).shape == (2, 5, 30, 30)


def test_fused_inference_equals_the_loop():
    torch.manual_seed(0)
    model = deeplab.build(21, "deeplabv2", 50, "none").eval()
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    img = torch.randn(1, 3, 37, 29)
    scales = (1.0, 0.5, 0.75)
    with torch.no_grad():
        base = model(img).shape[-2:]
        maps = []
        for s in scales:
            x = img if s == 1 else F.interpolate(img, scale_factor=s, mode="bilinear", align_corners=False)
            for flip in (False, True):
                out = model(x.flip(-1) if flip else x)
                out = out.flip(-1) if flip else out
                maps.append(F.interpolate(out, base, mode="bilinear", align_corners=False))
        expected = F.interpolate(torch.stack(maps).max(0)[0], (37, 29), mode="bilinear", align_corners=False)
    tol = 1e-5 * float(expected.abs().max())  # a batch of two and two single forwards round differently
    torch.testing.assert_close(model.infer(img, scales, flip=True), expected, rtol=0, atol=tol)
    no_flip = F.interpolate(torch.stack(maps[::2]).max(0)[0], (37, 29), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model.infer(img, scales, flip=False), no_flip, rtol=0, atol=tol)


def test_imagenet_weights_offline_is_one_line(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as e:
        deeplab.build(21, "deeplabv2", 101, "imagenet")
    assert "resnet101-63fe2227.pth" in str(e.value) and "\n" not in str(e.value)


def test_poly_rate_steps_every_ten_iterations():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = train_seg.SegPolyOptimizer([{"params": [p], "lr": 1.0}], lr=1.0, weight_decay=0, max_step=100,
                                     momentum=0.9, power=0.9)
    lrs = []
    for _ in range(21):
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:10] == [1.0] * 10 and len(set(lrs[10:20])) == 1
    assert lrs[10] == pytest.approx(0.9 ** 0.9) and lrs[20] == pytest.approx(0.8 ** 0.9)


def test_grouped_loss_equals_accumulated_half_batches():
    """--seg_iter_size 2 on one batch of 6 = deeplab-pytorch's two accumulated batches of 3: each half's loss
    averaged over its own labelled pixels (here very different counts), divided by 2, summed; gradients too."""
    gen = torch.Generator().manual_seed(0)
    logits = [torch.randn(6, 21, 9, 9, generator=gen, requires_grad=True),
              torch.randn(6, 21, 5, 5, generator=gen, requires_grad=True)]
    label = torch.randint(0, 21, (6, 9, 9), generator=gen)
    label[:2, :6] = 255  # the first half has far fewer labelled pixels
    label[4, :, :3] = 255
    ours = train_seg.segmentation_loss(logits, label, groups=2, iter_size=2)
    g_ours = torch.autograd.grad(ours, logits)
    ref = 0
    for half in (slice(0, 3), slice(3, 6)):
        part = 0
        for o in logits:
            lab = train_seg.resize_labels(label[half], o.shape[-2:])
            part = part + F.cross_entropy(o[half], lab, ignore_index=255)  # mean over the labelled pixels
        ref = ref + part / 2
    g_ref = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref, rtol=1e-6, atol=0)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-9) for a, b in zip(g_ours, g_ref))
    whole = train_seg.segmentation_loss(logits, label)  # iter_size 1: one average over all 6 images
    assert not torch.allclose(whole, ours, rtol=1e-4)
    assert whole.item() == pytest.approx(sum(float(F.cross_entropy(o.detach(), train_seg.resize_labels(label, o.shape[-2:]),
                                                                   ignore_index=255)) for o in logits), rel=1e-6)


def grouped_single_pass_loss(outputs, label, iter_size):
    """The straightforward single-pass formulation: one forward of the whole batch, each of its iter_size
    groups of consecutive images averaged over its own labelled pixels (F.cross_entropy's mean), / iter_size."""
    n = label.shape[0] // iter_size
    total = 0
    for g in range(iter_size):
        part = slice(g * n, (g + 1) * n)
        for o in outputs:
            total = total + F.cross_entropy(o[part], train_seg.resize_labels(label[part], o.shape[-2:]),
                                            ignore_index=255) / iter_size
    return total


def frozen_deeplab(scales=(0.5,)):
    """DeepLab-v2 on ResNet-50, BatchNorm frozen (the faithful mode) with statistics that keep activations tame."""
    torch.manual_seed(0)
    net = deeplab.build(21, "deeplabv2", 50, "none")
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=gen)
            m.running_var.uniform_(1.0, 4.0, generator=gen)
    for c in net.head.branches:
        torch.nn.init.normal_(c.bias, std=0.1, generator=gen)
    assert not train_seg.uses_batch_statistics(net)
    return deeplab.MultiScaleTrainer(net, scales).train()


def test_accumulated_passes_equal_one_grouped_forward():
    """--seg_iter_size 2 with frozen BatchNorm: two forward/backward passes of half the batch (training.fit's
    accumulation with train_seg's per-pass loss) give the gradients of one forward of the whole batch with the
    group-averaged loss, to float precision; so does the loss."""
    model = frozen_deeplab()
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(4, 3, 41, 33, generator=gen)
    label = torch.randint(0, 21, (4, 41, 33), generator=gen)
    label[0, :30] = 255  # the first group has far fewer labelled pixels than the second
    label[3, :, :10] = 255

    model.zero_grad()
    ref_loss = grouped_single_pass_loss(model(img), label, 2)
    ref_loss.backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    def loss_fn(m, batch):  # train_seg.run's, one group per pass
        loss = train_seg.segmentation_loss(m(batch["img"]), batch["label"], 1, 2)
        return loss, {"loss": loss.item()}
    passes = []
    model.register_forward_pre_hook(lambda m, inp: passes.append(inp[0].shape[0]))
    model.zero_grad()
    loss, logs = training.accumulate_gradients(model, {"img": img, "label": label, "name": list("abcd")},
                                               loss_fn, 2, "cpu")
    assert passes == [2, 2]
    acc = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    assert acc.keys() == ref.keys() and len(ref) == 61  # every conv of ResNet-50 and the 4 ASPP branches
    assert loss == pytest.approx(ref_loss.item(), rel=1e-6) and logs["loss"] == pytest.approx(loss, rel=1e-12)
    worst = max(float((acc[k] - ref[k]).abs().max() / ref[k].abs().max().clamp(min=1e-30)) for k in ref)
    assert worst < 1e-4, worst  # relative to each tensor's largest gradient
    total = torch.cat([(acc[k] - ref[k]).flatten() for k in ref]).norm() / torch.cat([ref[k].flatten() for k in ref]).norm()
    assert total < 1e-5, float(total)
    print(f"accumulated vs single grouped forward: loss {loss:.8f} vs {ref_loss.item():.8f}, gradients max "
          f"relative difference per tensor {worst:.2e}, over all {float(total):.2e}")


def test_split_batch_keeps_order_and_names():
    batch = {"img": torch.arange(6).view(6, 1), "label": torch.arange(6) * 10, "name": list("abcdef")}
    parts = training.split_batch(batch, 3)
    assert [p["name"] for p in parts] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert torch.equal(torch.cat([p["img"] for p in parts]), batch["img"]) and parts[2]["label"].tolist() == [40, 50]
    with pytest.raises(ValueError):
        training.split_batch(batch, 4)


def test_batch_statistics_decide_between_passes_and_one_forward():
    assert not train_seg.uses_batch_statistics(deeplab.build(21, "deeplabv2", 50, "none"))
    assert train_seg.uses_batch_statistics(deeplab.build(21, "deeplabv2", 50, "none", from_scratch=True))
    assert train_seg.uses_batch_statistics(deeplab.build(21, "deeplabv3plus", 50, "none"))  # the head's BatchNorm


def count_forwards(monkeypatch):
    """Batch sizes of every MultiScaleTrainer forward from now on."""
    sizes = []
    forward = deeplab.MultiScaleTrainer.forward

    def counted(self, x):
        sizes.append(int(x.shape[0]))
        return forward(self, x)
    monkeypatch.setattr(deeplab.MultiScaleTrainer, "forward", counted)
    return sizes


def test_train_seg_accumulates_as_one_grouped_forward(tiny_devkit, tmp_path, monkeypatch, capsys):
    """train_seg with frozen BatchNorm and --seg_iter_size 2 runs 2 passes of 2 per step of 4; its weights after
    two steps equal those of the single-forward path (one forward of 4, the loss averaged per group of 2)."""
    flags = ("--seg_arch", "deeplabv2", "--seg_batch_size", "4", "--seg_iter_size", "2", "--seg_num_iters", "2",
             "--seg_checkpoint_every", "2", "--seg_msc_scales", "0.5", "--seg_learning_rate", "1e-3")
    pyutils.setup_logging()
    sizes = count_forwards(monkeypatch)
    acc = seg_args(tiny_devkit, tmp_path / "acc", *flags, from_scratch=False)
    train_seg.run(acc)
    assert sizes == [2, 2, 2, 2]
    assert "--seg_iter_size 2: 2 forward/backward passes of 2 accumulated" in capsys.readouterr().out
    sizes.clear()
    monkeypatch.setattr(train_seg, "uses_batch_statistics", lambda net: True)  # the from-scratch path's layout
    one = seg_args(tiny_devkit, tmp_path / "one", *flags, from_scratch=False)
    train_seg.run(one)
    assert sizes == [4, 4]
    assert "one forward, the loss averaged per group of 2" in capsys.readouterr().out
    a = torch.load(acc.seg_weights_name, weights_only=True)
    b = torch.load(one.seg_weights_name, weights_only=True)
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert any(k.startswith("head.branches") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert moved  # two forwards of 2 and one of 4 round differently: a real comparison
    print(f"train_seg accumulated vs one grouped forward, 2 steps: {len(moved)} of {len(a)} tensors differ, largest "
          f"difference {max(float((a[k] - b[k]).abs().max()) for k in moved):.2e}")


def test_from_scratch_keeps_one_forward(tiny_devkit, tmp_path, monkeypatch, capsys):
    """The demo's mode (BatchNorm in training mode): one forward of the whole batch, as before accumulation."""
    pyutils.setup_logging()
    sizes = count_forwards(monkeypatch)
    train_seg.run(seg_args(tiny_devkit, tmp_path, "--seg_batch_size", "4", "--seg_num_iters", "1",
                           "--seg_checkpoint_every", "1", "--seg_msc_scales"))
    assert sizes == [4]
    out = capsys.readouterr().out
    assert "one forward, the loss averaged per group of 2; not 2 accumulated passes" in out and "--from_scratch" in out


def test_two_processes_accumulate_their_own_groups(tiny_devkit, tmp_path, monkeypatch):
    """torchrun, 2 processes, global batch 8 in 4 groups (--seg_iter_size 4): each process accumulates 2 passes
    of 2 (DDP averages the gradients once, on the last), and the step equals one process's 4 passes of 2."""
    import test_dist
    one, two = tmp_path / "one", tmp_path / "two"

    def flags(work):
        return test_dist.base_flags(tiny_devkit, work) + ["--stage2", "False"] + \
            [f"--{s}_pass=False" for s in test_dist.run_sample.STAGE1_STEPS] + [
            "--train_seg_pass=True", "--seg_label_dir", str(tiny_devkit / "SegmentationClass"),
            "--seg_arch", "deeplabv2", "--seg_backbone_depth", "50", "--seg_backbone_weights", "none",
            "--seg_crop_size", "32", "--seg_batch_size", "8", "--seg_iter_size", "4", "--seg_num_iters", "1",
            "--seg_checkpoint_every", "1", "--seg_learning_rate", "0.01", "--seg_msc_scales"]
    monkeypatch.setattr(training, "save_weights", test_dist.save_per_rank)
    moved = test_dist.train_one_step_both_ways(one, two, flags(one), flags(two), "deeplab.pth",
                                               lambda: deeplab.build(21, "deeplabv2", 50, "none"))
    assert any(k.startswith("head.branches") for k in moved) and any(k.startswith("backbone.layer4") for k in moved)
    assert "4 forward/backward passes of 2 accumulated, 2 in each process" in (two / "run.log").read_text()


def test_loss_groups_must_be_whole_per_process():
    assert train_seg.local_groups(10, 2, 1) == 2 and train_seg.local_groups(10, 2, 2) == 1
    assert train_seg.local_groups(12, 1, 4) == 1 and train_seg.local_groups(12, 6, 3) == 2
    with pytest.raises(UserError, match="not a whole number of loss groups of 6"):
        train_seg.local_groups(12, 2, 4)
    with pytest.raises(UserError, match="divide --seg_batch_size 10"):
        train_seg.local_groups(10, 3, 1)


def test_crf_image_is_main_py_wrapped_mean_subtraction():
    img = np.array([[[0, 120, 200], [255, 255, 255]]], np.uint8)  # RGB
    # BGR (200, 120, 0) - (104.008, 116.669, 122.675) = (95.99, 3.33, -122.68): truncated, -122 wraps to 134
    assert eval_seg.crf_image(img).tolist() == [[[95, 3, 134], [150, 138, 132]]]
    assert eval_seg.crf_image(img, "raw").tolist() == img.tolist()
    with pytest.raises(ValueError):
        eval_seg.crf_image(img, "bgr")
    # the same as NumPy's float32 -> uint8 cast where that wraps (x86), over every grey level and channel
    grid = np.stack(np.meshgrid(np.arange(256), [0, 128], [255], indexing="ij"), -1).reshape(-1, 1, 3).astype(np.uint8)
    with np.errstate(invalid="ignore"):
        cast = (grid[..., ::-1].astype(np.float32) - eval_seg.MEAN_BGR).astype(np.uint8)
    if cast[0, 0, 2] == 134:  # R = 0: -122.675 -> -122 -> 134 on this platform (x86 here)
        assert np.array_equal(eval_seg.crf_image(grid), cast)


def test_stream_batches_do_not_depend_on_world_size(tiny_devkit):
    one = list(StreamSampler(4, 3, 7, world=1, rank=0))
    for seg in range(3):
        s1 = StreamSampler(4, 3, 7)
        s1.set_epoch(seg)
        shards = []
        for r in range(2):
            s = StreamSampler(4, 3, 7, world=2, rank=r)
            s.set_epoch(seg)
            shards.append(list(s))
        steps = list(s1.steps())
        assert sorted(shards[0] + shards[1]) == list(s1) == list(range(steps[0] * 4, (steps[-1] + 1) * 4))
    assert one == list(range(12))
    ds = PseudoMaskStream(str(tiny_devkit / "train_aug.txt"), str(tiny_devkit), str(tiny_devkit / "SegmentationClass"),
                          crop_size=40)
    # every pass is a permutation of the list; item pos is the same whatever asked before
    assert sorted(ds.image_index(p) for p in range(10, 20)) == list(range(10))
    a = ds[13]
    ds[25]  # another pass first
    b = ds[13]
    assert a["name"] == b["name"] and np.array_equal(a["img"], b["img"]) and a["img"].shape == (3, 40, 40)
    assert a["label"].dtype == np.int64 and set(np.unique(a["label"])) <= set(range(21)) | {255}


# ---------------------------------------------------------------- steps

@pytest.fixture(scope="module")
def trained(tiny_devkit, tmp_path_factory):
    """Ten steps on four images (ground-truth masks standing in for pseudo masks): enough to fit them a bit."""
    work = tmp_path_factory.mktemp("seg")
    four = work / "four.txt"
    four.write_text("".join(n + "\n" for n in (tiny_devkit / "train_aug.txt").read_text().split()[:4]))
    args = seg_args(tiny_devkit, work, "--seg_train_list", str(four), "--seg_rescale", "1.0", "--seg_num_iters", "10",
                    "--seg_checkpoint_every", "5", "--seg_batch_size", "2", "--seg_msc_scales", "0.75")
    train_seg.run(args)
    return args, work


def batch_loss(model, args):
    ds = PseudoMaskStream(args.seg_train_list, args.data, args.seg_label_dir, crop_size=int(args.seg_crop_size), scales=(1.0,),
                          seed=5)
    items = [ds[i] for i in range(4)]
    img = torch.from_numpy(np.stack([it["img"] for it in items]))
    label = torch.from_numpy(np.stack([it["label"] for it in items]))
    model.train()  # BatchNorm of the from-scratch network on the batch's statistics: a function of the weights
    with torch.no_grad():
        return float(train_seg.segmentation_loss([model(img)], label))


def test_train_seg_writes_weights_and_lowers_the_loss(trained, tiny_devkit):
    args, work = trained
    assert os.path.getsize(args.seg_weights_name) > 0 and os.path.isfile(args.seg_weights_name + ".ckpt")
    torch.manual_seed(args.seed)
    before = batch_loss(deeplab.build(21, "deeplabv3plus", 50, "none", from_scratch=True), args)
    after_model = deeplab.build(21, "deeplabv3plus", 50, "none", from_scratch=True)
    after_model.load_state_dict(torch.load(args.seg_weights_name, weights_only=True))
    after = batch_loss(after_model, args)
    assert after < 0.8 * before, (before, after)
    # --resume on a finished training leaves the weights as they are
    mtime = os.stat(args.seg_weights_name).st_mtime_ns
    args.resume = True
    try:
        train_seg.run(args)
    finally:
        args.resume = False
    assert os.stat(args.seg_weights_name).st_mtime_ns == mtime


def test_resumed_training_equals_the_uninterrupted_one(tiny_devkit, tmp_path, monkeypatch):
    flags = ("--seg_num_iters", "4", "--seg_checkpoint_every", "2", "--seg_msc_scales")
    whole = seg_args(tiny_devkit, tmp_path / "whole", *flags)
    train_seg.run(whole)

    class Killed(Exception):
        pass

    save = train_seg.training.save_checkpoint

    def save_then_die(*a, **k):
        save(*a, **k)
        raise Killed()
    cut = seg_args(tiny_devkit, tmp_path / "cut", *flags)
    monkeypatch.setattr(train_seg.training, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_seg.run(cut)  # dies after the checkpoint of iteration 2
    monkeypatch.setattr(train_seg.training, "save_checkpoint", save)
    assert torch.load(cut.seg_weights_name + ".ckpt", weights_only=True)["global_step"] == 2
    # another segment length would resume at the wrong iteration: refused
    other = seg_args(tiny_devkit, tmp_path / "cut", "--seg_num_iters", "4", "--seg_checkpoint_every", "3",
                     "--seg_msc_scales", resume=True)
    with pytest.raises(UserError, match="seg_checkpoint_every"):
        train_seg.run(other)
    cut.resume = True
    train_seg.run(cut)
    a = torch.load(whole.seg_weights_name, weights_only=True)
    b = torch.load(cut.seg_weights_name, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_eval_seg_writes_pngs_and_records_miou(trained, tiny_devkit, capsys):
    args, work = trained
    pyutils.setup_logging()
    result = eval_seg.run(args)
    val = (tiny_devkit / "val.txt").read_text().split()
    for name in val:
        with Image.open(os.path.join(args.seg_out_dir, name + ".png")) as im:
            assert im.mode == "P" and im.size[::-1] == read_image(str(tiny_devkit / "JPEGImages" / f"{name}.jpg")).shape[:2]
            assert np.asarray(im).max() < 21
    rec = json.loads((work / "results.json").read_text())["stage1"]["seg"]
    assert 0 <= rec["miou"] <= 1 and len(rec["iou"]) == 21 and rec["miou"] == result["miou"]
    assert all(v is None or 0 <= v <= 1 for v in rec["iou"].values()) and rec["crf"] is True and rec["flip"] is True
    assert "no test-set predictions" in capsys.readouterr().out
    eval_seg.run(args)  # resumable: every PNG is newer than the weights
    assert "eval_seg val: 0 of" in capsys.readouterr().out


def test_test_submission_layout_and_tar(trained, tiny_devkit, tmp_path, capsys):
    args, work = trained
    pyutils.setup_logging()
    ids = (tiny_devkit / "train.txt").read_text().split()[:3]
    (tmp_path / "test.txt").write_text("".join(i + "\n" for i in ids))
    a = seg_args(tiny_devkit, work, "--seg_test_list", str(tmp_path / "test.txt"), "--seg_crf", "False",
                 "--seg_test_out_dir", str(tmp_path / "sub"))
    a.seg_test_out_dir = str(tmp_path / "sub")
    eval_seg.run(a)
    folder = tmp_path / "sub" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.name for p in folder.iterdir()) == sorted(i + ".png" for i in ids)
    for i in ids:
        with Image.open(folder / f"{i}.png") as im:
            assert im.mode == "P"
    with tarfile.open(tmp_path / "sub" / "results.tar") as tar:
        assert sorted(tar.getnames()) == sorted(f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids)
    # a list whose images are not all in the devkit (VOC test without its download): skipped with a log line
    for i, lines in enumerate(("2010_999999\n2010_999998\n", f"{ids[0]}\n2010_999999\n")):
        (tmp_path / "absent.txt").write_text(lines)
        b = seg_args(tiny_devkit, work, "--seg_test_list", str(tmp_path / "absent.txt"))
        b.seg_test_out_dir = str(tmp_path / f"none{i}")
        eval_seg.run(b)
        assert "2010_999999.jpg" in capsys.readouterr().out and not (tmp_path / f"none{i}").exists()


def test_missing_pseudo_mask_is_a_user_error(tiny_devkit, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    names = (tiny_devkit / "train_aug.txt").read_text().split()
    for n in names[1:]:
        (masks / f"{n}.png").write_bytes((tiny_devkit / "SegmentationClass" / f"{n}.png").read_bytes())
    args = seg_args(tiny_devkit, tmp_path, "--seg_label_dir", str(masks))
    with pytest.raises(UserError) as e:
        train_seg.run(args)
    assert str(masks / f"{names[0]}.png") in str(e.value) and "\n" not in str(e.value)
    args = seg_args(tiny_devkit, tmp_path, "--seg_label_dir", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="pseudo-mask folder not found: .*nowhere"):
        train_seg.run(args)
    # without --seg_label_dir the stage's sem_seg_out_dir is the folder
    args = seg_args(tiny_devkit, tmp_path, "--seg_label_dir", "", sem_seg_out_dir=str(tmp_path / "sem_seg"))
    with pytest.raises(UserError, match="sem_seg"):
        train_seg.run(args)
    with pytest.raises(UserError, match="segmentation weights not found"):
        eval_seg.run(seg_args(tiny_devkit, tmp_path / "x"))
