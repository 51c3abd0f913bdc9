"""Compile a self-grouped model into fast, exact diverse-group modules: :func:`convert`.

What happens, in order:

1. The model is copied (the caller's model is left alone), put in eval mode and moved to the
   device, and run once on the example input (a wrong shape fails here, with a clear error).
2. ``torch.fx`` traces it, keeping Conv2d / Linear / BatchNorm layers whole, and records every
   tensor's shape on the example input.
3. **Fusion** (``fuse=True``): each Conv2d followed only by a BatchNorm2d (eval mode, running
   statistics) has the BatchNorm folded into its weights and bias; a ReLU that follows, or a
   residual addition ``y + other`` (same shape) and the ReLU after it, move into the layer's
   epilogue. This is exact up to fp32 rounding and saves whole passes over memory. Plain
   (not self-grouped) convolutions are fused too: the comparison "dense + the same fusion" is
   what :mod:`sgcnn.metrics.latency` reports next to the plain dense model. Only modules of
   exactly these classes are folded or realized (``nn.Conv2d``, ``nn.Linear``, their masked
   versions, ``nn.BatchNorm2d``, ``nn.ReLU``): a subclass may compute something else in its
   forward and is left to run as it is. timm's ``BatchNormAct2d`` (BatchNorm, dropout and an
   activation in one module) is split into its three steps first, so its BatchNorm folds and
   its activation stays. Where the native kernels may be used, 2-D max pooling is swapped for
   an exact native kernel (PyTorch's NCHW max pooling is ~8x slower than one pass over
   memory).
4. **Realization**: every self-grouped layer (and every fused plain layer) becomes a fast
   module of :mod:`sgcnn.deploy.fast`. With ``tune=True`` each candidate realization is timed on
   the target device at the example's shape (:mod:`sgcnn.deploy.tuning`) and the fastest kept; the
   measurements are stored on the result as ``model.sgcnn_conversion`` (and in files written
   by :mod:`sgcnn.exporting`), so they need not be measured again. A dense candidate is always
   among them, so no layer ends up slower than its dense version beyond measurement noise.
5. The result is checked against the masked model on the example input
   (``torch.testing.assert_close``, atol 1e-5, rtol 1e-4 scaled to the output's magnitude;
   TF32 off during the check).

Models ``torch.fx`` cannot trace are converted layer by layer without fusion.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from sgcnn.deploy import _arena, _native, tuning
from sgcnn.deploy import fast as F_
from sgcnn.errors import SgcnnError
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear, is_masked
from sgcnn.nn.swap import replace_modules_

_RELUS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_}
_ADDS = {operator.add, operator.iadd, torch.add}


class _Tracer(fx.Tracer):
    """Keeps Conv2d / Linear / BatchNorm (masked subclasses included) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class _Site:
    """One layer to realize: where it is in the graph and what to fold into it."""

    name: str  # submodule name in the converted model
    layer: nn.Module
    bn: nn.Module | None
    relu: bool
    input_shape: tuple[int, ...]
    residual_shape: tuple[int, ...] | None


# ------------------------------------------------------------------------- checks


def resolve_device(device, model: nn.Module) -> torch.device:
    """``device`` as a ``torch.device`` (default: the model's), or a clear error."""
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SgcnnError(f"{device!r} is not a device; use 'cpu' or 'cuda'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SgcnnError(
            f"device {str(dev)!r} is not available here (torch.cuda.is_available() is False); "
            "use device='cpu' or run on a machine with a CUDA GPU"
        )
    if dev.type not in ("cpu", "cuda"):
        raise SgcnnError(f"device {str(dev)!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def example_tensor(example_input, device: torch.device) -> torch.Tensor:
    """``example_input`` (a tensor, or a shape to draw a normal sample of) on ``device``."""
    if isinstance(example_input, torch.Tensor):
        return example_input.detach().to(device)
    if isinstance(example_input, Sequence) and all(isinstance(s, int) for s in example_input):
        return torch.randn(*example_input, device=device)
    raise SgcnnError(
        "example_input must be a tensor (or a shape like (1, 3, 224, 224)), "
        f"got {type(example_input).__name__}"
    )


def _first_layer_hint(model: nn.Module) -> str:
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv2d):
        return f" (its first convolution expects {first.in_channels} input channels: N x C x H x W)"
    if isinstance(first, nn.Linear):
        return f" (its first linear layer expects {first.in_features} features)"
    return ""


