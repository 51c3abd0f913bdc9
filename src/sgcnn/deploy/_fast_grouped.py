"""The gathering realizations (see :mod:`sgcnn.deploy.fast`): groups padded to equal size and
run as one grouped convolution / batched matrix product, or one product per group."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sgcnn.deploy._fast_base import LayerSpec, _balanced_split, _epilogue, _Fast

# ------------------------------------------------------------------- padded grouped


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


class _PaddedGroups(_Fast):
    """Shared by the padded-group realizations: the groups split and padded to ``G`` blocks of
    ``K`` gathered inputs and ``Nmax`` outputs (:func:`_equalize`), the gather ``in_index``
    [G K] and the output order ``out_index`` [N]: filter ``f`` is row ``out_index[f] % Nmax``
    of block ``out_index[f] // Nmax``. Subclasses lay out the packed weight."""

    realization = "grouped"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec)
        parts, k, n_max = _equalize(spec)
        g = len(parts)
        cg = spec.weight.shape[1]
        in_index = torch.zeros(g * k, dtype=torch.long)
        weight = self._new_weight(spec.weight, g, k, n_max)
        out_index = torch.empty(spec.out_features, dtype=torch.long)
        for i, (filters, channels) in enumerate(parts):
            in_index[i * k : i * k + len(channels)] = channels
            self._pack(weight, i, n_max, spec.weight[filters][:, channels % cg])
            out_index[filters] = torch.arange(i * n_max, i * n_max + len(filters))
        self._set_blocks(spec, in_index, out_index, weight, g, k, n_max)

    def _executed_per_position(self) -> int:
        return self.weight.numel()

    def _dense_weight(self) -> torch.Tensor:
        # padded inputs (channel 0 under zero weights) add exact zeros
        rows = self.out_index.cpu()
        chans = self.in_index.cpu().view(self.blocks, self.block_in)[rows // self.block_out]
        chans = chans % self._weight_shape[1]
        filters = torch.arange(len(rows))[:, None].expand_as(chans)
        w = self._filter_rows(self.weight.detach().cpu(), rows)  # [N, K, ...]
        dense = w.new_zeros(self._weight_shape)
        return dense.index_put_((filters, chans), w, accumulate=True)


class GroupedConv2d(_PaddedGroups):
    """Gather + zero-pad groups to equal size + one grouped convolution + output gather.

    ``xg = x[:, in_index]`` holds ``G`` blocks of ``K`` channels (short groups padded by
    repeating channel 0 under zero weights); ``conv(xg, Wp, groups=G)`` gives ``G`` blocks of
    ``Nmax`` outputs; ``y = yg[:, out_index] + bias``.
    """

    @staticmethod
    def _new_weight(w: torch.Tensor, g: int, k: int, n_max: int) -> torch.Tensor:
        return w.new_zeros(g * n_max, k, *w.shape[2:])

    @staticmethod
    def _pack(weight: torch.Tensor, i: int, n_max: int, w: torch.Tensor) -> None:
        weight[i * n_max : i * n_max + w.shape[0], : w.shape[1]] = w

    def _filter_rows(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return weight[rows]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        xg = x.index_select(1, self.in_index)
        yg = F.conv2d(xg, self.weight, None, self.stride, self.padding, self.dilation, self.blocks)
        y = yg.index_select(1, self.out_index).add_(self.bias.view(1, -1, 1, 1))
        return _epilogue(y, residual, self.relu)


class GroupedLinear(_PaddedGroups):
    """Gather + pad to equal groups + one batched matrix product (``torch.bmm``) + gather."""

    @staticmethod
    def _new_weight(w: torch.Tensor, g: int, k: int, n_max: int) -> torch.Tensor:
        return w.new_zeros(g, k, n_max)

    @staticmethod
    def _pack(weight: torch.Tensor, i: int, n_max: int, w: torch.Tensor) -> None:
        weight[i, : w.shape[1], : w.shape[0]] = w.t()

    def _filter_rows(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return weight[rows // self.block_out, :, rows % self.block_out]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
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
        self._check_input(x)
        outs = []
        for i, w in enumerate(self.weights):
            xi = x.index_select(1, getattr(self, f"in_index_{i}"))
            outs.append(F.conv2d(xi, w, None, self.stride, self.padding, self.dilation))
        y = torch.cat(outs, 1).index_select(1, self.out_index).add_(self.bias.view(1, -1, 1, 1))
        return _epilogue(y, residual, self.relu)


class GroupLoopLinear(_GroupLoop):
    """One matrix product per group on its gathered inputs, outputs put back in order."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        outs = [
            F.linear(x.index_select(-1, getattr(self, f"in_index_{i}")), w)
            for i, w in enumerate(self.weights)
        ]
        y = torch.cat(outs, -1).index_select(-1, self.out_index).add_(self.bias)
        return _epilogue(y, residual, self.relu)
