import os
import re
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from misc import torchutils
from misc.pyutils import UserError
from net import resnet50, resnet50_cam, resnet50_irn

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Key lists of IRNet's networks, taken from its own module tree (state_dict() of resnet50_cam.Net and of
# the resnet50_irn.AffinityDisplacementLoss that train_irn saves, crop 512, radius 10).
CAM_KEYS = open(os.path.join(FIXTURES, "irnet_cam_keys.txt")).read().split()
IRN_RELEASED_KEYS = open(os.path.join(FIXTURES, "irnet_irn_keys.txt")).read().split()
LOSS_BUFFERS = [k for k in IRN_RELEASED_KEYS if re.fullmatch(r"path_indices\d+|disp_target", k)]
IRN_KEYS = [k for k in IRN_RELEASED_KEYS if k not in LOSS_BUFFERS]


class TinyPathIndex:
    """Stand-in for misc.indexing.PathIndex (IRNet's attribute names): radius 2, four directions,
    each path = [destination, source] in flat indices of an (h, w) map."""

    def __init__(self, size):
        h, w = size
        self.radius, self.radius_floor = 2, 1
        self.search_dst = np.array([(0, 1), (1, -1), (1, 0), (1, 1)])
        full = np.arange(h * w, dtype=np.int64).reshape(h, w)
        ch, cw = h - 1, w - 2
        src = full[:ch, 1:1 + cw].ravel()
        paths = [[full[dy:dy + ch, 1 + dx:1 + dx + cw].ravel(), src] for dy, dx in self.search_dst]
        self.path_indices = [np.array(paths)]  # one path length: (4 paths, length 2, pixels)
        self.n_pairs = ch * cw


def perturb_bn(model):
    # random running statistics, so that "unchanged" is not trivially zeros/ones
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def bn_stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def cam_train_step(net):
    net.train()
    opt = torchutils.PolyOptimizer(
        [{"params": p, "lr": lr, "weight_decay": 1e-4} for p, lr in zip(net.trainable_parameters(), (0.1, 1.0))],
        lr=0.1, weight_decay=1e-4, max_step=10)
    x = torch.randn(2, 3, 64, 64)
    label = torch.tensor([[1.0] + [0.0] * 19, [0.0] * 19 + [1.0]])
    loss = F.multilabel_soft_margin_loss(net(x), label)
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_cam_net_faithful_training_step():
    net = resnet50_cam.Net(20)
    perturb_bn(net)
    before = bn_stats(net)
    stem = net.resnet50.conv1.weight.clone()
    cam_train_step(net)
    assert net.training and net.stage3.training  # train() reached every module
    for k, v in bn_stats(net).items():
        assert torch.equal(v, before[k]), k
    r = net.resnet50
    for m in (r.conv1, r.bn1, r.layer1, r.layer2):
        assert all(p.grad is None for p in m.parameters())
    assert not any(p.requires_grad for m in (r.conv1, r.bn1, r.layer1, r.layer2) for p in m.parameters())
    assert torch.equal(r.conv1.weight, stem)
    for m in (r.layer3, r.layer4, net.classifier):
        assert all(p.grad is not None for p in m.parameters())
    assert net.classifier.weight.grad.abs().sum() > 0


def test_cam_net_from_scratch_trains_everything():
    net = resnet50_cam.Net(20, from_scratch=True)
    before = bn_stats(net)
    cam_train_step(net)
    changed = [k for k, v in bn_stats(net).items() if not torch.equal(v, before[k])]
    assert "resnet50.bn1.running_mean" in changed and "resnet50.layer4.2.bn3.running_var" in changed
    assert net.resnet50.conv1.weight.grad is not None and net.resnet50.layer1[0].conv1.weight.grad is not None


def test_cam_shape_nonnegative_flip_invariant():
    cam = resnet50_cam.CAM(20).eval()
    perturb_bn(cam)
    img = torch.randn(3, 70, 50)
    pair = torch.stack([img, img.flip(-1)])
    with torch.no_grad():
        a = cam(pair)
        b = cam(pair.flip(0))  # [flip, image]
        batched = cam.forward_pairs(torch.stack([pair, pair.flip(0)]))
    assert a.shape == (20, 5, 4)  # ceil(70 / 16), ceil(50 / 16)
    assert (a >= 0).all() and a.sum() > 0
    torch.testing.assert_close(b, a.flip(-1))
    torch.testing.assert_close(batched[0], a)
    torch.testing.assert_close(batched[1], b)


def test_state_dict_keys_equal_irnet():
    assert list(resnet50_cam.Net(20).state_dict()) == CAM_KEYS
    assert len(LOSS_BUFFERS) == 21  # radius 10: 20 path lengths + disp_target
    assert list(resnet50_irn.EdgeDisplacement().state_dict()) == IRN_KEYS
    # our training form does not save the index buffers, so its checkpoint has the inference keys
    assert list(resnet50_irn.AffinityDisplacementLoss(TinyPathIndex((16, 16))).state_dict()) == IRN_KEYS