@torch.no_grad()
def run_checked(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, turning a shape mismatch into an :class:`SgcnnError` that says what to do."""
    try:
        return model(x)
    except (RuntimeError, ValueError, IndexError) as err:
        raise SgcnnError(
            f"the model fails on an example input of shape {tuple(x.shape)}"
            f"{_first_layer_hint(model)}: {str(err).splitlines()[0][:200]}. "
            "Give an example input of the shape the model is used with."
        ) from err


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


# ------------------------------------------------------------------ graph fusion


def _users(node: fx.Node) -> list[fx.Node]:
    return list(node.users)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = _users(node)
    return users[0] if len(users) == 1 else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELUS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _residual_of(node: fx.Node, prev: fx.Node) -> fx.Node | None:
    """The other operand if ``node`` is ``prev + other`` of equal shape and dtype, else None."""
    is_add = (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_", "__add__", "__iadd__")
    )
    if not is_add or node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    other = b if a is prev else a if b is prev else None
    if not isinstance(other, fx.Node) or other is prev:
        return None
    meta_p, meta_o = prev.meta.get("tensor_meta"), other.meta.get("tensor_meta")
    if meta_p is None or meta_o is None or not hasattr(meta_o, "shape"):
        return None
    if meta_p.shape != meta_o.shape or meta_p.dtype != meta_o.dtype:
        return None
    return other


# Exactly these classes are folded or realized: a subclass may compute something else in its
# forward (timm's BatchNormAct2d applies an activation, Conv2dSame pads by the input's size,
# StdConv2d standardizes its weight), so it is left to run as it is.
_FOLDABLE_NORMS = (nn.BatchNorm2d,)
_REALIZABLE_LAYERS = (nn.Conv2d, nn.Linear, MaskedConv2d, MaskedLinear)


def _is_eval_bn(m: nn.Module | None) -> bool:
    """A BatchNorm that is an affine map per channel: exact class, running statistics."""
    return (
        type(m) in _FOLDABLE_NORMS
        and m.track_running_stats
        and m.running_var is not None
        and m.running_mean is not None
    )


def _realizable(m: nn.Module | None) -> bool:
    return type(m) in _REALIZABLE_LAYERS and F_.is_supported_layer(m)


def _is_norm_act(m: nn.Module | None) -> bool:
    """timm's ``BatchNormAct2d`` (exact class): ``act(drop(batch_norm(x)))``."""
    cls = type(m)
    return (
        cls.__name__ == "BatchNormAct2d"
        and cls.__module__.startswith("timm.")
        and isinstance(m, nn.BatchNorm2d)
        and isinstance(getattr(m, "act", None), nn.Module)
        and isinstance(getattr(m, "drop", None), nn.Module)
    )


def _split_norm_acts(gm: fx.GraphModule) -> None:
    """Rewrite every call of a BatchNorm-with-activation module as its three steps
    ``act(drop(bn(x)))`` with ``bn`` a plain ``nn.BatchNorm2d`` sharing its statistics and
    parameters, so that fusion can fold the BatchNorm and keep the activation."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_norm_act(modules.get(node.target)):
            continue
        m = modules[node.target]
        bn = nn.BatchNorm2d(
            m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats
        ).eval()
        bn.weight, bn.bias = m.weight, m.bias
        bn.running_mean, bn.running_var = m.running_mean, m.running_var
        bn.num_batches_tracked = m.num_batches_tracked
        name = f"{node.target}.sgcnn_bn"
        gm.add_submodule(name, bn)
        with gm.graph.inserting_before(node):
            y = gm.graph.call_module(name, node.args, node.kwargs)
            y = gm.graph.call_module(f"{node.target}.drop", (y,))
            y = gm.graph.call_module(f"{node.target}.act", (y,))
        y.meta = dict(node.meta)
        node.replace_all_uses_with(y)
        gm.graph.erase_node(node)


def _fuse_sites(gm: fx.GraphModule, fuse: bool) -> list[tuple[_Site, fx.Node, list[fx.Node]]]:
    """Find the layers to realize and the chain of nodes each one replaces."""
    modules = dict(gm.named_modules())
    found = []
    used_names: set[str] = set()
    claimed: set[fx.Node] = set()  # nodes already fused into an earlier layer

    def free(user: fx.Node | None) -> fx.Node | None:
        return user if user is not None and user not in claimed else None

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        layer = modules.get(node.target)
        if not _realizable(layer):
            continue
        chain, cur = [node], node
        bn, relu, residual = None, False, None
        if fuse:
            user = free(_single_user(cur))
            if (
                isinstance(layer, nn.Conv2d)
                and user is not None
                and user.op == "call_module"
                and _is_eval_bn(modules.get(user.target))
            ):
                bn, cur = modules[user.target], user
                chain.append(cur)
            user = free(_single_user(cur))
            if user is not None and _is_relu(user, modules):
                relu, cur = True, user
                chain.append(cur)
            elif user is not None and (other := _residual_of(user, cur)) is not None:
                residual, cur = other, user
                chain.append(cur)
                user = free(_single_user(cur))
                if user is not None and _is_relu(user, modules):
                    relu, cur = True, user
                    chain.append(cur)
        if not is_masked(layer) and len(chain) == 1:
            continue  # a plain layer with nothing fused stays as it is
        claimed.update(chain)
        name = str(node.target)
        if name in used_names:  # a layer called more than once: one fast module per call
            i = 1
            while f"{name}_{i}" in used_names:
                i += 1
            name = f"{name}_{i}"
        used_names.add(name)
        x = node.args[0]
        site = _Site(
            name,
            layer,
            bn,
            relu,
            tuple(x.meta["tensor_meta"].shape),
            tuple(residual.meta["tensor_meta"].shape) if residual is not None else None,
        )
        found.append((site, residual, chain))
    return found


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


# --------------------------------------------------------------------- realizing


def _candidates(site: _Site, device: torch.device, allowed: Sequence[str] | None):
    """``{label: factory}`` of the realizations worth trying for ``site``."""
    spec = F_.spec_from_layer(site.layer, site.bn, site.relu)
    out: dict[str, object] = {}

    def ok(kind: str) -> bool:
        # dense realizes plain (fused) layers whatever the restriction says
        return allowed is None or kind in allowed or (kind == "dense" and not is_masked(site.layer))

    if spec.kind == "linear":
        for kind, cls in F_.LINEAR_REALIZATIONS.items():
            if ok(kind) and (kind == "dense" or is_masked(site.layer)):
                out[kind] = lambda cls=cls: cls.from_spec(spec)
        return spec, out
    if ok("dense"):
        for mode in F_.DenseConv2d.modes:
            if mode == "matmul" and (
                spec.taps != 1 or spec.conv_groups != 1 or spec.padding != (0, 0)
            ):
                continue
            out[f"dense/{mode}"] = lambda mode=mode: F_.DenseConv2d.from_spec(spec, mode)
    if ok("native") and F_.NativeGroupConv2d.supports(spec, device):
        for block, rows in F_.NativeGroupConv2d.settings_to_try:
            out[f"native/b{block}r{rows}"] = lambda b=block, r=rows: F_.NativeGroupConv2d.from_spec(
                spec, b, r
            )
    # The gathering realizations never beat the gather-free kernel (measured on ResNet-50 at
    # batch 1 and 16): where it runs they are not timed unless asked for by name.
    gathering_needed = allowed is not None or not any(k.startswith("native/") for k in out)
    if is_masked(site.layer) and gathering_needed:
        if ok("grouped"):
            out["grouped"] = lambda: F_.GroupedConv2d.from_spec(spec)
        if ok("loop"):
            out["loop"] = lambda: F_.GroupLoopConv2d.from_spec(spec)
    return spec, out


def _default_choice(labels: list[str], spec: F_.LayerSpec, masked: bool) -> str:
    """Without measuring: dense for plain layers; for self-grouped ones the native kernel where
    it runs, else the padded grouped form when it saves at least 30% of the dense work, else
    dense."""
    native = [label for label in labels if label.startswith("native/")]
    if masked and native:
        return "native/b8r6" if "native/b8r6" in native else native[0]
    if masked and "grouped" in labels:
        grouped = F_.GroupedConv2d.from_spec(spec) if spec.kind == "conv" else None
        if grouped is not None and grouped.weight.numel() < 0.7 * spec.weight.numel():
            return "grouped"
    dense = [label for label in labels if label.startswith("dense")]
    return dense[0] if dense else labels[0]


def _realize(
    site: _Site,
    device: torch.device,
    tune: bool,
    allowed: Sequence[str] | None,
    dtype,
    progress: _Progress,
) -> tuple[nn.Module, dict]:
    spec, factories = _candidates(site, device, allowed)
    if not factories:  # none of the allowed realizations applies: the dense fallback
        spec, factories = _candidates(site, device, ("dense",))
    progress.step(site.name, len(factories) if tune else 1)
    record: dict = {"name": site.name, "input_shape": list(site.input_shape)}
    if tune and len(factories) > 1:
        # timings cached by layer and machine (sgcnn.deploy.tuning): measured once
        key = tuning.layer_key(spec, site.input_shape, site.residual_shape, dtype)
        results = tuning.lookup(key, factories, device)
        if results is None:
            modules = {label: f().to(device) for label, f in factories.items()}
            x = torch.randn(site.input_shape, device=device, dtype=dtype)
            res = (
                torch.randn(site.residual_shape, device=device, dtype=dtype)
                if site.residual_shape is not None
                else None
            )
            calls = {
                label: (lambda m=m: m(x, res) if res is not None else m(x))
                for label, m in modules.items()
            }
            for m in modules.values():  # outputs reused between calls, as in the converted model
                m.arena_slot = (_arena.Arena(1), 0)
            results = tuning.time_candidates(calls, device)
            for m in modules.values():
                m.arena_slot = None
            if not results:
                raise RuntimeError(f"layer {site.name!r}: every realization failed to run")
            tuning.store(key, factories, results, device)
            module = modules[tuning.best(results)]
        else:
            module = factories[tuning.best(results)]().to(device)
        choice = tuning.best(results)
        record["times_ms"] = results
    else:
        choice = _default_choice(list(factories), spec, is_masked(site.layer))
        module = factories[choice]().to(device)
    executed, padding = module.macs(site.input_shape)
    record.update(
        realization=choice,
        macs=executed,
        padding_macs=padding,
        useful_macs=F_.useful_macs(spec, site.input_shape),
    )
    return module, record


def _max_pool_args(node: fx.Node, modules: dict[str, nn.Module]) -> dict | None:
    """The arguments of a max-pooling node the native pool can run, else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is not nn.MaxPool2d or m.return_indices or m.dilation not in (1, (1, 1)):
            return None
        return {
            "kernel_size": m.kernel_size,
            "stride": m.stride,
            "padding": m.padding,
            "ceil_mode": m.ceil_mode,
        }
    if node.op != "call_function" or node.target not in (
        nn.functional.max_pool2d,
        torch.max_pool2d,
    ):
        return None
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    args = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
    if args.get("return_indices") or args.get("dilation", 1) not in (1, (1, 1), [1, 1]):
        return None
    if any(isinstance(v, fx.Node) for k, v in args.items() if k != "input"):
        return None
    return {
        "kernel_size": args["kernel_size"],
        "stride": args.get("stride"),
        "padding": args.get("padding", 0),
        "ceil_mode": bool(args.get("ceil_mode", False)),
    }


def _uses_native(device: torch.device, allowed: Sequence[str] | None) -> bool:
    """Whether the native kernels may run in the converted model."""
    return (allowed is None or "native" in allowed) and device.type == "cpu" and _native.available()


def _replace_max_pools(gm: fx.GraphModule) -> None:
    """Swap 2-D max pooling for :class:`sgcnn.deploy.fast.MaxPool2d` (exact, faster in NCHW)."""
    modules = dict(gm.named_modules())
    for i, node in enumerate(list(gm.graph.nodes)):
        args = _max_pool_args(node, modules)
        meta = node.meta.get("tensor_meta")
        if args is None or meta is None or len(getattr(meta, "shape", ())) != 4:
            continue
        name = f"sgcnn_max_pool_{i}"
        gm.add_submodule(name, F_.MaxPool2d(**args))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


# ---------------------------------------------------------------- memory planning


def _plan_memory(gm: fx.GraphModule) -> None:
    """Two exact savings between native layers (flags on the modules, graph unchanged):

    - *padded hand-off*: when a native convolution with zero padding (stride 1) is the only
      reader of another native layer's output, the producer writes its output with that zero
      border already in place, and the consumer skips its padded copy of the input;
    - *in-place residual*: when the residual added by a native layer is a fresh tensor made by
      a fast module and every other reader of it runs earlier, the layer accumulates into it
      instead of allocating (and page-faulting in) a new output.
    """
    modules = dict(gm.named_modules())
    order = {node: i for i, node in enumerate(gm.graph.nodes)}

    def fast_call(node) -> bool:
        return (
            isinstance(node, fx.Node)
            and node.op == "call_module"
            and F_.is_fast(modules.get(node.target))
        )

    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules.get(node.target), F_.NativeGroupConv2d
        ):
            continue
        layer = modules[node.target]
        producer = node.args[0]
        if (
            layer.padding != (0, 0)
            and layer.stride == (1, 1)
            and fast_call(producer)
            and isinstance(modules[producer.target], F_.NativeGroupConv2d)
            and len(producer.users) == 1
        ):
            source = modules[producer.target]
            if source.out_pad == (0, 0) and not source.accumulate:
                source.out_pad = layer.padding
                layer.input_padded = True
        if len(node.args) == 2:
            root, readers = _alias_root(node.args[1], modules)
            if (
                fast_call(root)
                and root is not _alias_root(producer, modules)[0]
                and getattr(modules[root.target], "out_pad", (0, 0)) == (0, 0)
                and all(fast_call(u) and (u is node or order[u] < order[node]) for u in readers)
            ):
                layer.accumulate = True


