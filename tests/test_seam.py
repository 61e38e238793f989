"""SEAM on ResNet-38 against the reference (SPEC_RESNET38 6.2, checks 1, 3-4, 15-17; check 18 is in
tests/test_resnet38.py).

tests/fixtures/seam_ref.npz holds what YudeWang/SEAM computes, on CPU, with the weights
fill_random_(net, 0) of tests/test_resnet38.py and then fc8's row of class TIE[1] := that of
TIE[0] (two classes with identical CAMs: exact ties in every per-pixel maximum they reach), on the
inputs built below from seeds (not stored). tests/fixtures/README_resnet38.md says how the fixture was
made; its harness imports this module's input builders (make_*, tie_rows_, write_cam_lists).
"""
import os
import warnings

import numpy as np
import pytest
import torch

import test_psa_infer as T
from test_resnet38 import FIXTURES, assert_close, meta_net, random_net, read_keys

FIXTURE = os.path.join(FIXTURES, "seam_ref.npz")
SEAM_KEYS = read_keys("resnet38_SEAM_keys.txt")


def VOC_SEAM(**kw):  # SEAM's network for VOC's 20 classes
    from net import resnet38_SEAM
    return resnet38_SEAM.Net(20, **kw)


TIE = (2, 5)  # 0-based classes with identical CAMs: fc8.weight[1 + 5] := fc8.weight[1 + 2]
LABELS = ((2, 5, 7), (14,))  # 0-based classes of the two training images; both tied classes present
SCALES = (0.5, 1.0, 1.5, 2.0)  # infer_SEAM.py:39
# check 17 on one of tests/test_psa_infer.py's images, 32x32 with three classes (16 forwards of the
# full-width net; the dataset's scaling is checked with PSA's check 8 on all three)
CAM_IMAGES = T.CAM_IMAGES[2:]


def make_inputs():
    """x_train 2x3x64x64 (the training-step batch; its 0.3 view is 19x19, a 3x3 map) and x_fwd
    2x3x40x48 (a 5x6 map, unequal sides)."""
    g = torch.Generator().manual_seed(7)
    return {"x_train": torch.randn(2, 3, 64, 64, generator=g), "x_fwd": torch.randn(2, 3, 40, 48, generator=g)}


def make_label():
    label = torch.zeros(len(LABELS), 20)
    for i, keys in enumerate(LABELS):
        label[i, list(keys)] = 1
    return label


def make_helper_inputs():
    """Small tensors for the loss helpers: `onehot` with many ties (integers 0..2), `norm4` / `norm3` and
    `rvmin` with negative values, `sum_cam` (5, 6, 7) for the inference normalisation: channel 0 positive,
    1 all zero (an absent class), 2 positive with a minimum tied over 3 pixels, 3 constant, 4 with
    negative values (relu'd: a minimum of 0 tied over many pixels)."""
    g = torch.Generator().manual_seed(11)
    out = {"onehot": torch.randint(0, 3, (2, 5, 3, 4), generator=g).float(),
           "norm4": torch.randn(2, 3, 5, 6, generator=g),
           "norm3": torch.randn(3, 5, 6, generator=g),
           "rvmin": torch.randn(2, 4, 6, 6, generator=g)}
    s = torch.rand(5, 6, 7, generator=g) * 3
    s[1] = 0
    s[2] += 0.5
    s[2, 0, :3] = 0.25
    s[3] = 0.7
    s[4] -= 1.0
    out["sum_cam"] = s
    return out


def write_cam_lists(root):
    """The lists of CAM_IMAGES in our format and in PSA's / SEAM's (write_devkit writes the images)."""
    ours, theirs = os.path.join(root, "seam_cam.txt"), os.path.join(root, "psa_seam_cam.txt")
    with open(ours, "w") as f:
        f.writelines(name + "\n" for name, _, _ in CAM_IMAGES)
    with open(theirs, "w") as f:
        f.writelines(f"/JPEGImages/{name}.jpg /SegmentationClassAug/{name}.png\n" for name, _, _ in CAM_IMAGES)
    return ours, theirs


