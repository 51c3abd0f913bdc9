"""Fast, exact realizations of a self-grouped (diverse group) convolution or linear layer.

A self-grouped layer computes with ``W * M`` where the mask is constant over the filters of a
group except where progressive steps shrank single filters further. Let group ``j`` hold the
filters ``F_j`` and let ``S_j`` be the union of their kept input channels. Because masked
weights are zero, restricting group ``j`` to ``S_j`` is exact::

    y[:, F_j] = conv(x[:, S_j], (W * M)[F_j][:, S_j]) + bias[F_j]

Every realization below computes exactly this (up to fp32 summation order), from one
:class:`LayerSpec`, and can fuse what follows the layer: a BatchNorm in eval mode folded into
``W`` and ``bias``, a residual addition and a ReLU (``y = relu(conv(x) + bias + residual)``):

- :class:`DenseConv2d` / :class:`DenseLinear`: the dense fallback, one convolution with the
  masked weight (``mode`` picks NCHW, channels-last, or a batched matrix product for 1x1).
- :class:`GroupedConv2d` / :class:`GroupedLinear`: gather each group's channels, pad groups with
  zero weights to equal size (large groups are split so that the padding stays small), and run
  one grouped convolution (one batched matrix product for linear layers), then gather the
  outputs back into filter order. Standard operators only, so it exports to ONNX.
- :class:`GroupLoopConv2d` / :class:`GroupLoopLinear`: one convolution per group on its
  gathered channels, outputs concatenated and put back into filter order.
- :class:`NativeGroupConv2d`: the gather-free native kernel (:mod:`sgcnn.deploy._native`).

Each class has ``from_masked(layer, bn=None, relu=False)`` and ``from_spec(spec)``;
``macs(input_shape)`` returns the multiply-accumulates it really executes and how many of them
are padding (zeros computed to keep shapes regular). ``spec()`` gives the layer back, so any
realization can be rebuilt from any other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from sgcnn.deploy import _native
from sgcnn.errors import SgcnnError
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear, is_masked


@dataclass
class LayerSpec:
    """A layer to realize: ``y = act(op(x, weight) + bias [+ residual])``.

    ``weight`` is the masked weight (BatchNorm folded in), ``[N, C / conv_groups, kh, kw]`` for
    a convolution and ``[N, C]`` for a linear layer; ``groups`` lists, per self-group, the
    filters and the absolute input channels that group uses (its exact support).
    """

    kind: str  # "conv" or "linear"
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
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("only zero padding with explicit sizes is supported")
        return LayerSpec(
            "conv",
            weight,
            bias,
            groups,
            tuple(layer.stride),
            tuple(layer.padding),
            tuple(layer.dilation),
            conv_groups,
            relu,
            kept,
        )
    return LayerSpec("linear", weight, bias, groups, relu=relu, kept_kernels=kept)


def _epilogue(y: torch.Tensor, residual: torch.Tensor | None, relu: bool) -> torch.Tensor:
    if residual is not None:
        y = y.add_(residual)
    return y.relu_() if relu else y


def _positions(spec: LayerSpec, shape) -> int:
    """Output positions per call (batch x spatial) for an input of ``shape``."""
    if spec.kind == "linear":
        return math.prod(shape[:-1])
    b, _, h, w = shape
    kh, kw = spec.weight.shape[2:]
    ho = _native.output_size(h, kh, spec.stride[0], spec.padding[0], spec.dilation[0])
    wo = _native.output_size(w, kw, spec.stride[1], spec.padding[1], spec.dilation[1])
    return b * ho * wo


def useful_macs(spec: LayerSpec, shape) -> int:
    """MACs of the nonzero weights (what ``sgcnn.count`` counts) for an input of ``shape``."""
    return spec.kept_kernels * spec.taps * _positions(spec, shape)


class _Fast(nn.Module):
    """Shared parts: the spec's geometry and the fused epilogue flag."""

    realization = "?"

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
        k = "x".join(map(str, self.kernel_size)) if self.kernel_size else "linear"
        return (
            f"{self.in_features}->{self.out_features}, {k}, stride={self.stride}, relu={self.relu}"
        )