def _alias_root(node, modules) -> tuple[object, list[fx.Node]]:
    """The node whose tensor ``node`` is (looking through ``nn.Identity`` calls, which return
    their input itself) and every node that reads that tensor other than through identities."""
    while (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(modules.get(node.target), nn.Identity)
    ):
        node = node.args[0]
    readers, stack = [], [node] if isinstance(node, fx.Node) else []
    while stack:
        for user in stack.pop().users:
            if user.op == "call_module" and isinstance(modules.get(user.target), nn.Identity):
                stack.append(user)
            else:
                readers.append(user)
    return node, readers


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


# ------------------------------------------------------------------------ convert


def convert(
    model: nn.Module,
    example_input,
    device=None,
    tune: bool = True,
    fuse: bool = True,
    realizations: Sequence[str] | None = None,
    check: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """A copy of ``model`` in which every self-grouped Conv2d / Linear is a fast module.

    Args:
        model: a self-grouped model (see :func:`sgcnn.self_group_`); it is not modified.
        example_input: a tensor of the shape the model will run at (batch size included), or
            that shape as a tuple; the per-layer choice is measured at this shape.
        device: where the converted model will run (default: the model's device).
        tune: measure the candidate realizations per layer and keep the fastest; ``False``
            picks without measuring (the native kernel when it can run).
        fuse: fold BatchNorm, ReLU and residual additions into the layers (eval mode only).
        realizations: restrict the candidates, e.g. ``["grouped", "dense"]`` for a model made
            of standard operators only (what ONNX export uses; without ``"native"`` max
            pooling stays PyTorch's too); a layer none of them can realize (and every fused
            plain layer) falls back to ``"dense"``.
        check: compare the result with the masked model on ``example_input``.
        progress: print the layer being realized (and tuned) on stderr; ``None``: only when
            stderr is a terminal.

    Returns an ``nn.Module`` in eval mode (a ``torch.fx.GraphModule`` when the model can be
    traced) with ``sgcnn_conversion``: per layer the realization chosen, its measured times,
    and the MACs it executes (with the padding among them).
    """
    if not any(is_masked(m) for m in model.modules()):
        raise SgcnnError(
            "the model has no self-grouped layer to convert; self-group it first "
            "(sgcnn.self_group_(model, 0.6) or `sgcnn group`), or load a self-grouped checkpoint"
        )
    return _convert(model, example_input, device, tune, fuse, realizations, check, progress)


def fuse_dense(
    model: nn.Module, example_input, device=None, tune: bool = True, progress: bool | None = None
) -> nn.Module:
    """The same compilation (BatchNorm / ReLU / residual fusion, per-layer measured choice of
    dense execution: NCHW, channels-last or matrix product) for a model with no self-grouped
    layers: the fair dense baseline for :func:`convert`'s speed."""
    return _convert(model, example_input, device, tune, True, ("dense",), True, progress)


def _convert(model, example_input, device, tune, fuse, realizations, check, progress) -> nn.Module:
    dev = resolve_device(device, model)
    if realizations is not None:
        known = set(F_.CONV_REALIZATIONS) | set(F_.LINEAR_REALIZATIONS)
        unknown = set(realizations) - known
        if unknown:
            raise SgcnnError(f"unknown realizations {sorted(unknown)}; choose from {sorted(known)}")
    work = copy.deepcopy(model).eval().to(dev)
    x = example_tensor(example_input, dev)
    with _full_fp32():
        reference = run_checked(work, x)
    dtype = x.dtype if x.is_floating_point() else torch.float32

    try:
        graph = _Tracer().trace(work)
        gm = fx.GraphModule(work, graph, class_name=type(model).__name__ + "Converted")
        if fuse:
            _split_norm_acts(gm)
            gm.recompile()
        ShapeProp(gm).propagate(x)
    except Exception:
        gm = None

    records = []
    if gm is not None:
        replaced: dict[fx.Node, fx.Node] = {}  # last node of a fused chain -> its fast call
        sites = _fuse_sites(gm, fuse)
        bar = _Progress(progress, len(sites))
        for site, residual, chain in sites:
            module, record = _realize(site, dev, tune, realizations, dtype, bar)
            records.append(record)
            _set_submodule(gm, site.name, module)
            last, first = chain[-1], chain[0]
            while residual in replaced:
                residual = replaced[residual]
            args = (first.args[0],) if residual is None else (first.args[0], residual)
            with gm.graph.inserting_after(last):
                new = gm.graph.call_module(site.name, args)
            last.replace_all_uses_with(new)
            replaced[last] = new
            for node in reversed(chain):
                gm.graph.erase_node(node)
        bar.close()
        if fuse and _uses_native(dev, realizations):
            _replace_max_pools(gm)
        _plan_memory(gm)
        _arena.plan(gm)
        gm.graph.lint()
        gm.recompile()
        gm.delete_all_unused_submodules()
        result = gm
    else:
        result = _convert_by_swapping(work, x, dev, tune, realizations, dtype, records, progress)
    result.eval()
    result.sgcnn_conversion = {
        "batch_shape": list(x.shape),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "fused": fuse and gm is not None,
        "tuned": tune,
        "layers": records,
    }
    if check:
        with _full_fp32():
            check_equivalent(result, reference, x)
    return result


def _convert_by_swapping(work, x, dev, tune, realizations, dtype, records, progress) -> nn.Module:
    """Layer-by-layer conversion for models ``torch.fx`` cannot trace (nothing fused)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    handles = [
        m.register_forward_hook(record(name)) for name, m in work.named_modules() if is_masked(m)
    ]
    try:
        run_checked(work, x)
    finally:
        for h in handles:
            h.remove()

    bar = _Progress(progress, len(shapes))

    def build(layer: nn.Module, name: str) -> nn.Module:
        if name not in shapes:
            return layer  # never called on this input: leave it
        site = _Site(name, layer, None, False, shapes[name], None)
        module, record = _realize(site, dev, tune, realizations, dtype, bar)
        records.append(record)
        return module

    replace_modules_(work, lambda m, n: is_masked(m) and type(m) in _REALIZABLE_LAYERS, build)
    bar.close()
    return work


@torch.no_grad()
def check_equivalent(converted: nn.Module, reference, x: torch.Tensor) -> None:
    """``torch.testing.assert_close(converted(x), reference)`` with atol 1e-5 (times the
    outputs' scale when above 1) and rtol 1e-4; outputs may be nested tuples, lists and
    dicts of tensors. A failure here is a bug in sgcnn."""
    out = converted(x)
    leaves = [t for t in torch.utils._pytree.tree_leaves(reference) if isinstance(t, torch.Tensor)]
    scale = max([1.0, *(float(t.abs().max()) for t in leaves if t.numel())])
    try:
        torch.testing.assert_close(out, reference, atol=1e-5 * scale, rtol=1e-4)
    except AssertionError as err:
        raise RuntimeError(f"converted model differs from the masked model: {err}") from err
