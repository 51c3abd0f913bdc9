"""Checks around :func:`sgcnn.deploy.convert.convert`: the device and the example input, the
model run on it, the equivalence of the result, and the progress line while layers are
realized."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

import torch
from torch import nn

from sgcnn._device import checked_device
from sgcnn.errors import SgcnnError

# ------------------------------------------------------------------------- checks


def resolve_device(device, model: nn.Module) -> torch.device:
    """``device`` as a ``torch.device`` (default: the model's), or a clear error."""
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return checked_device(device, "device= or --device")


def example_tensor(example_input, device: torch.device) -> torch.Tensor:
    """``example_input`` (a tensor, or a shape to draw a normal sample of) on ``device``; an
    :class:`SgcnnError` for anything else, and for a shape without dimensions or with a size
    below 1 (nothing to measure or check on)."""
    if isinstance(example_input, torch.Tensor):
        _check_example_shape(tuple(example_input.shape))
        return example_input.detach().to(device)
    if isinstance(example_input, Sequence) and all(isinstance(s, int) for s in example_input):
        _check_example_shape(tuple(example_input))
        return torch.randn(*example_input, device=device)
    raise SgcnnError(
        "example_input must be a tensor (or a shape like (1, 3, 224, 224)), "
        f"got {type(example_input).__name__}"
    )


def _check_example_shape(shape: tuple[int, ...]) -> None:
    if not shape or any(s < 1 for s in shape):
        raise SgcnnError(
            f"example_input has shape {shape}: give the shape the model runs at, batch "
            "first and every size at least 1, e.g. (1, 3, 224, 224)"
        )


@contextlib.contextmanager
def batched_inputs(model: nn.Module, realized):
    """Inside the block, a call of a convolution that ``realized(module)`` selects on an input
    that is not ``[batch, channels, height, width]`` (an unbatched example) raises an
    :class:`SgcnnError`: the fast modules are built for batched inputs only."""

    def check(name: str):
        def hook(module, args) -> None:
            x = args[0] if args else None
            if isinstance(x, torch.Tensor) and x.dim() != 4:
                raise SgcnnError(
                    f"convolution {name!r} receives an input of shape {list(x.shape)} on the "
                    "example, but a converted convolution runs on batched inputs [batch, "
                    "channels, height, width]: give an example with a batch dimension (e.g. "
                    "x.unsqueeze(0) for one image)"
                )

        return hook

    handles = [
        m.register_forward_pre_hook(check(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and realized(m)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _first_layer_hint(model: nn.Module, x: torch.Tensor) -> str:
    param = next(model.parameters(), None)
    if param is not None and x.dtype != param.dtype:
        return f" (its weights are {param.dtype}, the example is {x.dtype}: cast one to the other)"
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d):
        if x.dim() == 4 and x.shape[1] == first.in_channels:
            return (
                " (the channels fit; a later layer needs another image size, most often the "
                "one the model was built for)"
            )
        return f" (its first convolution expects {first.in_channels} input channels: N x C x H x W)"
    if isinstance(first, nn.Linear):
        return f" (its first linear layer expects {first.in_features} features)"
    return ""


@torch.no_grad()
def run_checked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``; any error the model raises on ``x`` (a shape mismatch, an assertion of
    its own) becomes an :class:`SgcnnError` that says what to do (an :class:`SgcnnError`
    passes as it is)."""
    try:
        return model(x)
    except SgcnnError:
        raise
    except Exception as err:
        lines = str(err).splitlines()
        said = f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
        raise SgcnnError(
            f"the model fails on an example input of shape {tuple(x.shape)}"
            f"{_first_layer_hint(model, x)}: {said}. "
            "Give an example input of the shape the model is used with."
        ) from err


_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}  # hooks, submodules, ...


def module_state(model: nn.Module) -> dict[tuple[str, str], tuple]:
    """Every attribute, parameter and buffer of every submodule, by (module, name): the object
    itself (compared with ``is``; holding it keeps its id from being reused) and, for a list,
    dict or set, its items (a feature kept by ``append`` changes the items, not the list)."""
    state = {}
    for name, module in model.named_modules():
        recomputed = _recomputed_by_hooks(module)
        for store in (vars(module), module._parameters, module._buffers):
            for key, value in store.items():
                if (store is vars(module) and key in _MODULE_INTERNALS) or key in recomputed:
                    continue
                state[(name, key)] = (value, _items(value))
    return state


def _items(value) -> tuple | None:
    if isinstance(value, dict):
        return tuple(value.items())
    if isinstance(value, (list, set)):
        return tuple(value)
    return None


def _recomputed_by_hooks(module: nn.Module) -> set[str]:
    """Attributes a forward pre-hook sets on every call from the module's own parameters
    (``weight_norm``, ``spectral_norm``: the hook object names its attribute)."""
    return {
        hook.name
        for hook in module._forward_pre_hooks.values()
        if isinstance(getattr(hook, "name", None), str)
    }


def forward_side_effects(model: nn.Module, before: dict[tuple[str, str], tuple]) -> list[str]:
    """The attributes (``module.name``) that a forward pass set, replaced or changed in place
    since ``before`` (:func:`module_state`): state a traced program would not update."""
    after = module_state(model)

    def changed(key) -> bool:
        if key not in before:
            return True
        (old, old_items), (new, new_items) = before[key], after[key]
        if old is not new or (old_items is None) != (new_items is None):
            return True
        if old_items is None:
            return False
        a, b = _flat(old_items), _flat(new_items)
        return len(a) != len(b) or any(x is not y for x, y in zip(a, b, strict=True))

    keys = [key for key in after if changed(key)] + [key for key in before if key not in after]
    return [f"{module}.{attr}" if module else attr for module, attr in keys]


def _flat(items: tuple) -> list:
    return [x for item in items for x in (item if isinstance(item, tuple) else (item,))]


@contextlib.contextmanager
def _full_fp32():
    """No TF32 inside the block (cuDNN enables it for fp32 convolutions by default): the
    equivalence check compares fp32 results, not 10-bit-mantissa ones."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def output_tensors(output) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or tuples / lists / dicts of them), in order."""
    return [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def check_equivalent(converted: nn.Module, reference, x: torch.Tensor) -> None:
    """``torch.testing.assert_close(converted(x), reference)`` within :func:`tolerances`;
    outputs may be nested tuples, lists and dicts of tensors. A failure here is a bug in
    sgcnn."""
    differs = difference(converted(x), reference)
    if differs is not None:
        raise SgcnnError(
            f"converted model differs from the masked model: {differs}. This is a bug in "
            "sgcnn; convert(..., fuse=False) or realizations=('dense',) may avoid it"
        )


def tolerances(reference) -> tuple[float, float]:
    """``(atol, rtol)`` for outputs like ``reference``: in fp32 (and fp64) atol ``1e-5``
    times the outputs' scale when above 1 and rtol ``1e-4``; in a coarser float type both grow
    with its precision (``eps / 2`` times the scale, ``eps``: fp16 5e-4 / 1e-3, bf16 4e-3 /
    8e-3), since two summation orders of one network differ by a few of its roundings."""
    tensors = [t for t in output_tensors(reference) if t.numel()]
    scale = max([1.0, *(float(t.abs().max()) for t in tensors)])
    eps = max([torch.finfo(t.dtype).eps for t in tensors if t.is_floating_point()], default=0.0)
    return max(1e-5, eps / 2) * scale, max(1e-4, eps)


def difference(out, reference) -> str | None:
    """How ``out`` differs from ``reference`` beyond :func:`tolerances`, or None."""
    atol, rtol = tolerances(reference)
    try:
        torch.testing.assert_close(out, reference, atol=atol, rtol=rtol)
    except (AssertionError, TypeError, ValueError) as err:  # (other values, other structure)
        return str(err)
    return None


# ------------------------------------------------------------------------ progress


class _Progress:
    """``convert: layer 12/53 layer3.1.conv2 (4 candidates)`` on stderr while layers are realized:
    one line rewritten in place on a terminal, one line per layer otherwise."""

    def __init__(self, enabled: bool | None, total: int, what: str = "convert") -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = self.tty if enabled is None else bool(enabled)
        self.total, self.what, self.done = total, what, 0

    def step(self, name: str, candidates: int) -> None:
        self.done += 1
        if not self.enabled:
            return
        verb = f"tuning {candidates} candidates" if candidates > 1 else "realizing"
        line = f"{self.what}: layer {self.done}/{self.total} {name} ({verb})"
        if self.tty:
            sys.stderr.write("\r\033[K" + line[:150])
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