# ----------------------------------------------------------------------------- dense


class DenseConv2d(_Fast):
    """The dense fallback: ``conv(x, W * M) + bias``.

    ``mode``: ``"nchw"`` (F.conv2d as the input comes), ``"nhwc"`` (run the convolution in
    channels-last memory and return a contiguous result) or ``"matmul"`` (1x1 convolutions:
    one batched matrix product ``W[N, C] @ x[b, C, HW]``, bias fused).
    """

    realization = "dense"
    modes = ("nchw", "nhwc", "matmul")

    def __init__(self, spec: LayerSpec, mode: str = "nchw") -> None:
        super().__init__(spec)
        if mode == "matmul" and (spec.taps != 1 or spec.conv_groups != 1 or spec.padding != (0, 0)):
            raise ValueError("matmul mode needs a 1x1 convolution without padding or groups")
        self.mode = mode
        self.weight = nn.Parameter(spec.weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone(), requires_grad=False)

    @classmethod
    def from_spec(cls, spec: LayerSpec, mode: str = "nchw") -> DenseConv2d:
        return cls(spec, mode)

    def _executed_per_position(self) -> int:
        return self.weight[0].numel() * self.out_features

    def _dense_weight(self) -> torch.Tensor:
        return self.weight.detach().clone()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "matmul":
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            b, c, h, w = x.shape
            w2 = self.weight.view(self.out_features, c)
            take = _taker(self, x.dtype) if _plain(x) else None
            out = take(b * self.out_features * h * w) if take is not None else None
            y = torch.baddbmm(
                self.bias.view(1, -1, 1).expand(b, -1, h * w),
                w2.expand(b, -1, -1),
                x.reshape(b, c, h * w),
                out=out.view(b, self.out_features, h * w) if out is not None else None,
            ).view(b, self.out_features, h, w)
        elif self.mode == "nhwc":
            xc = x.contiguous(memory_format=torch.channels_last)
            wc = self.weight.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(
                xc, wc, self.bias, self.stride, self.padding, self.dilation, self.conv_groups
            ).contiguous()
        else:
            y = F.conv2d(
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.conv_groups,
            )
        return _epilogue(y, residual, self.relu)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"


class DenseLinear(_Fast):
    """The dense fallback for a linear layer: ``x @ (W * M)^T + bias``."""

    realization = "dense"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec)
        self.weight = nn.Parameter(spec.weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone(), requires_grad=False)

    def _executed_per_position(self) -> int:
        return self.weight.numel()

    def _dense_weight(self) -> torch.Tensor:
        return self.weight.detach().clone()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return _epilogue(F.linear(x, self.weight, self.bias), residual, self.relu)


# ------------------------------------------------------------------- padded grouped


