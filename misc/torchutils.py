"""Torch helpers shared by the networks and the training steps: poly SGD, pooling, checkpoints."""
import os
import pickle

import torch

from misc.pyutils import UserError


class PolyOptimizer(torch.optim.SGD):
    """SGD whose learning rate follows lr = base * (1 - step / max_step) ** power.

    The rate is set before each step while step < max_step; each param group keeps its own base
    rate (train_cam and train_irn give the new layers 10x the backbone's).

    momentum=None reproduces a quirk of the reference (IRNet's torchutils): it builds the optimiser as
    SGD(params, lr, weight_decay), and SGD's third positional parameter is *momentum*, so the
    reference trains with momentum = weight_decay (1e-4, practically no momentum). Its real weight
    decay comes from the per-group 'weight_decay' entries. Pass momentum=0.9 for ordinary SGD.
    `weight_decay` is also the default for groups that do not set their own (both reference callers
    set it on every group, so this changes nothing for them).
    """

    def __init__(self, params, lr, weight_decay, max_step, momentum=None, power=0.9):
        if momentum is None:
            momentum = weight_decay  # the reference quirk, see above
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.global_step = 0
        self.max_step = max_step
        self.power = power
        self.initial_lrs = [group["lr"] for group in self.param_groups]

    def poly_lr_mult(self, step):
        return (1 - step / self.max_step) ** self.power

    def lr_mult(self, step):
        """The factor on the base lr that the update of step `step` (0-based) uses: the rate is last set
        before step max_step - 1, so later steps keep that floor, (1 / max_step) ** power."""
        if self.max_step <= 0:  # the rate is never set: the base rate throughout
            return 1.0
        return self.poly_lr_mult(min(step, self.max_step - 1))

    def step(self, closure=None):
        if self.global_step < self.max_step:
            mult = self.poly_lr_mult(self.global_step)
            for group, base in zip(self.param_groups, self.initial_lrs):
                group["lr"] = base * mult
        loss = super().step(closure)
        self.global_step += 1
        return loss


def gap2d(x, keepdims=False):
    """Global average pooling over the two spatial dimensions of an (N, C, H, W) tensor."""
    return x.mean(dim=(2, 3), keepdim=keepdims)


def read_state_dict(path, what="checkpoint", written_by=None):
    """Load a .pth state dict (tensors only, no arbitrary pickle); UserError if missing or unreadable."""
    if not os.path.isfile(path):
        hint = f"run {written_by} first (it writes this file)" if written_by else "check the path"
        raise UserError(f"{what} not found: {path}; {hint}")
    try:
        try:  # memory-mapped: the index is read now, a tensor's bytes when it is copied into the network
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file of the legacy (non-zip) format cannot be mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read {what} {path} ({e.__class__.__name__}); "
                        f"it is not a PyTorch state dict or it is truncated: replace or delete it")
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise UserError(f"{what} {path} is not a state dict of tensors; save one with torch.save(model.state_dict(), path)")
    return state


def load_state_dict_checked(model, state_dict, source):
    """Strictly load `state_dict` into `model`, turning a mismatch into a one-line UserError.

    `source` names the file in the message. BatchNorm's num_batches_tracked may be absent (older
    PyTorch did not save it); the model's own value is kept then, as PyTorch does for old files.
    A model built on the meta device (net/weights.py's check before the first step) is checked, not loaded.
    """
    own = model.state_dict()
    state_dict = dict(state_dict)
    missing = [k for k in own if k not in state_dict]
    for k in [k for k in missing if k.endswith("num_batches_tracked")]:
        state_dict[k] = own[k]
        missing.remove(k)
    unexpected = [k for k in state_dict if k not in own]
    name = type(model).__name__
    if missing or unexpected:
        raise UserError(f"{source} does not fit {name}: {len(missing)} missing, {len(unexpected)} unexpected keys, "
                        f"e.g. missing {missing[:3]}, unexpected {unexpected[:3]}; is it a checkpoint of another network?")
    wrong = [k for k in own if tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise UserError(f"{source} does not fit {name}: {len(wrong)} tensors of the wrong shape, e.g. {k} "
                        f"{tuple(state_dict[k].shape)} instead of {tuple(own[k].shape)}")
    if any(v.is_meta for v in own.values()):
        return model
    model.load_state_dict(state_dict, strict=True)
    return model


def load_checkpoint(model, path, what="checkpoint", written_by=None, drop=()):
    """Read `path` and load it strictly into `model`; keys in `drop` are removed first.

    Every failure (missing file, unreadable file, another network's weights) is a UserError naming
    the file; `written_by` names the step that writes it, for the hint.
    """
    state = read_state_dict(path, what, written_by)
    drop = set(drop)
    state = {k: v for k, v in state.items() if k not in drop}
    return load_state_dict_checked(model, state, f"{what} {path}")


def load_weights(model, path, step=None):
    """load_checkpoint for a file written by pipeline step `step` (named in the hint when it is missing)."""
    return load_checkpoint(model, path, what="weights", written_by=f"step {step}" if step else None)
