"""ResNet-38 networks of AffinityNet (PSA): net/resnet38d.py, resnet38_cls.py, resnet38_aff.py.

Equivalence with the reference (jiwoon-ahn/psa, and YudeWang/SEAM for its conv3 tap and small-map
radius) uses outputs saved in tests/fixtures/resnet38_ref_*.npz: the reference modules, run once with
the weights fill_random_ gives (the same key order on both sides, so the same values), on the inputs
stored beside the outputs. tests/fixtures/README_resnet38.md says how they were made.
"""
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from misc import torchutils
from misc.pyutils import UserError
from net import resnet38_aff, resnet38_cls, resnet38d

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fill_random_(model, seed=0):
    """Deterministic random weights for every state-dict entry, in state-dict order: conv weights
    N(0, 1/fan_in), BatchNorm weight and running_var U(0.5, 1.5), bias and running_mean
    U(-0.1, 0.1) (perturbed, so that 'unchanged' and 'eval mode' are not trivially true).
    The fixture harness fills the reference modules with this same function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            if key.endswith("running_mean") or key.endswith(".bias"):
                v = torch.rand(t.shape, generator=g) * 0.2 - 0.1
            elif key.endswith("running_var") or t.dim() == 1:
                v = torch.rand(t.shape, generator=g) + 0.5
            else:
                v = torch.randn(t.shape, generator=g) * (1.0 / t[0].numel()) ** 0.5
            t.copy_(v)
    return model


def mxnet_name(key):
    """The MXNet (ademxapp) name of one of our backbone keys, inverting the reference's renaming
    (SPEC_RESNET38 1.5): b4_5.conv_branch2b1.weight -> arg:res4b5_branch2b1_weight,
    b2.bn_branch2a.running_var -> aux:bn2a_branch2a_moving_var, bn7.weight -> arg:bn7_gamma."""
    layer, param = key.rsplit(".", 1)
    if layer == "conv1a":
        return "arg:conv1a_weight"
    suffix = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
    kind = "aux" if param.startswith("running") else "arg"
    if layer == "bn7":
        return f"{kind}:bn7_{suffix[param]}"
    block, sub = layer.split(".")
    stage, _, index = block[1:].partition("_")
    unit = f"{stage}b{index}" if index else f"{stage}a"
    if sub.startswith("conv_"):
        return f"arg:res{unit}_{sub[len('conv_'):]}_weight"
    return f"{kind}:bn{unit}_{sub[len('bn_'):]}_{suffix[param]}"


def read_keys(name):
    """[(key, shape)] of a fixture key list (`<key> (<shape>)` per line, state-dict order)."""
    out = []
    for line in open(os.path.join(FIXTURES, name)):
        key, shape = line.split(" ", 1)
        out.append((key, tuple(int(s) for s in shape.strip().strip("(),").split(",") if s.strip())))
    return out


CLS_KEYS = read_keys("resnet38_cls_keys.txt")
AFF_KEYS = read_keys("resnet38_aff_keys.txt")


@pytest.fixture(scope="module")
def ref():
    psa = np.load(os.path.join(FIXTURES, "resnet38_ref_psa.npz"))
    seam = np.load(os.path.join(FIXTURES, "resnet38_ref_seam.npz"))
    return dict(psa.items(), **dict(seam.items()))


def VOC_CLS(**kw):  # PSA's classifier for VOC's 20 classes
    return resnet38_cls.Net(20, **kw)


def random_net(cls, ref_sums=None, **kw):
    """cls(**kw) with fill_random_ weights, in eval mode. Built on the meta device and then given
    memory: PyTorch's own init of 105 M parameters would only be overwritten."""
    with torch.device("meta"):
        net = cls(**kw)
    net.to_empty(device="cpu")
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            v.zero_()
    fill_random_(net, 0)
    if ref_sums is not None:
        # guards against a change of torch's generator: the weights must be the reference's
        sums = np.array([v.sum(dtype=torch.float64).item() for v in net.state_dict().values()])
        np.testing.assert_allclose(sums, ref_sums, rtol=1e-9, atol=1e-6)
    return net.eval()


@pytest.fixture(scope="module")
def cls_net(ref):
    return random_net(VOC_CLS, ref["cls_weight_sums"])


@pytest.fixture(scope="module")
def aff_net(ref):
    return random_net(resnet38_aff.Net, ref["aff_weight_sums"])