def _balanced_split(filters: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Split ``filters`` into ``ceil(len / size)`` nearly equal parts."""
    parts = max(1, math.ceil(len(filters) / size))
    return [p for p in torch.tensor_split(filters, parts) if len(p)]


def _equalize(spec: LayerSpec) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, int]:
    """Split large groups so that padding every group to the largest costs least.

    Cost model (multiply-accumulates per output position, plus a gather charge of 4 per
    gathered channel): ``G' * K_max * (taps * N_max + 4)`` over the split size ``N_max``.
    """
    k_max = max(1, max(len(ch) for _, ch in spec.groups))
    best = None
    for size in sorted({len(f) for f, _ in spec.groups} | {1, 2, 4, 8, 16, 32}):
        parts = [(p, ch) for f, ch in spec.groups for p in _balanced_split(f, size)]
        n_max = max(len(p) for p, _ in parts)
        cost = len(parts) * k_max * (spec.taps * n_max + 4)
        if best is None or cost < best[0]:
            best = (cost, parts, n_max)
    return best[1], k_max, best[2]


class GroupedConv2d(_Fast):
    """Gather + zero-pad groups to equal size + one grouped convolution + output gather.

    ``xg = x[:, in_index]`` holds ``G`` blocks of ``K`` channels (short groups padded by
    repeating channel 0 under zero weights); ``conv(xg, Wp, groups=G)`` gives ``G`` blocks of
    ``Nmax`` outputs; ``y = yg[:, out_index] + bias``.
    """

    realization = "grouped"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec)
        parts, k, n_max = _equalize(spec)
        g = len(parts)
        w = spec.weight
        cg = w.shape[1]
        in_index = torch.zeros(g * k, dtype=torch.long)
        weight = w.new_zeros(g * n_max, k, *w.shape[2:])
        out_index = torch.empty(spec.out_features, dtype=torch.long)
        for i, (filters, channels) in enumerate(parts):
            in_index[i * k : i * k + len(channels)] = channels
            local = channels % cg
            weight[i * n_max : i * n_max + len(filters), : len(channels)] = w[filters][:, local]
            out_index[filters] = torch.arange(i * n_max, i * n_max + len(filters))
        self._set_blocks(spec, in_index, out_index, weight, g, k, n_max)

    def _executed_per_position(self) -> int:
        return self.weight.numel()

    def _dense_weight(self) -> torch.Tensor:
        # filter f sits in row out_index[f] of block out_index[f] // n_max; padded inputs
        # (channel 0 under zero weights) add exact zeros
        rows = self.out_index.cpu()
        chans = self.in_index.cpu().view(self.blocks, self.block_in)[rows // self.block_out]
        chans = chans % self._weight_shape[1]
        filters = torch.arange(len(rows))[:, None].expand_as(chans)
        w = self.weight.detach().cpu()
        dense = w.new_zeros(self._weight_shape)
        return dense.index_put_((filters, chans), w[rows], accumulate=True)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        xg = x.index_select(1, self.in_index)
        yg = F.conv2d(xg, self.weight, None, self.stride, self.padding, self.dilation, self.blocks)
        y = yg.index_select(1, self.out_index).add_(self.bias.view(1, -1, 1, 1))
        return _epilogue(y, residual, self.relu)


class GroupedLinear(_Fast):
    """Gather + pad to equal groups + one batched matrix product (``torch.bmm``) + gather."""

    realization = "grouped"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec)
        parts, k, n_max = _equalize(spec)
        g = len(parts)
        in_index = torch.zeros(g * k, dtype=torch.long)
        weight = spec.weight.new_zeros(g, k, n_max)
        out_index = torch.empty(spec.out_features, dtype=torch.long)
        for i, (filters, channels) in enumerate(parts):
            in_index[i * k : i * k + len(channels)] = channels
            weight[i, : len(channels), : len(filters)] = spec.weight[filters][:, channels].t()
            out_index[filters] = torch.arange(i * n_max, i * n_max + len(filters))
        self._set_blocks(spec, in_index, out_index, weight, g, k, n_max)

    def _executed_per_position(self) -> int:
        return self.weight.numel()

    def _dense_weight(self) -> torch.Tensor:
        rows = self.out_index.cpu()
        blocks = rows // self.block_out
        chans = self.in_index.cpu().view(self.blocks, self.block_in)[blocks]
        filters = torch.arange(len(rows))[:, None].expand_as(chans)
        w = self.weight.detach().cpu()[blocks, :, rows % self.block_out]  # [N, K]
        dense = w.new_zeros(self._weight_shape)
        return dense.index_put_((filters, chans), w, accumulate=True)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, x.shape[-1]).index_select(1, self.in_index)
        rows = rows.view(-1, self.blocks, self.block_in).transpose(0, 1)  # [G, M, K]
        yg = torch.bmm(rows, self.weight).transpose(0, 1).reshape(rows.shape[1], -1)
        y = yg.index_select(1, self.out_index).add_(self.bias)
        return _epilogue(y.view(*lead, -1), residual, self.relu)


# ----------------------------------------------------------------------- group loop


class _GroupLoop(_Fast):
    """Shared by the per-group realizations: group ``j``'s weight ``W_j = W[F_j][:, S_j]``, its
    gather index ``S_j`` and the inverse permutation putting outputs back in filter order."""

    realization = "loop"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec)
        cg = spec.weight.shape[1]
        self.weights = nn.ParameterList()
        order = []
        for i, (filters, channels) in enumerate(spec.groups):
            w = spec.weight[filters][:, channels % cg].clone()
            if len(channels) == 0:  # a group that kept nothing: one zero-weight input
                channels = torch.zeros(1, dtype=torch.long)
                w = spec.weight.new_zeros(len(filters), 1, *spec.weight.shape[2:])
            self.register_buffer(f"in_index_{i}", channels.clone())
            self.weights.append(nn.Parameter(w, requires_grad=False))
            order.append(filters)
        self.register_buffer("out_index", torch.argsort(torch.cat(order)))
        self.bias = nn.Parameter(spec.bias.clone(), requires_grad=False)

    def _executed_per_position(self) -> int:
        return sum(w.numel() for w in self.weights)

    def _dense_weight(self) -> torch.Tensor:
        dense = self.weights[0].new_zeros(self._weight_shape).cpu()
        cg = self._weight_shape[1]
        for (filters, channels), w in zip(self._groups, self.weights, strict=True):
            if len(channels):
                dense[filters[:, None], channels % cg] = w.detach().cpu()
        return dense


class GroupLoopConv2d(_GroupLoop):
    """One convolution per group on its gathered channels; outputs concatenated, then put
    back into filter order: ``y = cat_j conv(x[:, S_j], W_j)[:, inverse] + bias``."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        outs = []
        for i, w in enumerate(self.weights):
            xi = x.index_select(1, getattr(self, f"in_index_{i}"))
            outs.append(F.conv2d(xi, w, None, self.stride, self.padding, self.dilation))
        y = torch.cat(outs, 1).index_select(1, self.out_index).add_(self.bias.view(1, -1, 1, 1))
        return _epilogue(y, residual, self.relu)


class GroupLoopLinear(_GroupLoop):
    """One matrix product per group on its gathered inputs, outputs put back in order."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        outs = [
            F.linear(x.index_select(-1, getattr(self, f"in_index_{i}")), w)
            for i, w in enumerate(self.weights)
        ]
        y = torch.cat(outs, -1).index_select(-1, self.out_index).add_(self.bias)
        return _epilogue(y, residual, self.relu)


# --------------------------------------------------------------------------- native


class NativeGroupConv2d(_Fast):
    """The gather-free native kernel (:mod:`sgcnn.deploy._native`), fp32 NCHW on CPU.

    Each group's filters are cut into chunks of at most ``rows`` (balanced sizes); a chunk's
    packed weights are ``[entries, filters]`` with entries the group's (channel, ky, kx)
    triples, so one weight broadcast per filter meets a vector of output positions. ``block``
    is the number of 16-position runs per work item and ``rows`` the most filters per chunk
    (taller chunks reuse each loaded input vector more; both tuned per layer).
    """

    realization = "native"
    # (block, rows) pairs convert measures. Taller chunks (rows up to 16) gained at most ~10%
    # on a few ResNet-50 layers: not worth the extra tuning time by default.
    settings_to_try = ((4, 6), (8, 6), (12, 6))

    def __init__(self, spec: LayerSpec, block: int = 8, rows: int = 6) -> None:
        super().__init__(spec)
        if not 1 <= rows <= _native.RMAX:
            raise ValueError(f"rows must be in 1..{_native.RMAX}")
        if spec.kind != "conv":
            raise ValueError("the native kernel realizes convolutions only")
        if spec.weight.dtype != torch.float32:
            raise ValueError("the native kernel computes in float32 only")
        if not 1 <= block <= 12:
            raise ValueError("block must be in 1..12")
        lanes = _native.lanes() if _native.available() else 16
        w = spec.weight
        cg = w.shape[1]
        kh, kw = w.shape[2:]
        taps = torch.cartesian_prod(torch.arange(kh), torch.arange(kw)).reshape(-1, 2)
        entries, packed, chunks, rowmap = [], [], [], []
        n_entries = n_weights = 0
        for filters, channels in spec.groups:
            ent = torch.cat(
                [channels.repeat_interleave(len(taps))[:, None], taps.repeat(len(channels), 1)],
                1,
            )
            entries.append(ent)
            wg = w[filters][:, channels % cg].reshape(len(filters), -1)  # [n_j, K_j * taps]
            for part in _balanced_split(torch.arange(len(filters)), rows):
                block_w = wg[part].t().contiguous()  # [entries, rows]
                chunks.append([len(ent), n_entries, n_weights, len(part), len(rowmap)])
                packed.append(block_w.flatten())
                rowmap.extend(filters[part].tolist())
                n_weights += block_w.numel()
            n_entries += len(ent)
        self.register_buffer("entries", torch.cat(entries).to(torch.int32).contiguous())
        self.register_buffer("chunks", torch.tensor(chunks, dtype=torch.long))
        self.register_buffer("rowmap", torch.tensor(rowmap, dtype=torch.long))
        self.weights = nn.Parameter(torch.cat(packed).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone().contiguous(), requires_grad=False)
        self.block = block
        self.rows = rows
        self._vectors = block * 16 // lanes  # the kernel's block: vectors of `lanes` floats
        # Set by convert's memory planning (both exact, see NativeGroupConv2d.forward):
        self.out_pad = (0, 0)  # write a zero border of this size around each output plane
        self.input_padded = False  # x already carries this layer's zero padding
        self.accumulate = False  # add into the residual tensor in place

    @classmethod
    def from_spec(cls, spec: LayerSpec, block: int = 8, rows: int = 6) -> NativeGroupConv2d:
        return cls(spec, block, rows)

    @staticmethod
    def supports(spec: LayerSpec, device: torch.device | str = "cpu") -> bool:
        """Whether this realization can run ``spec`` on ``device``."""
        return (
            spec.kind == "conv"
            and torch.device(device).type == "cpu"
            and spec.weight.dtype == torch.float32
            and _native.available()
        )

    def _executed_per_position(self) -> int:
        return int((self.chunks[:, 0] * self.chunks[:, 3]).sum())

    def _dense_weight(self) -> torch.Tensor:
        dense = self.weights.new_zeros(self._weight_shape).cpu()
        cg = self._weight_shape[1]
        entries, weights = self.entries.long().cpu(), self.weights.detach().cpu()
        for ne, e0, w0, rows, r0 in self.chunks.tolist():
            ent = entries[e0 : e0 + ne]
            filters = self.rowmap[r0 : r0 + rows].cpu()
            w = weights[w0 : w0 + ne * rows].view(ne, rows).t()  # [rows, entries]
            dense[filters[:, None], ent[:, 0] % cg, ent[:, 1], ent[:, 2]] = w
        return dense

    def geometry(self) -> _native.Geometry:
        """What the kernel needs to know besides the tensors (see :class:`_native.Geometry`)."""
        return _native.Geometry(
            filters=self.out_features,
            kernel=self.kernel_size,
            stride=self.stride,
            padding=(0, 0) if self.input_padded else self.padding,
            dilation=self.dilation,
            block=self._vectors,
            border=self.out_pad,
            input_padded=self.input_padded,
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu?(conv(x) + bias + residual?)``.

        With ``input_padded``, ``x`` is the previous layer's output written with a zero border
        of this layer's padding, so the convolution runs unpadded on it; with ``out_pad`` the
        output carries such a border for the next layer; with ``accumulate`` the result is
        written into ``residual`` (which convert only allows where nothing reads it later).
        """
        _refuse_onnx_export(self)
        geo = self.geometry()
        args = (self.entries, self.weights, self.chunks, self.rowmap, self.bias)
        # Plain tensors: call the kernel directly; anything else (fake or functional tensors
        # of torch.export, torch.jit.trace, a dispatch mode such as FlopCounterMode) goes
        # through the registered operators, which tracers record.
        eager = _plain(x, residual)
        if self.accumulate and residual is not None:
            if eager:
                _native.accumulate_(residual, x, *args, geo, self.relu)
            else:
                op = torch.ops.sgcnn.dg_conv2d_accumulate_
                op(residual, x, *args, *_native.op_args(geo), self.relu)
            return residual
        if eager:
            return _native.conv2d(x, *args, residual, geo, self.relu, _taker(self, x.dtype))
        return torch.ops.sgcnn.dg_conv2d(x, *args, residual, *_native.op_args(geo), self.relu)

    def extra_repr(self) -> str:
        extra = []
        if self.out_pad != (0, 0):
            extra.append(f"out_pad={self.out_pad}")
        if self.input_padded:
            extra.append("input_padded=True")
        if self.accumulate:
            extra.append("accumulate=True")
        return ", ".join(
            [
                super().extra_repr(),
                f"groups={len(self._groups)}",
                f"block={self.block}",
                *extra,
            ]
        )


def _plain(*tensors) -> bool:
    """Plain eager tensors, no dispatch mode, no tracer: the native kernels may be called
    directly (``torch.jit.trace`` would not see a direct call)."""
    return (
        all(t is None or type(t) is torch.Tensor for t in tensors)
        and _get_current_dispatch_mode() is None
        and not torch.jit.is_tracing()
    )


def _taker(module: nn.Module, dtype: torch.dtype):
    """``take(numel)`` from the module's arena slot (see :mod:`sgcnn.deploy._arena`), if
    convert planned one."""
    slot = getattr(module, "arena_slot", None)
    if slot is None:
        return None
    arena, index = slot
    return lambda numel: arena.take(index, numel, dtype)


def _refuse_onnx_export(module: nn.Module) -> None:
    """The native kernels have no ONNX form: say what to do instead of failing deep inside
    the exporter."""
    if torch.onnx.is_in_onnx_export():
        raise SgcnnError(
            f"{type(module).__name__} runs sgcnn's native kernel, which ONNX cannot express; "
            "export with sgcnn.export.export_onnx(model, path, x) (or `sgcnn export --format "
            "onnx`), which realizes every layer with standard operators"
        )


class MaxPool2d(nn.Module):
    """``F.max_pool2d`` (dilation 1, no indices) computed by the native kernel for float32
    NCHW tensors on the CPU: one pass over memory, where PyTorch's NCHW kernel is about 8x
    slower (its channels-last one is not). Exact, NaN included; other inputs fall back to
    ``F.max_pool2d``."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False) -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.kernel_size = pair(kernel_size)
        self.stride = pair(stride if stride not in (None, [], ()) else kernel_size)
        self.padding = pair(padding)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (list(self.kernel_size), list(self.stride), list(self.padding), self.ceil_mode)
        native = x.dim() == 4 and x.dtype == torch.float32 and x.device.type == "cpu"
        if native and _native.available() and not torch.onnx.is_in_onnx_export():
            if _plain(x):
                return _native.max_pool2d(x, *args, _taker(self, x.dtype))
            return torch.ops.sgcnn.max_pool2d(x, *args)
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, ceil_mode={self.ceil_mode}"
        )


CONV_REALIZATIONS = {
    "dense": DenseConv2d,
    "grouped": GroupedConv2d,
    "loop": GroupLoopConv2d,
    "native": NativeGroupConv2d,
}
LINEAR_REALIZATIONS = {"dense": DenseLinear, "grouped": GroupedLinear, "loop": GroupLoopLinear}
FAST_TYPES = (
    DenseConv2d,
    DenseLinear,
    GroupedConv2d,
    GroupedLinear,
    GroupLoopConv2d,
    GroupLoopLinear,
    NativeGroupConv2d,
)


def is_fast(module: nn.Module) -> bool:
    return isinstance(module, FAST_TYPES)


def is_supported_layer(module: nn.Module) -> bool:
    """Conv2d / Linear layers a fast module can realize (masked or plain)."""
    if isinstance(module, (MaskedConv2d, nn.Conv2d)):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    return isinstance(module, (MaskedLinear, nn.Linear))
