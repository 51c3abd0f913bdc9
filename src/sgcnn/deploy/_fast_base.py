"""What every fast module shares (see :mod:`sgcnn.deploy.fast`): the :class:`LayerSpec` of a
layer to realize, the helpers that build it from a (masked) layer and count its work, and
:class:`_Fast`, the base class of the realizations."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sgcnn.deploy import _native
from sgcnn.errors import SgcnnError
from sgcnn.nn.masked import is_masked


@dataclass
class LayerSpec:
    """A layer to realize: ``y = act(op(x, weight) + bias [+ residual])``.

    ``weight`` is the masked weight (BatchNorm folded in), ``[N, C / conv_groups, kh, kw]`` for
    a convolution and ``[N, C]`` for a linear layer; ``groups`` lists, per self-group, the
    filters and the absolute input channels that group uses (its exact support). ``kind`` is
    ``"conv"`` or ``"fc"`` (a linear layer, named as in the grouping report and the paper's
    ``Conv-X/FC-Y``); the older spelling ``"linear"`` is accepted and stored as ``"fc"``.
    """

    kind: str  # "conv" or "fc"
    weight: torch.Tensor
    bias: torch.Tensor
    groups: list[tuple[torch.Tensor, torch.Tensor]]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    conv_groups: int = 1
    relu: bool = False
    kept_kernels: int = -1  # unmasked (filter, input channel) kernels; -1: all of them

    def __post_init__(self) -> None:
        if self.kind == "linear":
            self.kind = "fc"
        if self.kept_kernels < 0:
            self.kept_kernels = self.weight.shape[0] * self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1] * self.conv_groups

    @property
    def taps(self) -> int:
        return math.prod(self.weight.shape[2:])


def group_supports(
    mask: torch.Tensor, labels: torch.Tensor, conv_groups: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(filters, channels), ...]``: each self-group's filters and the absolute input channels
    any of them keeps. Groups with the same channel set are merged (exact, and fewer gathers);
    a group spanning several convolution groups is split along them."""
    n, c = mask.shape
    per_conv_group = n // conv_groups
    by_support: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for j in torch.unique(labels).tolist():
        filters = (labels == j).nonzero().flatten()
        for cg in torch.unique(filters // per_conv_group).tolist():
            part = filters[filters // per_conv_group == cg]
            channels = mask[part].any(0).nonzero().flatten() + cg * c
            by_support.setdefault(tuple(channels.tolist()), []).append(part)
    groups = []
    for channels, parts in by_support.items():
        filters = torch.cat(parts).sort().values
        groups.append((filters, torch.tensor(channels, dtype=torch.long)))
    groups.sort(key=lambda g: int(g[0][0]))
    return groups


def _fold_bn(weight, bias, bn: nn.modules.batchnorm._BatchNorm | None):
    """``W' = W * gamma / sqrt(var + eps)``, ``b' = (b - mean) * gamma / sqrt(var + eps) + beta``
    (BatchNorm in eval mode, folded into the preceding layer)."""
    if bn is None:
        return weight, bias
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    view = (-1,) + (1,) * (weight.dim() - 1)
    new_weight = (weight.double() * scale.view(view)).to(weight.dtype)
    new_bias = (bias.double() * scale + shift).to(weight.dtype)
    return new_weight, new_bias


def explicit_padding(layer: nn.Conv2d) -> tuple[int, int] | None:
    """The layer's zero padding per side as ``(ph, pw)``; ``padding="valid"`` is 0 and
    ``padding="same"`` is ``dilation * (kernel - 1) / 2`` where that is whole (None where
    PyTorch pads one side more, e.g. an even kernel)."""
    if not isinstance(layer.padding, str):
        return tuple(layer.padding)
    if layer.padding == "valid":
        return (0, 0)
    total = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
    return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)


@torch.no_grad()
def spec_from_layer(layer: nn.Module, bn: nn.Module | None = None, relu: bool = False) -> LayerSpec:
    """The :class:`LayerSpec` of a (masked or plain) Conv2d / Linear, with ``bn`` folded in."""
    weight = layer.masked_weight() if is_masked(layer) else layer.weight
    weight = weight.detach().clone()
    n = weight.shape[0]
    bias = layer.bias.detach().clone() if layer.bias is not None else weight.new_zeros(n)
    weight, bias = _fold_bn(weight, bias, bn)
    conv_groups = getattr(layer, "groups", 1)
    kept = int(layer.sg_mask.sum()) if is_masked(layer) else -1
    if is_masked(layer):
        groups = group_supports(layer.sg_mask.cpu(), layer.sg_labels.cpu(), conv_groups)
    else:
        per = n // conv_groups
        cg = weight.shape[1]
        groups = [
            (torch.arange(i * per, (i + 1) * per), torch.arange(i * cg, (i + 1) * cg))
            for i in range(conv_groups)
        ]
    if isinstance(layer, nn.Conv2d):
        padding = explicit_padding(layer)
        if layer.padding_mode != "zeros" or padding is None:
            raise ValueError("only zero padding, the same on both sides, is supported")
        return LayerSpec(
            "conv",
            weight,
            bias,
            groups,
            tuple(layer.stride),
            padding,
            tuple(layer.dilation),
            conv_groups,
            relu,
            kept,
        )
    return LayerSpec("fc", weight, bias, groups, relu=relu, kept_kernels=kept)


def _epilogue(y: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    if residual is not None:
        y = y.add_(residual)
    return y.relu_() if relu else y


def _positions(spec: LayerSpec, shape) -> int:
    """Output positions per call (batch x spatial) for an input of ``shape``."""
    if spec.kind == "fc":
        return math.prod(shape[:-1])
    if len(shape) != 4:
        raise SgcnnError(
            f"a convolution's input shape is [batch, channels, height, width], got "
            f"{list(shape)}; give the shape with its batch dimension"
        )
    b, _, h, w = shape
    kh, kw = spec.weight.shape[2:]
    ho = _native.output_size(h, kh, spec.stride[0], spec.padding[0], spec.dilation[0])
    wo = _native.output_size(w, kw, spec.stride[1], spec.padding[1], spec.dilation[1])
    return b * ho * wo


def output_numel(spec: LayerSpec, shape) -> int:
    """Elements of the layer's output for an input of ``shape``."""
    return _positions(spec, shape) * spec.out_features


def useful_macs(spec: LayerSpec, shape) -> int:
    """MACs of the nonzero weights (what ``sgcnn.count`` counts) for an input of ``shape``."""
    return spec.kept_kernels * spec.taps * _positions(spec, shape)


class _Fast(nn.Module):
    """Shared parts: the spec's geometry and the fused epilogue flag."""

    realization = "?"
    # forward writes its output into the arena slot convert plans (no allocation per call)
    output_in_arena = False

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.kind = spec.kind
        self.stride, self.padding, self.dilation = spec.stride, spec.padding, spec.dilation
        self.conv_groups = spec.conv_groups
        self.relu = spec.relu
        self.out_features = spec.out_features
        self.in_features = spec.in_features
        self.kernel_size = tuple(spec.weight.shape[2:]) if spec.kind == "conv" else ()
        self._groups = [(f.clone(), c.clone()) for f, c in spec.groups]
        self._kept = spec.kept_kernels
        self._weight_shape = tuple(spec.weight.shape)

    def __prepare_scriptable__(self):
        """``torch.jit.script`` calls this on every module before compiling: a fast module's
        forward (call plans, arena, kernels reached from Python) is not TorchScript, so say
        what records it instead of failing inside the compiler."""
        raise SgcnnError(
            f"torch.jit.script cannot compile sgcnn's converted layers ({type(self).__name__}); "
            "use torch.jit.trace(model, x) or torch.export.export(model, (x,)), or write the "
            'model with sgcnn.export(model, path, x, format="pt2" or "onnx")'
        )

    def spec(self) -> LayerSpec:
        """The layer back, with its masked weight rebuilt from what this module computes
        with (no copy of the dense weight is kept)."""
        groups = [(f.clone(), c.clone()) for f, c in self._groups]
        return LayerSpec(
            self.kind, self._dense_weight(), self.bias.detach().clone().cpu(), groups,
            self.stride, self.padding, self.dilation, self.conv_groups, self.relu, self._kept,
        )  # fmt: skip

    def _dense_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        """Refuse an input this layer was not built for: a native kernel would read past the
        input's memory, a gather would silently drop or miss channels."""
        if isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing():
            return  # symbolic: no shapes (the native operators check the traced program's)
        if self.kind == "conv":
            if x.dim() == 4 and x.shape[1] == self.in_features:
                return
            want = f"[batch, {self.in_features}, height, width]"
        else:
            if x.dim() >= 1 and x.shape[-1] == self.in_features:
                return
            want = f"[..., {self.in_features}]"
        raise SgcnnError(
            f"{type(self).__name__} ({self.extra_repr()}) expects an input of shape {want}, "
            f"got {list(x.shape)}; run the converted model on inputs shaped like the example "
            "it was converted with (another batch size or image size is fine)"
        )

    def _set_blocks(self, spec, in_index, out_index, weight, g: int, k: int, n_max: int) -> None:
        """Store a padded-groups realization: ``g`` blocks of ``k`` gathered inputs and
        ``n_max`` outputs, the gather ``in_index`` [g k], the output order ``out_index`` [N],
        the packed ``weight`` and the bias."""
        self.blocks, self.block_in, self.block_out = g, k, n_max
        self.register_buffer("in_index", in_index)
        self.register_buffer("out_index", out_index)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone(), requires_grad=False)

    @classmethod
    def from_spec(cls, spec: LayerSpec):
        """The realization of ``spec`` (subclasses with options take them as keywords)."""
        return cls(spec)

    @classmethod
    def from_masked(
        cls, layer: nn.Module, bn: nn.Module | None = None, relu: bool = False, **options
    ):
        """Realize ``layer`` (a masked or plain Conv2d / Linear), folding ``bn`` and ``relu``;
        ``options`` go to :meth:`from_spec` (``mode`` of the dense form, ``block`` of the
        native one)."""
        return cls.from_spec(spec_from_layer(layer, bn, relu), **options)

    def macs(self, shape) -> tuple[int, int]:
        """``(executed, padding)`` multiply-accumulates for one call on an input of ``shape``."""
        spec = self.spec()
        executed = self._executed_per_position() * _positions(spec, shape)
        return executed, executed - useful_macs(spec, shape)

    def extra_repr(self) -> str:
        k = "x".join(map(str, self.kernel_size)) if self.kernel_size else "fc"
        return (
            f"{self.in_features}->{self.out_features}, {k}, stride={self.stride}, relu={self.relu}"
        )


def _balanced_split(filters: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Split ``filters`` into ``ceil(len / size)`` nearly equal parts."""
    parts = max(1, math.ceil(len(filters) / size))
    return [p for p in torch.tensor_split(filters, parts) if len(p)]


def _arena_slot(module: nn.Module, like: torch.Tensor) -> tuple | None:
    """The module's ``(arena, slot)`` (see :mod:`sgcnn.deploy._arena`), if convert planned one
    and autograd does not record the call (an ``out=`` tensor cannot be differentiated)."""
    slot = module.__dict__.get("arena_slot")
    if slot is None or (like.requires_grad and torch.is_grad_enabled()):
        return None
    return slot


def _taker(module: nn.Module, like: torch.Tensor):
    """``take(numel)`` from the module's arena slot (:func:`_arena_slot`): a buffer of
    ``like``'s dtype on ``like``'s device; None without a slot."""
    slot = _arena_slot(module, like)
    if slot is None:
        return None
    arena, index = slot
    return lambda numel: arena.take(index, numel, like.dtype, like.device)


def _arena_buffer(module: nn.Module, like: torch.Tensor, numel: int) -> torch.Tensor | None:
    """The module's whole arena buffer of at least ``numel`` elements (the same tensor call
    after call), or None without a slot (:func:`_arena_slot`)."""
    slot = _arena_slot(module, like)
    return None if slot is None else slot[0].buffer(slot[1], numel, like.dtype, like.device)