def tie_rows_(net):
    """After fill_random_(net, 0): the two tied classes of the fixture's weights."""
    with torch.no_grad():
        net.fc8.weight[1 + TIE[1]] = net.fc8.weight[1 + TIE[0]]
    return net


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE).items())


@pytest.fixture(scope="module")
def seam_net(ref):
    net = tie_rows_(random_net(VOC_SEAM))  # fill_random_(net, 0) on a meta-built net, eval mode
    sums = np.array([v.sum(dtype=torch.float64).item() for v in net.state_dict().values()])
    np.testing.assert_allclose(sums, ref["weight_sums"], rtol=1e-9, atol=1e-6)
    return net


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


# ------------------------------------------------------------------ keys, freezing, groups (checks 1, 3, 4)


def test_keys_order_and_strict_load():
    from misc import torchutils
    from misc.pyutils import UserError
    shared = os.path.join(os.path.dirname(FIXTURES), "..", "..", "shared", "fixtures", "resnet38_SEAM_keys.txt")
    if os.path.isfile(shared):  # the copy here is the shared one
        assert open(shared).read() == open(os.path.join(FIXTURES, "resnet38_SEAM_keys.txt")).read()
    assert len(SEAM_KEYS) == 232
    for from_scratch in (False, True):
        net = meta_net(VOC_SEAM, from_scratch=from_scratch)
        assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == SEAM_KEYS
    net = meta_net(VOC_SEAM)
    full = {k: torch.tensor(0).expand(s) if k.endswith("num_batches_tracked") else torch.tensor(0.5).expand(s)
            for k, s in SEAM_KEYS}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="for .*copying from a non-meta parameter")
        torchutils.load_state_dict_checked(net, full, "fixture")
        old = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
        assert len(old) == 195
        torchutils.load_state_dict_checked(net, old, "fixture")  # a PyTorch 0.4.0 checkpoint
    with pytest.raises(UserError, match="missing"):
        torchutils.load_state_dict_checked(net, {k: v for k, v in old.items() if k != "f9.weight"}, "fixture")
    # a narrow (demo) net keeps the key list
    narrow = meta_net(VOC_SEAM, width=0.125)
    assert list(narrow.state_dict()) == [k for k, _ in SEAM_KEYS]
    assert tuple(narrow.f9.weight.shape) == (24, 3 + 8 + 16, 1, 1) and narrow.fc8.weight.shape[0] == 21


def test_freezing_and_groups_as_reference(ref):
    from test_resnet38 import group_index
    net = meta_net(VOC_SEAM)
    assert [k for k, _ in net.named_parameters()] == list(ref["param_keys"])
    assert [p.requires_grad for p in net.parameters()] == list(ref["requires_grad"])
    after = ref["groups_after_train"]
    np.testing.assert_array_equal(group_index(net, net.get_parameter_groups()), after)
    keys = list(ref["param_keys"])
    assert {k for k, g in zip(keys, after) if g == 2} == {"fc8.weight", "f8_3.weight", "f8_4.weight", "f9.weight"}
    # groups the reference builds before train() (train_SEAM.py:78, :95) also hold conv1a and b2*,
    # which never get a gradient
    differ = [k for k, a, b in zip(keys, ref["groups_before_train"], after) if a != b]
    assert differ and all(k.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2") for k in differ)
    net.train()
    assert [p.requires_grad for p in net.parameters()] == list(ref["requires_grad"])
    modes = [m.training for m in net.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout2d))]
    assert modes == list(ref["mode_training"])  # BN eval, Dropout2d (b6, b7, dropout7) training
    groups = net.optimizer_groups(0.01, 5e-4)  # train_SEAM.py:79-84
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in groups] == [5e-4, 0, 5e-4, 0]


# ------------------------------------------------------------------ check 15: forward and PCM