def test_reference_checkpoints_load_strictly(tmp_path):
    # IRN: a checkpoint with exactly the released keys (inference keys + the loss's index buffers)
    src = resnet50_irn.Net().state_dict()
    state = {k: (src[k] if k in src else torch.zeros(3, dtype=torch.int64)) for k in IRN_RELEASED_KEYS}
    state["mean_shift.running_mean"] = torch.tensor([0.25, -0.5])
    state["fc_dp7.4.running_mean"] = state["dp_layers.6.4.running_mean"] = state["mean_shift.running_mean"]
    path = str(tmp_path / "irn.pth")
    torch.save(state, path)
    model = resnet50_irn.load_irn_weights(resnet50_irn.EdgeDisplacement(crop_size=64), path)
    torch.testing.assert_close(model.mean_shift.running_mean, torch.tensor([0.25, -0.5]))
    # any other stray key is still refused
    state["stray"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(UserError, match="1 unexpected"):
        resnet50_irn.load_irn_weights(resnet50_irn.EdgeDisplacement(), path)

    # CAM: a released-style checkpoint loads into CAM and gives its backbone to resnet50(weights=PATH)
    cam_src = resnet50_cam.Net(20)
    perturb_bn(cam_src)
    path = str(tmp_path / "cam.pth")
    torch.save(cam_src.state_dict(), path)
    cam = resnet50_cam.load_cam_weights(resnet50_cam.CAM(20), path)
    torch.testing.assert_close(cam.classifier.weight, cam_src.classifier.weight)
    backbone = resnet50.resnet50(weights=path)
    torch.testing.assert_close(backbone.layer4[2].bn3.running_var, cam_src.resnet50.layer4[2].bn3.running_var)


def test_checkpoint_of_the_other_network_is_a_user_error(tmp_path):
    cam_path, irn_path = str(tmp_path / "cam.pth"), str(tmp_path / "irn.pth")
    torch.save(resnet50_cam.Net(20).state_dict(), cam_path)
    torch.save(resnet50_irn.Net().state_dict(), irn_path)
    with pytest.raises(UserError, match=r"IRN weights .*cam\.pth does not fit EdgeDisplacement: \d+ missing, \d+ unexpected"):
        resnet50_irn.load_irn_weights(resnet50_irn.EdgeDisplacement(), cam_path)
    with pytest.raises(UserError, match=r"CAM weights .*irn\.pth does not fit CAM: \d+ missing, \d+ unexpected"):
        resnet50_cam.load_cam_weights(resnet50_cam.CAM(20), irn_path)
    with pytest.raises(UserError, match=r"not found: .*missing\.pth; run step train_irn"):
        resnet50_irn.load_irn_weights(resnet50_irn.EdgeDisplacement(), str(tmp_path / "missing.pth"))


def test_backbone_weights_from_torchvision_file_and_offline_message(tmp_path, monkeypatch):
    tv = torchvision.models.resnet50()
    path = str(tmp_path / "tv.pth")
    torch.save(tv.state_dict(), path)
    ours = resnet50.resnet50(weights=path)
    torch.testing.assert_close(ours.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(UserError, match=r"backbone weights .*tv\.pth does not fit ResNet: \d+ missing, 0 unexpected"):
        resnet50.resnet50(weights=path)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as err:
        resnet50.resnet50(weights="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert "resnet50-0676ba61.pth" in msg and os.path.join(torch.hub.get_dir(), "checkpoints") in msg


def test_irn_training_step_gradients_and_losses():
    pi = TinyPathIndex((16, 16))  # 64 px crop at stride 4
    model = resnet50_irn.AffinityDisplacementLoss(pi)
    perturb_bn(model)
    before = bn_stats(model)
    model.train()
    x = torch.randn(2, 3, 64, 64)
    outputs = model(x, True)
    pos, neg, dp_fg, dp_bg = outputs
    assert pos.shape == neg.shape == (2, 4, pi.n_pairs)
    assert dp_fg.shape == dp_bg.shape == (2, 2, 4, pi.n_pairs)
    g = torch.Generator().manual_seed(0)
    labels = [(torch.rand(2, 4, pi.n_pairs, generator=g) > 0.5).float() for _ in range(3)]
    loss = resnet50_irn.irn_loss(outputs, *labels)
    assert all(torch.isfinite(v) for v in loss.values())
    assert set(loss) == {"pos", "neg", "dp_fg", "dp_bg", "total"}
    torch.testing.assert_close(loss["total"], (loss["pos"] + loss["neg"]) / 2 + (loss["dp_fg"] + loss["dp_bg"]) / 2)
    loss["total"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for m in (model.edge_layers, model.dp_layers) for p in m.parameters())
    for k, v in bn_stats(model).items():
        assert torch.equal(v, before[k]), k
    # all labels zero -> nothing to learn from -> exactly zero
    zeros = torch.zeros(2, 4, pi.n_pairs)
    assert all(v.item() == 0 for v in resnet50_irn.irn_loss(outputs, zeros, zeros, zeros).values())


def test_irn_loss_extremes():
    pi = TinyPathIndex((16, 16))
    model = resnet50_irn.AffinityDisplacementLoss(pi).train()
    with torch.no_grad():
        # no boundary anywhere -> affinity 1 on every pair; zero displacement everywhere
        model.fc_edge6.weight.zero_()
        model.fc_edge6.bias.fill_(-20.0)
        model.fc_dp7[3].weight.zero_()
        outputs = model(torch.randn(1, 3, 64, 64), True)
    ones = torch.ones(1, 4, pi.n_pairs)
    loss = resnet50_irn.irn_loss(outputs, ones, ones, ones)
    assert loss["pos"] < 1e-4  # perfect affinity: -log(1 + 1e-5)
    assert loss["neg"] > 10  # the same pairs called negative: -log(1e-5)
    assert loss["dp_bg"] == 0
    # fg pairs should move by their offset: mean |(dy, dx)| over the four directions = (0+1+1+1 + 1+1+0+1)/8
    torch.testing.assert_close(loss["dp_fg"], torch.tensor(6 / 8), rtol=1e-4, atol=1e-4)


def test_edge_displacement_inference():
    model = resnet50_irn.EdgeDisplacement(crop_size=64, stride=4).eval()
    perturb_bn(model)
    img = torch.randn(3, 58, 41)
    pair = torch.stack([img, img.flip(-1)])
    with torch.no_grad():
        edge, dp = model(pair)
        model.mean_shift.running_mean.copy_(torch.tensor([1.0, -2.0]))
        _, dp_shifted = model(pair)
        # the image padded by hand to the crop size gives the same maps
        padded = F.pad(pair, [0, 64 - 41, 0, 64 - 58])
        e_pad, _ = resnet50_irn.Net.forward(model, padded)
    assert edge.shape == (1, 15, 11) and dp.shape == (2, 15, 11)  # (58 - 1) // 4 + 1, (41 - 1) // 4 + 1
    assert ((edge > 0) & (edge < 1)).all()
    torch.testing.assert_close(dp - dp_shifted, torch.tensor([1.0, -2.0]).view(2, 1, 1).expand_as(dp))
    e_pad = e_pad[..., :15, :11]  # cropped, then the flip's map flipped back
    expected = torch.sigmoid(e_pad[0] / 2 + e_pad[1].flip(-1) / 2)
    torch.testing.assert_close(edge, expected)


def test_irn_loss_over_processes_is_the_whole_batch_loss():
    """A batch split over 2 processes: DDP's mean of the per-process gradients of 'total' equals the gradient
    of the whole-batch loss, and the terms returned are the whole batch's (label counts differ per half)."""
    g = torch.Generator().manual_seed(0)
    n, d, p = 4, 3, 10
    outputs = [torch.rand(n, d, p, generator=g), torch.rand(n, d, p, generator=g),
               torch.rand(n, 2, d, p, generator=g), torch.rand(n, 2, d, p, generator=g)]
    labels = [(torch.rand(n, d, p, generator=g) > q).float() for q in (0.3, 0.6, 0.8)]
    labels[0][:2] = 0  # the first half has no background pairs at all

    def leaf(ts):
        return [t.clone().requires_grad_() for t in ts]

    whole = leaf(outputs)
    ref = resnet50_irn.irn_loss(whole, *labels)
    ref["total"].backward()

    halves = [slice(0, 2), slice(2, 4)]
    sent = []  # what each process contributes to the all-reduce
    for h in halves:
        resnet50_irn.irn_loss([o[h] for o in outputs], *[lab[h] for lab in labels],
                              sum_over_processes=lambda t: sent.append(t.clone()) or t, world_size=2)
    parts, grads = [], []
    for h in halves:
        mine = leaf([o[h] for o in outputs])
        parts.append(resnet50_irn.irn_loss(mine, *[lab[h] for lab in labels],
                                           sum_over_processes=lambda t: sent[0] + sent[1], world_size=2))
        parts[-1]["total"].backward()
        grads.append([t.grad for t in mine])
    for i, t in enumerate(whole):  # DDP averages the gradients of the two processes
        torch.testing.assert_close(torch.cat([grads[0][i], grads[1][i]]) / 2, t.grad, rtol=1e-5, atol=1e-7)
    for k in ("pos", "neg", "dp_fg", "dp_bg"):
        torch.testing.assert_close(parts[0][k], ref[k].detach(), rtol=1e-6, atol=0)
        assert torch.equal(parts[0][k], parts[1][k])
    # per-process means, as plain DDP would average them, are not the whole-batch loss here
    naive = sum(resnet50_irn.irn_loss([o[h] for o in outputs], *[lab[h] for lab in labels])["pos"] for h in halves) / 2
    assert abs(naive - ref["pos"]) > 1e-3
