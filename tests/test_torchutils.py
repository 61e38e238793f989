import pytest
import torch

from misc import torchutils
from misc.pyutils import UserError


def make_optimizer(max_step=10, momentum=None):
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = torchutils.PolyOptimizer([
        {"params": [a], "lr": 0.1, "weight_decay": 1e-4},
        {"params": [b], "lr": 1.0, "weight_decay": 1e-4},
    ], lr=0.1, weight_decay=1e-4, max_step=max_step, momentum=momentum)
    return opt, a, b


def test_poly_schedule_values():
    opt, a, b = make_optimizer(max_step=10)
    seen = []
    for _ in range(13):
        opt.zero_grad()
        (a.sum() + b.sum()).backward()
        opt.step()
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
    # step s (0-based) runs with base * (1 - s / max_step) ** 0.9; after max_step the rate stays put
    for s in (0, 1, 5, 9):
        mult = (1 - s / 10) ** 0.9
        assert seen[s] == pytest.approx((0.1 * mult, 1.0 * mult))
    assert seen[12] == seen[9]
    assert opt.global_step == 13


def test_momentum_quirk_and_weight_decay():
    opt, a, _ = make_optimizer()
    for group in opt.param_groups:
        assert group["momentum"] == 1e-4  # the reference's SGD(params, lr, weight_decay) quirk
        assert group["weight_decay"] == 1e-4
    # the updates equal plain SGD with momentum 1e-4 and weight decay 1e-4 at the same rates
    ref = torch.nn.Parameter(torch.ones(3))
    sgd = torch.optim.SGD([ref], lr=0.1, momentum=1e-4, weight_decay=1e-4)
    for s in range(3):
        for p, o in ((a, opt), (ref, sgd)):
            o.zero_grad()
            (p * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        sgd.param_groups[0]["lr"] = 0.1 * (1 - s / 10) ** 0.9
        opt.step()
        sgd.step()
        torch.testing.assert_close(a.detach(), ref.detach())
    opt2, _, _ = make_optimizer(momentum=0.9)
    assert all(g["momentum"] == 0.9 for g in opt2.param_groups)


def test_gap2d():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    assert torchutils.gap2d(x).shape == (2, 3)
    assert torchutils.gap2d(x, keepdims=True).shape == (2, 3, 1, 1)
    torch.testing.assert_close(torchutils.gap2d(x)[1, 2], x[1, 2].mean())


def test_checkpoint_errors(tmp_path):
    model = torch.nn.Linear(2, 3)
    with pytest.raises(UserError, match=r"not found: .*nope\.pth; run step train_cam first"):
        torchutils.load_checkpoint(model, str(tmp_path / "nope.pth"), written_by="step train_cam")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        torchutils.load_checkpoint(model, str(bad))
    other = tmp_path / "other.pth"
    torch.save(torch.nn.Conv2d(2, 3, 1).state_dict(), other)  # same keys, other shapes
    with pytest.raises(UserError, match="wrong shape"):
        torchutils.load_checkpoint(model, str(other))
    torch.save({"w": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="2 missing, 1 unexpected keys"):
        torchutils.load_checkpoint(model, str(other))
    with pytest.raises(UserError, match=r"weights not found: .*nope\.pth; run step train_irn first"):
        torchutils.load_weights(model, str(tmp_path / "nope.pth"), "train_irn")
    good = tmp_path / "good.pth"
    src = torch.nn.Linear(2, 3)
    torch.save(src.state_dict(), good)
    torchutils.load_checkpoint(model, str(good))
    torch.testing.assert_close(model.weight, src.weight)


def test_cda_reference_schedule_takes_twice_max_step_with_the_lr_at_its_floor():
    """CDA computes max_step from the full batch and steps in half batches (--cda_max_step reference)."""
    import types
    from misc.classifier import cam_max_step
    args = types.SimpleNamespace(cam_batch_size=16, cam_num_epoches=5, cda_max_step="reference")
    assert cam_max_step(10582, 10582 // 8, args, cda=True) == 3305  # VOC train_aug: 6,610 steps are taken
    assert cam_max_step(10582, 10582 // 16, args, cda=False) == 3305  # stage I: the loader's own steps
    args.cda_max_step = "steps"
    assert cam_max_step(10582, 10582 // 8, args, cda=True) == 6610

    args = types.SimpleNamespace(cam_batch_size=4, cam_num_epoches=2, cda_max_step="reference")
    images, steps_per_epoch = 42, 42 // 2
    max_step = cam_max_step(images, steps_per_epoch, args, cda=True)
    total = steps_per_epoch * args.cam_num_epoches
    assert (max_step, total) == (20, 42) and total >= 2 * max_step
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torchutils.PolyOptimizer([{"params": [w], "lr": 0.1}], lr=0.1, weight_decay=1e-4, max_step=max_step)
    lrs = []
    for _ in range(total):
        w.grad = torch.ones(1)
        opt.step()
        lrs.append(opt.param_groups[0]["lr"])
    floor = 0.1 * (1 / max_step) ** 0.9
    assert lrs[max_step - 1] == pytest.approx(floor, rel=1e-12)
    assert all(lr == lrs[max_step - 1] for lr in lrs[max_step:])  # unchanged from max_step on
    assert lrs[max_step - 2] > floor
    assert [0.1 * opt.lr_mult(s) for s in range(total)] == pytest.approx(lrs, rel=1e-12)