def assert_close(ours, theirs, rtol, what):
    """allclose with atol = rtol x the largest reference magnitude; returns the max abs difference."""
    ours = ours.detach().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, (what, ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=rtol * float(np.abs(theirs).max()), err_msg=what)
    return float(np.abs(ours.astype(np.float64) - theirs).max())


# ------------------------------------------------------------------ keys, loading (check 1)


def meta_net(cls, **kw):
    with torch.device("meta"):  # structure only: no memory, no init
        return cls(**kw)


@pytest.mark.parametrize("cls, expected", [(VOC_CLS, CLS_KEYS), (resnet38_aff.Net, AFF_KEYS),
                                           (resnet38d.Net, CLS_KEYS[:-1])])
def test_state_dict_keys_order_and_shapes(cls, expected):
    for from_scratch in (False, True):
        state = meta_net(cls, from_scratch=from_scratch).state_dict()
        assert [(k, tuple(v.shape)) for k, v in state.items()] == expected


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_strict_load_of_reference_shaped_state_dict():
    """A state dict with the fixture's keys and shapes loads strictly, also without num_batches_tracked
    (PyTorch 0.4.0 files). Keys and shapes are what is tested: a meta-device net, constant tensors."""
    full = {k: torch.tensor(0).expand(s) if k.endswith("num_batches_tracked") else torch.tensor(0.5).expand(s)
            for k, s in AFF_KEYS}
    net = meta_net(resnet38_aff.Net)
    torchutils.load_state_dict_checked(net, full, "fixture")
    old = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    assert len(old) == 195
    torchutils.load_state_dict_checked(net, old, "fixture")
    with pytest.raises(UserError, match="wrong shape"):
        torchutils.load_state_dict_checked(net, dict(old, **{"f9.weight": torch.zeros(448, 448)}), "fixture")
    with pytest.raises(UserError, match="missing"):
        torchutils.load_state_dict_checked(meta_net(VOC_CLS), old, "fixture")  # an AffinityNet file


# ------------------------------------------------------------------ freezing, groups (checks 3, 4, 5)


def param_keys(net):
    return [k for k, _ in net.named_parameters()]


def group_index(net, groups):
    member = {id(p): i for i, g in enumerate(groups) for p in g}
    return np.array([member.get(id(p), -1) for _, p in net.named_parameters()])


@pytest.mark.parametrize("name", ["cls", "aff"])
def test_freezing_and_groups_as_reference(ref, name):
    net = meta_net(VOC_CLS if name == "cls" else resnet38_aff.Net)
    assert param_keys(net) == list(ref[f"{name}_param_keys"])
    # frozen from construction on (before any train()): the flags the reference has after train()
    assert [p.requires_grad for p in net.parameters()] == list(ref[f"{name}_requires_grad"])
    after = ref[f"{name}_groups_after_train"]
    np.testing.assert_array_equal(group_index(net, net.get_parameter_groups()), after)
    # The reference's groups made before its first train() also list conv1a and b2* in group 0; those
    # never get a gradient there, so the updates are equal. Nothing else differs.
    before = ref[f"{name}_groups_before_train"]
    differ = [k for k, a, b in zip(ref[f"{name}_param_keys"], before, after) if a != b]
    assert all(k.split(".")[0] in ("conv1a", "b2", "b2_1", "b2_2") and "conv" in k for k in differ)
    assert net.train() is net
    assert [p.requires_grad for p in net.parameters()] == list(ref[f"{name}_requires_grad"])
    modes = {n: m.training for n, m in net.named_modules() if isinstance(m, (nn.BatchNorm2d, nn.Dropout2d))}
    assert list(modes) == list(ref[f"{name}_mode_names"])
    assert list(modes.values()) == list(ref[f"{name}_mode_training"])  # BN eval, Dropout2d training
    assert not any(isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
    # lr multipliers 1/2/10/20, weight decay on weights only (psa/train_cls.py:90-96)
    groups = net.optimizer_groups(0.1, 5e-4)
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.2, 1.0, 2.0])
    assert [g["weight_decay"] for g in groups] == [5e-4, 0, 5e-4, 0]
    backbone, head = net.trainable_parameters()
    assert len(head) == (1 if name == "cls" else 4) and len(backbone) == int((after == 0).sum())


