"""Realizing one layer for :func:`sgcnn.deploy.convert.convert`: the candidate realizations,
the choice without measuring, and the measured choice (cached by :mod:`sgcnn.deploy._tuning`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgcnn.deploy import _arena
from sgcnn.deploy import _tuning as tuning
from sgcnn.deploy import fast as F_
from sgcnn.deploy._convert_checks import _Progress
from sgcnn.deploy._convert_fusion import _Site
from sgcnn.deploy._fast_base import output_numel
from sgcnn.nn.masked import is_masked

# --------------------------------------------------------------------- realizing


def _candidates(site: _Site, device: torch.device, allowed: Sequence[str] | None):
    """``{label: factory}`` of the realizations worth trying for ``site``."""
    spec = F_.spec_from_layer(site.layer, site.bn, site.relu)
    out: dict[str, object] = {}

    def ok(kind: str) -> bool:
        # dense realizes plain (fused) layers whatever the restriction says
        return allowed is None or kind in allowed or (kind == "dense" and not is_masked(site.layer))

    if spec.kind == "fc":
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
    winograd = ok("winograd") and F_.WinogradGroupConv2d.supports(spec, device)
    if ok("native") and F_.NativeGroupConv2d.supports(spec, device):
        settings = F_.NativeGroupConv2d.settings_to_try
        if winograd:  # where Winograd runs the direct kernel rarely wins: one setting of it
            settings = [(8, 6)]
        for block, rows in settings:
            out[f"native/b{block}r{rows}"] = lambda b=block, r=rows: F_.NativeGroupConv2d.from_spec(
                spec, b, r
            )
    if winograd:
        for tile, block, rows in F_.WinogradGroupConv2d.settings_to_try:
            out[f"winograd/f{tile}b{block}r{rows}"] = lambda t=tile, b=block, r=rows: (
                F_.WinogradGroupConv2d.from_spec(spec, b, r, t)
            )
    # The gathering realizations never beat the gather-free kernel (measured on ResNet-50 at
    # batch 1 and 16): where it runs they are not timed unless asked for by name.
    gathering_needed = allowed is not None or not any(k.startswith("native/") for k in out)
    if is_masked(site.layer) and gathering_needed:
        if ok("grouped"):
            out["grouped"] = lambda: F_.GroupedConv2d.from_spec(spec)
        # On CUDA the per-group loop is timed only when asked for by name: on an H200 it lost
        # to cuDNN's dense convolution on every ResNet-50 layer (2.8-25x slower at batch 64),
        # and its first calls (cuDNN's algorithm search for one new shape per group) were
        # about 60% of the conversion time.
        loop_wanted = device.type != "cuda" or (allowed is not None and "loop" in allowed)
        if ok("loop") and loop_wanted:
            out["loop"] = lambda: F_.GroupLoopConv2d.from_spec(spec)
    return spec, out


def _default_choice(labels: list[str], spec: F_.LayerSpec, masked: bool) -> str:
    """Without measuring: dense for plain layers; for self-grouped ones the native kernels where
    they run (Winograd for 3x3 stride-1 layers, faster on every such ResNet-50 layer measured
    at batch 1 and 16), else the padded grouped form when it saves at least 30% of the dense
    work, else dense."""
    native = [label for label in labels if label.startswith(("native/", "winograd/"))]
    if masked and native:
        for preferred in ("winograd/f2b2r6", "native/b8r6"):
            if preferred in native:
                return preferred
        return native[0]
    if masked and "grouped" in labels:
        grouped = F_.GroupedConv2d.from_spec(spec) if spec.kind == "conv" else None
        if grouped is not None and grouped.weight.numel() < 0.7 * spec.weight.numel():
            return "grouped"
    dense = [label for label in labels if label.startswith("dense")]
    return dense[0] if dense else labels[0]


def _tuning_inputs(site: _Site, device: torch.device, dtype):
    """Random input (and residual) of the layer's shape, in the memory layout the layer will
    see in the converted model (channels-last when the example was and no native kernel,
    which writes NCHW, runs: see convert)."""
    layout = torch.channels_last if site.channels_last else torch.contiguous_format

    def draw(shape):
        return torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=layout)

    residual = draw(site.residual_shape) if site.residual_shape is not None else None
    return draw(site.input_shape), residual


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
    if site.channels_last:
        record["channels_last"] = True
    if tune and len(factories) > 1:
        # timings cached by layer and machine (sgcnn.deploy._tuning): measured once
        key = tuning.layer_key(
            spec, site.input_shape, site.residual_shape, dtype, site.channels_last
        )
        results = tuning.lookup(key, factories, device)
        if results is None:
            modules = {label: f().to(device) for label, f in factories.items()}
            x, res = _tuning_inputs(site, device, dtype)
            calls = {
                label: (lambda m=m: m(x, res) if res is not None else m(x))
                for label, m in modules.items()
            }
            for m in modules.values():  # outputs reused between calls, as in the converted model
                m.arena_slot = (_arena.Arena(1), 0)
            results = tuning.time_candidates(calls, device)
            if device.type == "cpu":
                allocating = [label for label, m in modules.items() if not m.output_in_arena]
                out_bytes = output_numel(spec, site.input_shape) * x.element_size()
                tuning.charge_allocation(results, allocating, out_bytes)
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
