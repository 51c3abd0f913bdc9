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
   an exact native kernel (PyTorch's NCHW max pooling is about 17x slower at ResNet's stem).
4. **Realization**: every self-grouped layer (and every fused plain layer) becomes a fast
   module of :mod:`sgcnn.deploy.fast`. With ``tune=True`` each candidate realization is timed on
   the target device at the example's shape and memory layout (:mod:`sgcnn.deploy._tuning`) and
   the fastest kept; the
   measurements are stored on the result as ``model.sgcnn_conversion`` (and in files written
   by :mod:`sgcnn.deploy.export`), so they need not be measured again. A dense candidate is always
   among them, so no layer ends up slower than its dense version beyond measurement noise.
5. The result is checked against the masked model on the example input
   (``torch.testing.assert_close``, atol 1e-5, rtol 1e-4 scaled to the output's magnitude;
   TF32 off during the check).

Models ``torch.fx`` cannot trace, models whose forward sets attributes on every call (a
traced graph would not), and models whose traced graph computes something else on the example
(an in-place ``y += ...`` where another name still refers to ``y``) are converted layer by
layer without fusion, keeping their forward.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from sgcnn.deploy import _arena
from sgcnn.deploy import fast as F_
from sgcnn.deploy._convert_checks import (
    _full_fp32,
    _Progress,
    batched_inputs,
    check_equivalent,
    difference,
    example_tensor,
    forward_side_effects,
    module_state,
    resolve_device,
    run_checked,
)
from sgcnn.deploy._convert_fusion import (
    _fuse_sites,
    _realizable,
    _set_submodule,
    _Site,
    _split_norm_acts,
    _Tracer,
)
from sgcnn.deploy._convert_memory import _plan_memory
from sgcnn.deploy._convert_pools import _replace_max_pools, _uses_native
from sgcnn.deploy._convert_realize import _realize
from sgcnn.errors import SgcnnError
from sgcnn.nn.masked import is_masked
from sgcnn.nn.swap import replace_modules_

__all__ = ["convert", "fuse_dense"]

# ------------------------------------------------------------------------ convert


def convert(
    model: nn.Module,
    example_input: torch.Tensor | Sequence[int],
    *,
    device: str | torch.device | None = None,
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
            that shape as a tuple; the per-layer choice is measured at this shape and in
            this tensor's memory layout (a channels-last example: tuned channels-last).
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
    model: nn.Module,
    example_input: torch.Tensor | Sequence[int],
    *,
    device: str | torch.device | None = None,
    tune: bool = True,
    progress: bool | None = None,
) -> nn.Module:
    """The same compilation (BatchNorm / ReLU / residual fusion, per-layer measured choice of
    dense execution: NCHW, channels-last or matrix product) for a model with no self-grouped
    layers: the fair dense baseline for :func:`convert`'s speed."""
    return _convert(model, example_input, device, tune, True, ("dense",), True, progress)


def _convert(model, example_input, device, tune, fuse, realizations, check, progress) -> nn.Module:
    dev = resolve_device(device, model)
    if isinstance(realizations, str):  # one name, not its letters
        realizations = (realizations,)
    if realizations is not None:
        known = set(F_.CONV_REALIZATIONS) | set(F_.LINEAR_REALIZATIONS)
        unknown = set(realizations) - known
        if unknown:
            raise SgcnnError(f"unknown realizations {sorted(unknown)}; choose from {sorted(known)}")
    _warn_of_hooks(model)
    work = copy.deepcopy(model).eval().to(dev)
    x = example_tensor(example_input, dev)
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise SgcnnError(
            "example_input holds NaN or infinite values; give an example of real inputs (the "
            "conversion is checked against the masked model on it)"
        )
    with _full_fp32():
        before = module_state(work)
        with batched_inputs(work, _realizable):
            reference = run_checked(work, x)
        side_effects = forward_side_effects(work, before)
        if side_effects:  # a first call may build caches: only state set on every call counts
            before = module_state(work)
            run_checked(work, x)
            side_effects = forward_side_effects(work, before)
    dtype = x.dtype if x.is_floating_point() else torch.float32

    if side_effects:
        warnings.warn(
            f"the model's forward sets {', '.join(side_effects[:3])} on every call, which a "
            "traced graph would not do: converting layer by layer, without fusion (slower), "
            "so that the converted model's forward still does",
            stacklevel=3,
        )
    name = type(model).__name__ + "Converted"
    gm = None if side_effects else _faithful_trace(work, x, reference, fuse, name)

    records = []
    if gm is not None:
        replaced: dict[fx.Node, fx.Node] = {}  # last node of a fused chain -> its fast call
        sites = _fuse_sites(gm, fuse)
        if _uses_native(dev, realizations):  # the native kernels read and write NCHW, so a
            for site, _, _ in sites:  # channels-last example's layout does not carry through
                site.channels_last = False
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
    _arena.release(result)  # what tuning left: its modules' plans keep views of its buffers
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