def test_from_scratch_trains_everything():
    net = meta_net(resnet38_aff.Net, from_scratch=True)
    assert all(p.requires_grad for p in net.parameters())
    net.train()
    assert all(m.training for m in net.modules())
    groups = net.get_parameter_groups()
    assert sum(len(g) for g in groups) == len(list(net.parameters()))
    ids = [set(map(id, g)) for g in groups]
    assert id(net.bn7.weight) in ids[0] and id(net.bn7.bias) in ids[1] and id(net.f9.weight) in ids[2]


def test_batchnorm_statistics_stay_in_training_mode(aff_net):
    net = aff_net
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout2d)]
    x = torch.randn(1, 3, 16, 16)
    try:
        net.train()
        for m in dropouts:
            m.p = 0.0
        with torch.no_grad():
            y_train = net.forward_as_dict(x)["conv6"]
        assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items() if "running" in k)
        net.eval()
        with torch.no_grad():  # dropout off: training mode = eval mode (running statistics)
            assert torch.equal(net.forward_as_dict(x)["conv6"], y_train)
    finally:
        net.b6.dropout_2b1.p = net.b6.dropout_2b2.p = 0.3
        net.b7.dropout_2b1.p = net.b7.dropout_2b2.p = 0.5
        net.eval()


def test_poly_optimizer_matches_reference(ref):
    """misc.torchutils.PolyOptimizer(momentum=None) = PSA's (momentum = weight decay, poly 0.9), with
    PSA's four groups; 10 steps past max_step 7 (check 5)."""
    n = 5
    params = [torch.tensor(ref[f"poly_init_{i}"]).requires_grad_() for i in range(n)]
    groups = [params[:2], params[2:3], params[3:4], params[4:5]]
    lr, wd = 0.1, 5e-4
    opt = torchutils.PolyOptimizer([{"params": g, "lr": m * lr, "weight_decay": d}
                                    for g, m, d in zip(groups, (1, 2, 10, 20), (wd, 0, wd, 0))],
                                   lr=lr, weight_decay=wd, max_step=7, momentum=None)
    lrs = []
    for step in range(10):
        for i, p in enumerate(params):
            p.grad = torch.tensor(ref[f"poly_grad_{step}_{i}"])
        opt.step()
        lrs.append([g["lr"] for g in opt.param_groups])
    np.testing.assert_allclose(lrs, ref["poly_lrs"], rtol=1e-12)
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.detach().numpy(), ref[f"poly_final_{i}"], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ MXNet weights (check 6)


def write_mxnet(path, arrays, header="v2"):
    """An NDArray-list file as MXNet writes it (mx.nd.save), each array in the given header variant:
    v3 / v2 (magic, int32 storage type, int32 ndim, int64 dims), v1 (magic, uint32 ndim, int64
    dims) or legacy (uint32 ndim, uint32 dims); then int32 dev_type, dev_id, dtype flag, raw data."""
    flags = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, np.dtype(np.int32): 4}
    magic = {"v1": 0xF993FAC8, "v2": 0xF993FAC9, "v3": 0xF993FACA}
    with open(path, "wb") as f:
        f.write(struct.pack("<QQQ", 0x112, 0, len(arrays)))
        for a in arrays.values():
            a = np.ascontiguousarray(a)
            if header in ("v2", "v3"):
                f.write(struct.pack(f"<Iii{a.ndim}q", magic[header], 0, a.ndim, *a.shape))
            elif header == "v1":
                f.write(struct.pack(f"<II{a.ndim}q", magic[header], a.ndim, *a.shape))
            else:
                f.write(struct.pack(f"<I{a.ndim}I", a.ndim, *a.shape))
            f.write(struct.pack("<iii", 1, 0, flags[a.dtype]))
            f.write(a.astype(a.dtype.newbyteorder("<")).tobytes())
        f.write(struct.pack("<Q", len(arrays)))
        for name in arrays:
            f.write(struct.pack("<Q", len(name.encode())) + name.encode())


@pytest.mark.parametrize("header", ["v3", "v2", "v1", "legacy"])
def test_mxnet_reader_round_trip(tmp_path, header):
    rng = np.random.default_rng(0)
    arrays = {"arg:conv1a_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "aux:bn7_moving_var": rng.random(5).astype(np.float64),
              "arg:x_half": rng.random((2, 3)).astype(np.float16),
              "arg:x_int": np.arange(6, dtype=np.int32).reshape(3, 2)}
    path = str(tmp_path / f"{header}.params")
    write_mxnet(path, arrays, header)
    back = resnet38d.read_mxnet_params(path)
    assert list(back) == list(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and np.array_equal(back[k], a)


def test_mxnet_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "bad.params"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 40)
    with pytest.raises(UserError, match="not an MXNet"):
        resnet38d.read_mxnet_params(str(bad))
    good = str(tmp_path / "good.params")
    write_mxnet(good, {"arg:conv1a_weight": np.zeros((64, 3, 3, 3), np.float32)})
    (tmp_path / "cut.params").write_bytes(open(good, "rb").read()[:200])
    with pytest.raises(UserError, match="truncated"):
        resnet38d.read_mxnet_params(str(tmp_path / "cut.params"))