def check_forward(name, x, cam, cam_rv, parts, ref, step):
    """Check 15 on one input: the stride-8 maps (rtol 1e-5), the returned maps at the input size on every
    `step`-th pixel and their exact per-channel sums; the tied classes stay tied in the PCM input.
    Returns the max abs differences."""
    worst = {}
    for k in ("cam", "pcm_input", "cam_rv"):
        worst[f"{name} {k}"] = assert_close(parts[k], ref[f"{name}_{k}8"], 1e-5, f"{name} {k}")
    for k, v in (("cam", cam), ("cam_rv", cam_rv)):
        assert v.shape == (2, 21) + tuple(x.shape[2:])
        worst[f"{name} {k} up"] = assert_close(v[:, :, ::step, ::step], ref[f"{name}_{k}_sub"], 1e-5, k)
        sums = v.sum(dim=(2, 3), dtype=torch.float64).detach().numpy()
        np.testing.assert_allclose(sums, ref[f"{name}_{k}_sums"], rtol=1e-5, atol=1e-5 * np.abs(sums).max())
    pin = parts["pcm_input"]
    t0, t1 = TIE[0] + 1, TIE[1] + 1
    assert torch.equal(pin[:, t0], pin[:, t1])  # ties at the maximum are kept (only values below it drop)
    assert bool(((pin[:, t0] > 0) & (pin[:, t0] == pin[:, 1:].amax(1))).any())
    return worst


def test_forward_equals_reference(ref, seam_net, inputs):
    """Check 15 on 2x3x40x48 (5x6 map; eval mode); the 2x3x64x64 training batch is checked the same way
    inside test_seam_loss_equals_reference, from the step's own forward."""
    x = inputs["x_fwd"]
    with torch.no_grad():
        cam, cam_rv, parts = seam_net(x, with_parts=True)
    worst = check_forward("x_fwd", x, cam, cam_rv, parts, ref, 2)
    print("check 15 max |ours - seam|:", {k: f"{v:.1e}" for k, v in worst.items()})


# ------------------------------------------------------------------ loss helpers


def test_helpers_equal_reference_and_leave_inputs_alone(ref):
    from net import resnet38_SEAM as S
    h = make_helper_inputs()
    copies = {k: v.clone() for k, v in h.items()}
    out = S.max_onehot(h["onehot"])
    np.testing.assert_array_equal(out.numpy(), ref["helper_onehot"])
    assert bool(ref["helper_onehot_modified_input"])  # SEAM's own max_onehot writes into its argument
    assert (out[:, 1:] != 0).sum(1).max() > 1  # ties at the maximum all kept
    assert_close(S.max_norm(h["norm4"]), ref["helper_norm4"], 1e-6, "max_norm 4-D")
    assert_close(S.max_norm(h["norm3"]), ref["helper_norm3"], 1e-6, "max_norm 3-D")
    x = h["rvmin"].clone().requires_grad_()
    loss = S.adaptive_min_pooling_loss(x)
    assert loss.item() == pytest.approx(float(ref["helper_rvmin"]), rel=1e-6)
    loss.backward()
    assert_close(x.grad, ref["helper_rvmin_grad"], 1e-6, "rvmin grad")
    S.with_background(h["onehot"])
    S.top_fraction_mean(h["rvmin"], 0.2)
    for k, v in h.items():
        assert torch.equal(v, copies[k]), f"{k} was modified"


# ------------------------------------------------------------------ check 16: the training step's loss