def _warn_of_hooks(model: nn.Module) -> None:
    """Forward hooks do not survive conversion reliably (a fused or replaced layer has none; a
    module the graph traced through is never called): say which modules carry some. The
    pre-hooks of ``weight_norm`` / ``spectral_norm``, which compute the weight the conversion
    takes, are not user hooks."""
    hooked = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m._forward_hooks
        or any(not isinstance(getattr(h, "name", None), str) for h in m._forward_pre_hooks.values())
    ]
    if hooked:
        shown = ", ".join(hooked[:5]) + (f" and {len(hooked) - 5} more" if len(hooked) > 5 else "")
        warnings.warn(
            f"forward hooks on {shown} may not run in the converted model (fused, replaced and "
            "traced-through modules are not called as such); register them on the converted "
            "model's modules instead",
            stacklevel=4,
        )


def _faithful_trace(work, x, reference, fuse: bool, name: str) -> fx.GraphModule | None:
    """:func:`_trace`, or None (with a warning) where the graph computes on ``x`` something
    else than ``work`` did (``reference``): ``torch.fx`` records ``y += z`` as ``y = y + z``,
    so where another name for ``y`` was taken before (``skip = y``), the graph leaves its
    value as it was and the forward does not."""
    traced = _trace(work, x, fuse, name)
    if traced is None:
        return None
    gm, out = traced
    if difference(out, reference) is None:
        return gm
    warnings.warn(
        "the model's traced graph computes something else than its forward on the example "
        "(most often an in-place `y += ...` where another name still refers to `y`, which "
        "torch.fx records as `y = y + ...`): converting layer by layer, without fusion "
        "(slower), keeping the model's forward",
        stacklevel=4,
    )
    return None


def _trace(work: nn.Module, x: torch.Tensor, fuse: bool, name: str):
    """``(graph, its output on x)``: ``work`` as a graph with every tensor's shape on ``x``;
    None when fx cannot trace it.

    Shapes are also taken at another batch size (``meta["other_batch_shape"]``), so that fusion
    tells a tensor that follows the batch from one that broadcasts against it (a ``[1, C, H, W]``
    parameter looks like an activation on a batch-1 example)."""
    try:
        gm = fx.GraphModule(work, _Tracer().trace(work), class_name=name)
        if fuse:
            _split_norm_acts(gm)
            gm.recompile()
    except Exception:
        return None
    if fuse and x.dim() > 0:
        other = torch.cat([x, x[:1]]) if x.shape[0] == 1 else x[:1]
        try:
            ShapeProp(gm).propagate(other)
            for node in gm.graph.nodes:
                meta = node.meta.get("tensor_meta")
                if hasattr(meta, "shape"):
                    node.meta["other_batch_shape"] = tuple(meta.shape)
        except Exception:  # a model fixed to one batch size: the final check will tell
            pass
    try:
        with _full_fp32():  # as the reference it is compared with was computed
            out = ShapeProp(gm).propagate(x)
    except Exception:
        return None
    return gm, out


def _convert_by_swapping(work, x, dev, tune, realizations, dtype, records, progress) -> nn.Module:
    """Layer-by-layer conversion, the model's own forward kept (nothing fused): for models
    ``torch.fx`` cannot trace or whose forward has side effects."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    handles = [
        m.register_forward_hook(record(name))
        for name, m in work.named_modules()
        if _swappable(m, name)
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

    replace_modules_(work, _swappable, build)
    bar.close()
    return work


def _swappable(m: nn.Module, name: str = "") -> bool:
    """A layer the layer-by-layer path realizes: self-grouped, and by the traced path's rule
    (exactly these classes, a geometry a fast module can realize: a reflect-padded or
    one-side-``"same"`` convolution runs as it is)."""
    return is_masked(m) and _realizable(m)