def test_mxnet_names_map_as_reference(ref):
    """Our renaming = convert_mxnet_to_torch's on every backbone name plus the classifier (dropped)."""
    names, keys = list(ref["mx_names"]), list(ref["mx_keys"])
    assert [resnet38d.mxnet_name_to_torch(n) or "" for n in names] == keys
    backbone = [k for k, _ in CLS_KEYS[:-1] if not k.endswith("num_batches_tracked")]
    assert sorted(k for k in keys if k) == sorted(backbone) and len(backbone) == 191


BACKBONE_SHAPES = [(k, s) for k, s in CLS_KEYS[:-1] if not k.endswith("num_batches_tracked")]


class Shapes:
    """Stand-in model for convert_mxnet_to_torch: the backbone's keys with tiny shapes."""

    def state_dict(self):
        return {k: torch.zeros(1, i + 1) for i, (k, _) in enumerate(BACKBONE_SHAPES)}


def test_mxnet_conversion_takes_exactly_the_backbone(tmp_path):
    arrays = {mxnet_name(k): np.full((1, i + 1), i, np.float32) for i, (k, _) in enumerate(BACKBONE_SHAPES)}
    arrays = dict(reversed(list(arrays.items())), **{"arg:linear1000_weight": np.zeros((1, 3), np.float32)})
    path = str(tmp_path / "tiny.params")
    write_mxnet(path, arrays, "v1")
    state = resnet38d.convert_mxnet_to_torch(path, Shapes())
    assert sorted(state) == sorted(k for k, _ in BACKBONE_SHAPES)  # the ImageNet classifier is dropped
    assert all(torch.all(state[k] == i) for i, (k, _) in enumerate(BACKBONE_SHAPES))

    del arrays["aux:bn5b2_branch2a_moving_var"]
    write_mxnet(path, arrays, "v1")
    with pytest.raises(UserError, match=r"1 of the 191 backbone tensors missing") as e:
        resnet38d.convert_mxnet_to_torch(path, Shapes())
    assert path in str(e.value) and "\n" not in str(e.value)
    arrays["aux:bn5b2_branch2a_moving_var"] = np.zeros((1, 3), np.float32)
    arrays["arg:fc_weight"] = np.zeros(3)
    write_mxnet(path, arrays, "v1")
    with pytest.raises(UserError, match=r"0 of the 191 .* 1 unexpected .* 1 of the wrong shape"):
        resnet38d.convert_mxnet_to_torch(path, Shapes())


def test_imagenet_weights_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=resnet38d.IMAGENET_FILE) as e:
        resnet38_cls.Net(20, backbone_weights="imagenet")
    assert str(tmp_path / "hub" / "checkpoints") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="backbone weights not found"):
        resnet38_aff.Net(backbone_weights=str(tmp_path / "res38_cls.pth"))


def test_backbone_weights_imagenet_and_pth(tmp_path, monkeypatch, cls_net):
    """'imagenet' finds the .params file under $TORCH_HOME and loads every backbone tensor (the
    reader is replaced by the fixture net's own tensors, which spares writing 420 MB; the reader
    itself is tested above); a whole-network .pth fills the backbone and leaves the head alone."""
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / resnet38d.IMAGENET_FILE).write_bytes(b"")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    own = cls_net.state_dict()
    arrays = {mxnet_name(k): own[k].numpy() for k, _ in BACKBONE_SHAPES}
    arrays["arg:linear1000_weight"] = np.zeros((1000, 4096), np.float32)
    monkeypatch.setattr(resnet38d, "read_mxnet_params", lambda path: arrays)
    net = resnet38_aff.Net(backbone_weights="imagenet")
    f9 = net.f9.weight.clone()
    state = net.state_dict()
    assert all(torch.equal(state[k], own[k]) for k, _ in BACKBONE_SHAPES)

    # a PSA classifier checkpoint as backbone weights: constant tensors stored as expanded views,
    # so the file is small
    whole = {k: torch.tensor(float(i)).expand(s) for i, (k, s) in enumerate(CLS_KEYS)}
    pth = str(tmp_path / "res38_cls.pth")
    torch.save(whole, pth)
    resnet38d.load_backbone_weights(net, pth)
    state = net.state_dict()
    assert all(torch.all(state[k] == whole[k]) for k, _ in BACKBONE_SHAPES)
    assert torch.equal(net.f9.weight, f9)
    del whole["b4_2.conv_branch2a.weight"]
    torch.save(whole, pth)
    with pytest.raises(UserError, match="b4_2.conv_branch2a.weight"):
        resnet38d.load_backbone_weights(net, pth)