def test_seam_loss_equals_reference(ref, seam_net, inputs):
    """Check 16: SEAM's step (train_SEAM.py:104-142; dropout p = 0, BN frozen) on the 2x3x64x64 batch with
    the tied classes both present in image 0 (ties in the ECR targets' maxima): every term and the total
    (rel 1e-5), gradients of every parameter (per-key sums) and of fc8, f9 and b7 (slices), fc8's
    background row exactly 0, frozen layers none.
    Check 15 on this batch (8x8 map) from the step's first forward: as test_forward_equals_reference, and
    the PCM input is not label-masked: with the batch's labels an absent class wins pixels, and masking
    would change cam_rv."""
    from net import resnet38_SEAM
    from net.resnet38_SEAM import pcm_input
    net = seam_net
    seen = []

    def model(img):
        cam, cam_rv, parts = net(img, with_parts=True)
        seen.append((cam, cam_rv, parts))
        return cam, cam_rv

    dropouts = {m: m.p for m in net.modules() if isinstance(m, torch.nn.Dropout2d)}
    try:
        net.train()
        for m in dropouts:
            m.p = 0.0
        out = resnet38_SEAM.seam_loss(model, inputs["x_train"], make_label())
        out["total"].backward()
        grads = {k: None if p.grad is None else p.grad.clone() for k, p in net.named_parameters()}
    finally:
        for m, p in dropouts.items():
            m.p = p
        net.zero_grad(set_to_none=True)
        net.eval()
    x = inputs["x_train"]
    cam, cam_rv, parts = seen[0]
    worst = check_forward("x_train", x, cam, cam_rv, parts, ref, 3)
    assert seen[1][0].shape[2:] == (19, 19)  # the 0.3 view: floor(64 * 0.3)
    label = make_label()
    winner = parts["pcm_input"][:, 1:].argmax(1)  # (2, 8, 8), 0-based class
    absent_wins = ~torch.gather(label, 1, winner.flatten(1)).bool()
    assert absent_wins.any() and not absent_wins.all(), "pixels won by absent and by present classes"
    mask = torch.cat([torch.ones(2, 1), label], 1)[:, :, None, None]
    with torch.no_grad():
        masked = net.pcm(pcm_input(parts["cam"].detach() * mask), parts["feat"].detach())
    assert not torch.allclose(masked, parts["cam_rv"], rtol=1e-3, atol=1e-3)

    for k in ("cls1", "cls2", "rvmin1", "rvmin2", "er", "ecr1", "ecr2", "total"):
        worst[k] = abs(out[k].item() - float(ref[f"loss_{k}"]))
        assert out[k].item() == pytest.approx(float(ref[f"loss_{k}"]), rel=1e-5), k
    assert out["cls"].item() == pytest.approx((out["cls1"].item() + out["cls2"].item()) / 2, rel=1e-6)
    assert out["ecr"].item() == pytest.approx(out["ecr1"].item() + out["ecr2"].item(), rel=1e-6)

    keys = list(ref["param_keys"])
    assert list(grads) == keys
    has = np.array([g is not None for g in grads.values()])
    np.testing.assert_array_equal(has, ref["grad_present"])
    sums = np.array([g.sum(dtype=torch.float64).item() if g is not None else 0.0 for g in grads.values()])
    abs_sums = np.array([g.abs().sum(dtype=torch.float64).item() if g is not None else 0.0 for g in grads.values()])
    np.testing.assert_array_equal(abs_sums == 0, ref["grad_abs_sum"] == 0)
    np.testing.assert_allclose(abs_sums, ref["grad_abs_sum"], rtol=1e-4)
    np.testing.assert_allclose(sums, ref["grad_sum"], rtol=1e-3, atol=1e-4 * np.abs(ref["grad_abs_sum"]).max())
    fc8 = grads["fc8.weight"][:, :, 0, 0]
    assert torch.count_nonzero(fc8[0]) == 0 and not np.any(ref["grad_fc8"][0])  # background row: exactly 0
    worst["grad fc8"] = assert_close(fc8[:, :512], ref["grad_fc8"], 1e-4, "fc8 grad")
    worst["grad f9"] = assert_close(grads["f9.weight"][:96, :, 0, 0], ref["grad_f9"], 1e-4, "f9 grad")
    worst["grad b7"] = assert_close(grads["b7.conv_branch2b2.weight"][:4, :64, 0, 0], ref["grad_b7"], 1e-4,
                                    "b7 grad")
    assert grads["f8_3.weight"].abs().sum() > 0 and grads["b7.conv_branch2b2.weight"].abs().sum() > 0
    print("check 15/16 |ours - seam|:", {k: f"{v:.1e}" for k, v in worst.items()})