# ------------------------------------------------------------------ equivalence with the reference


def test_backbone_taps_equal_reference(ref, cls_net):
    """Check 2: conv3 (SEAM's tap) .. conv6 of forward_as_dict, 1x3x37x53 (odd sizes: ceil at each stride)."""
    with torch.no_grad():
        d = cls_net.forward_as_dict(torch.from_numpy(ref["x_taps"]))
    assert_close(d["conv3"], ref["seam_taps_conv3"], 1e-5, "conv3")
    for k in ("conv4", "conv5", "conv6"):
        assert_close(d[k], ref["taps_" + k], 1e-5, k)


def test_classifier_equals_reference(ref, cls_net):
    """Check 7: logits and CAMs in eval mode, 2x3x40x48."""
    x = torch.from_numpy(ref["x_cls"])
    with torch.no_grad():
        assert_close(cls_net(x), ref["cls_logits"], 1e-5, "logits")
        assert_close(cls_net.forward_cam(x), ref["cls_cam"], 1e-5, "cam")


def test_classifier_training_step_equals_reference(ref, cls_net):
    """Check 7: one step of PSA's train_cls (4 groups, PolyOptimizer, multilabel soft margin loss,
    dropout off): the same parameters move, by the same amounts; frozen ones stay.
    Runs on the shared fixture net and puts its weights back afterwards."""
    net = cls_net
    before = {k: v.clone() for k, v in net.state_dict().items()}
    dropouts = {m: m.p for m in net.modules() if isinstance(m, nn.Dropout2d)}
    try:
        opt = torchutils.PolyOptimizer(net.optimizer_groups(0.1, 5e-4), lr=0.1, weight_decay=5e-4, max_step=10)
        net.train()
        for m in dropouts:
            m.p = 0.0
        loss = F.multilabel_soft_margin_loss(net(torch.from_numpy(ref["x_cls"])),
                                             torch.from_numpy(ref["step_label"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        after = net.state_dict()
        delta = {k: after[k] - before[k] for k in after}
    finally:
        net.load_state_dict(before)
        for m, p in dropouts.items():
            m.p = p
        net.zero_grad(set_to_none=True)
        net.eval()
    assert loss.item() == pytest.approx(float(ref["step_loss"]), rel=1e-6)
    assert list(after) == list(ref["step_keys"])
    moved = np.array([delta[k].abs().sum(dtype=torch.float64).item() for k in after])
    ref_moved = ref["step_delta_abs"]
    np.testing.assert_array_equal(moved == 0, ref_moved == 0)  # frozen: conv1a, b2*, every BN
    np.testing.assert_allclose(moved, ref_moved, rtol=1e-4)
    np.testing.assert_allclose([delta[k].sum(dtype=torch.float64).item() for k in after], ref["step_delta_sum"],
                               rtol=1e-3, atol=1e-3 * np.abs(ref["step_delta_sum"]).max())
    assert_close(delta["fc8.weight"][:, :256, 0, 0], ref["step_fc8_delta"], 1e-4, "fc8")
    assert_close(delta["b7.conv_branch2b2.weight"][:4, :64, 0, 0], ref["step_b7_delta"], 1e-4, "b7")
    assert_close(delta["b3.conv_branch2a.weight"][:4, :8], ref["step_b3_delta"], 1e-4, "b3")


@pytest.fixture(scope="module")
def aff_features(ref, aff_net):
    with torch.no_grad():
        return aff_net.features(torch.from_numpy(ref["x_aff"]))


def test_affinitynet_equals_reference(ref, aff_net, aff_features):
    """Check 12: (N, 34, n_src) on 2x3x72x96 (9x12 map) and the dense matrix through forward(x,
    to_dense=True) on 1x3x80x96 (10x12)."""
    src, dst = resnet38_aff.pair_indices(5, aff_features.shape[2:])
    assert_close(resnet38_aff.pair_affinity(aff_features, src, dst), ref["aff_out"], 1e-6, "aff")
    with torch.no_grad():
        dense = aff_net(torch.from_numpy(ref["x_dense"]), to_dense=True)
    assert_close(dense, ref["aff_dense"], 1e-6, "dense")
    np.testing.assert_array_equal(dense.numpy() == 0, ref["aff_dense"] == 0)


def test_seam_small_map_radius_equals_reference(ref, aff_net, aff_features):
    """Check 18: SEAM's radius rule through forward() (8x8 map -> radius 3, 5x6 -> 2) and on the
    9x12 map of the test above (-> 4)."""
    aff_net.seam_small_maps = True
    try:
        with torch.no_grad():
            for x, out in (("x_seam", "seam_aff_64x64"), ("x_seam2", "seam_aff_40x48")):
                assert_close(aff_net(torch.from_numpy(ref[x])), ref[out], 1e-6, out)
    finally:
        aff_net.seam_small_maps = False
    radius = resnet38_aff.seam_radius(*aff_features.shape[2:])
    src, dst = resnet38_aff.pair_indices(radius, aff_features.shape[2:])
    assert_close(resnet38_aff.pair_affinity(aff_features, src, dst), ref["seam_aff_72x96"], 1e-6, "9x12")
    assert [resnet38_aff.seam_radius(h, w) for h, w in ((8, 8), (5, 6), (9, 12), (11, 40), (56, 56))] == [3, 2, 4, 5, 5]


def test_pair_indices_equal_reference(ref):
    for i, (radius, h, w) in enumerate(ref["pairs_cases"]):
        src, dst = resnet38_aff.pair_indices(radius, (h, w))
        np.testing.assert_array_equal(src, ref[f"pairs_{i}_from"])
        np.testing.assert_array_equal(dst.reshape(-1), ref[f"pairs_{i}_to"])
        assert dst.shape[1] == src.shape[0]
    assert resnet38_aff.pair_indices(5, (56, 56))[1].shape == (34, 52 * 48)
    with pytest.raises(ValueError, match="at least 5 rows and 9 columns"):
        resnet38_aff.pair_indices(5, (4, 20))


def test_affinity_loss_equals_reference(ref):
    """Check 13: loss terms and gradient of psa/train_aff.py:101-113."""
    aff = torch.tensor(ref["loss_aff"], requires_grad=True)
    labels = [torch.from_numpy(ref[f"loss_{n}_label"]) for n in ("bg", "fg", "neg")]
    out = resnet38_aff.affinity_loss(aff, *labels)
    for n in ("bg", "fg", "neg", "total"):
        assert out[n].item() == pytest.approx(float(ref[f"loss_{n}"]), rel=1e-6), n
    out["total"].backward()
    assert_close(aff.grad, ref["loss_grad"], 1e-6, "grad")


def test_affinity_loss_global_batch_counts():
    """Two 'processes' (halves of the batch) with summed label counts: the logged terms are the
    one-process values and the mean of their gradients (as DDP takes it) is the one-process gradient."""
    g = torch.Generator().manual_seed(0)
    aff = torch.rand(4, 34, 12, generator=g) * 0.98 + 0.01
    r = torch.randint(0, 4, aff.shape, generator=g)
    r[:2][r[:2] == 1] = 0  # uneven counts between the halves
    labels = [(r == i).float() for i in range(3)]
    whole = aff.clone().requires_grad_()
    one = resnet38_aff.affinity_loss(whole, *labels)
    one["total"].backward()

    halves = [slice(0, 2), slice(2, 4)]
    sent = []
    for h in halves:  # what each process contributes to the all-reduce
        resnet38_aff.affinity_loss(aff[h], *[lab[h] for lab in labels],
                                   sum_over_processes=lambda t: sent.append(t) or t, world_size=2)
    total = sent[0] + sent[1]
    for h in halves:
        part = aff[h].clone().requires_grad_()
        out = resnet38_aff.affinity_loss(part, *[lab[h] for lab in labels],
                                         sum_over_processes=lambda t: total, world_size=2)
        for n in ("bg", "fg", "neg"):
            assert out[n].item() == pytest.approx(one[n].item(), rel=1e-6)
        out["total"].backward()
        torch.testing.assert_close(part.grad / 2, whole.grad[h], rtol=1e-6, atol=1e-9)