def test_narrow_from_scratch_step_runs_and_leaves_inputs_alone():
    """The toy demo's form (width 0.125, from_scratch): forward shapes, one loss and backward; the
    background row of fc8 gets no gradient; img and label are not modified."""
    from net import resnet38_SEAM
    torch.manual_seed(0)
    net = resnet38_SEAM.Net(20, from_scratch=True, width=0.125).train()
    img, label = make_inputs()["x_fwd"], make_label()
    img0, label0 = img.clone(), label.clone()
    cam, cam_rv = net(img)
    assert cam.shape == cam_rv.shape == (2, 21, 40, 48)
    out = resnet38_SEAM.seam_loss(net, img, label)
    out["total"].backward()
    assert torch.isfinite(out["total"]) and net.fc8.weight.grad[1:].abs().sum() > 0
    assert torch.count_nonzero(net.fc8.weight.grad[0]) == 0
    assert net.bn7.weight.grad is not None and net.conv1a.weight.grad is not None  # nothing frozen
    assert torch.equal(img, img0) and torch.equal(label, label0)


# ------------------------------------------------------------------ check 17: inference CAMs


def test_seam_normalize_equals_reference(ref):
    """Check 17, the rule alone (infer_SEAM.py:72-77): negative minima, an absent (all-zero) class -> -1,
    a constant map, a tied minimum."""
    from step.infer_seam import seam_normalize
    s = make_helper_inputs()["sum_cam"]
    ours = seam_normalize(s)
    assert_close(ours, ref["norm_sum_cam"], 1e-6, "normalised")
    assert torch.all(ours[1] == -1)  # absent
    assert (ours[0] < 0).sum() == 1 and ours[0].min() < -0.01  # the minimum pixel: -(min + eps) / (max - min + eps)
    assert (ours[2] < 0).sum() == 3 and torch.all(ours[2, 0, :3] == ours[2].min())
    assert torch.all(ours[3] == ours[3, 0, 0]) and ours[3, 0, 0] < -1e4  # constant: -(c + eps) / eps
    zero = s[4] <= 0
    assert zero.sum() > 3 and torch.all(ours[4][zero] == ours[4].min()) and ours[4].min() < 0


def test_seam_cams_equal_reference(ref, seam_net, tmp_path):
    """Check 17 end to end: infer_SEAM.py:50-85 (scales 0.5/1/1.5/2 + flips, PCM output, bilinear to the
    image size, sum, min-max rule) on CAM_IMAGES, against step.infer_seam.seam_cams fed by our
    VOC12ClassificationDatasetMSF, rtol 1e-5 incl. the negative minima; the reference's absent classes are -1."""
    from step.infer_seam import seam_cams
    from voc12.dataloader import VOC12ClassificationDatasetMSF
    images = T.all_images()
    assert T.image_hash(images) == str(ref["image_sha1"])
    _, labels = T.write_devkit(str(tmp_path), images)
    dataset = VOC12ClassificationDatasetMSF(write_cam_lists(str(tmp_path))[0], str(tmp_path), labels, scales=SCALES)
    worst, negatives = 0.0, 0
    with torch.no_grad():
        for i, (name, size, keys) in enumerate(CAM_IMAGES):
            pack = dataset[i]
            assert pack["name"] == name and tuple(pack["size"]) == size
            ours_keys = torch.nonzero(torch.as_tensor(pack["label"]))[:, 0]
            np.testing.assert_array_equal(ours_keys.numpy(), ref[f"cam_keys_{i}"])
            ours = seam_cams(seam_net, [torch.as_tensor(x) for x in pack["img"]], size, ours_keys, "cpu")
            worst = max(worst, assert_close(ours, ref[f"cam_{i}"], 1e-5, name))
            negatives += int((ours < 0).sum())
            np.testing.assert_array_equal(ref[f"cam_absent_values_{i}"], [-1.0])
    assert negatives > 0  # the minima come out negative
    print(f"check 17 max |ours - seam| = {worst:.1e}")
