"""L1-norm filter pruning (Li et al., "Pruning filters for efficient ConvNets", ICLR 2017),
matched in FLOPs to self-grouping at the same conv sparsity.

Whole filters are removed, which gives a smaller dense network. A filter can only be removed
where its output has one unambiguous consumer: a *producer* convolution whose output reaches
exactly one other convolution through single-input, channel-wise operations, as the first
convolution of each residual block does (Li et al. prune ResNets there too; the second one
feeds the residual sum, whose channels the shortcut fixes). Removing filter ``n`` of a producer
masks row ``n`` of its weight and column ``n`` of its consumer's weight, so the masked network
computes exactly what the physically smaller one computes (whatever the removed channel
carries never reaches the consumer).

Channel-wise means known to act on each channel alone: the activations, dropout and pooling in
``_CHANNELWISE`` (no per-channel parameter), and a BatchNorm module called once (anywhere on the
path; :func:`slim` slices each one). Anything else ends the path and the producer keeps all
its filters there: GroupNorm, LayerNorm and local response norm mix channels (a removed
channel would change the others), InstanceNorm and PReLU carry per-channel parameters slim does
not slice, and an unknown module or function might do either.

Every producer among the selected layers removes the same fraction ``r`` of its filters, those
of smallest ``sum |W[n]|``. ``r`` is chosen so that the model's counted FLOPs come as close as
possible to those of the layers pruned to the target sparsity ``p`` kernel by kernel (what
self-grouping at ``p`` reaches):

    FLOPs_target = FLOPs_dense - sum over selected layers l of p_l * FLOPs_l

Per-layer sparsities then differ from ``p`` (only producers and their consumers are pruned);
the FLOPs match, which is the comparison Li et al. make. Structure as groups: kept filters form
group 0 (keeping the consumer-side input channels not removed), removed filters group 1
(keeping nothing). :func:`slim` turns the masked network into the physically smaller dense one.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn

from sgcnn.core._graph import trace_graph
from sgcnn.core._method_checks import OneShot
from sgcnn.core.grouper import GroupingReport, SelfGrouper, _check_ratio
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count
from sgcnn.nn._example import example_image
from sgcnn.nn.masked import is_masked, to_dense
from sgcnn.nn.swap import replace_modules_

_CHANNELWISE_HOPS = 6  # operations allowed between a producer and its consumer
# Torch functions (as the run recording names them) that act on each channel alone and have no
# per-channel parameter; "batch_norm" is handled apart (its module is sliced).
_CHANNELWISE = frozenset(
    {
        *("relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_"),
        *("elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish"),
        *("hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "softplus"),
        *("dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout"),
        *("alpha_dropout", "feature_alpha_dropout"),
        *("max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d"),
    }
)


def producer_consumers(model: nn.Module, layers: list[str], example: torch.Tensor):
    """``[(producer, consumer), ...]``: selected convolutions whose output feeds exactly one
    selected convolution through channel-wise operations (see the module docstring)."""
    return [(p, c) for p, c, _ in _chains(model, layers, example)]


def _chains(model: nn.Module, layers: list[str], example: torch.Tensor):
    """``[(producer, consumer, norms), ...]``: :func:`producer_consumers` with the BatchNorm
    modules on each path (to slice with the producer)."""
    graph = trace_graph(model, example)
    nodes, users = graph.nodes, graph.consumers()
    modules = dict(model.named_modules())
    chosen = set(layers)
    calls: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        if node.kind == "layer":
            calls.setdefault(node.target, []).append(i)
    norm_ops = Counter(node.module for node in nodes if node.module)  # ops per BatchNorm
    chains = []
    for name in layers:
        producer = modules[name]
        if not isinstance(producer, nn.Conv2d) or len(calls.get(name, [])) != 1:
            continue
        j, consumer, norms = calls[name][0], None, []
        for _ in range(_CHANNELWISE_HOPS):
            if len(users[j]) != 1:
                break
            k = users[j][0]
            node = nodes[k]
            if node.kind == "layer":
                consumer = node.target
                break
            if node.kind != "op" or len(node.inputs) != 1:
                break
            if node.target == "batch_norm" and node.module:
                norm = modules[node.module]  # called once, on the producer's channels
                if norm_ops[node.module] != 1 or norm.num_features != producer.out_channels:
                    break
                norms.append(node.module)
            elif node.target not in _CHANNELWISE:
                break
            j = k
        target = modules.get(consumer) if consumer is not None else None
        if (
            consumer in chosen
            and isinstance(target, nn.Conv2d)
            and target.groups == 1
            and producer.groups == 1
            and target.in_channels == producer.out_channels
            and len(calls.get(consumer, [])) == 1
        ):
            chains.append((name, consumer, norms))
    return chains


class FilterL1Pruner(OneShot, SelfGrouper):
    """L1-norm filter pruning over the selected layers, FLOPs-matched (module docstring)."""

    method = "l1filter"

    def __init__(self, model, *, groups=16, seed=0, include=None, exclude=None, **options):
        if options.get("input_size") is None:
            raise SgcnnError("method l1filter needs input_size (C, H, W) to count FLOPs")
        super().__init__(
            model, groups=groups, seed=seed, include=include, exclude=exclude, **options
        )
        self.input_size = options["input_size"]  # any form count / SelfGrouper take
        example = example_image(model, self.input_size)
        self.pairs = producer_consumers(self.model, self.selection.layers, example)
        if not self.pairs:
            raise SgcnnError(
                f"method l1filter finds no layer of {type(model).__name__} whose filters can be "
                "removed: none of the selected convolutions feeds exactly one other selected "
                "convolution through channel-wise operations; use another method"
            )

    @torch.no_grad()
    def step(self, conv_sparsity: float, fc_sparsity: float | None = None) -> GroupingReport:
        """Remove the fraction of filters that matches ``conv_sparsity``'s FLOPs."""
        if conv_sparsity is None:
            raise SgcnnError("conv_sparsity is required: a fraction in [0, 1), e.g. 0.7")
        _check_ratio("conv_sparsity", conv_sparsity)
        _check_ratio("fc_sparsity", fc_sparsity)
        fc_sparsity = conv_sparsity if fc_sparsity is None else fc_sparsity
        for name, layer in self.layers.items():
            self._check_layer(name, layer)
        counts = count(self.model, self.input_size)
        # A layer that count folds into its attention module's entry (nn.MultiheadAttention's
        # out_proj) has no entry of its own: it weighs nothing in the match.
        entries = {entry["name"]: entry["flops"] for entry in counts["layers"]}
        flops = {name: entries.get(name, 0) for name in self.layers}
        targets = {
            name: self._setting(
                name, "sparsity", conv_sparsity if isinstance(layer, nn.Conv2d) else fc_sparsity
            )
            for name, layer in self.layers.items()
        }
        needed = sum(targets[n] * flops[n] for n in self.layers)  # MACs to remove
        cost = {n: flops[n] / layer.sg_mask.numel() for n, layer in self.layers.items()}
        order = {
            p: self.layers[p].weight.detach().abs().flatten(1).sum(1).cpu().argsort()
            for p, _ in self.pairs
        }

        def removed_filters(r: float) -> dict[str, int]:
            return {p: min(round(r * len(order[p])), len(order[p]) - 1) for p in order}

        def removed_flops(r: float) -> float:
            k = removed_filters(r)
            rows = {p: k[p] for p in k}
            cols = {c: k[p] for p, c in self.pairs}
            total = 0.0
            for name, layer in self.layers.items():
                n, c = layer.sg_mask.shape
                kept = (n - rows.get(name, 0)) * (c - cols.get(name, 0))
                total += (n * c - kept) * cost[name]
            return total

        grid = [i / 4000 for i in range(4000)]
        best = min(grid, key=lambda r: (abs(removed_flops(r) - needed), r))
        reached = removed_flops(best)
        if abs(reached - needed) > 0.01 * counts["flops"]:
            raise SgcnnError(
                f"method l1filter cannot match conv sparsity {conv_sparsity:.0%}: removing "
                f"{best:.0%} of the filters of {len(self.pairs)} layers ({self.pairs[0][0]}, "
                f"...) cuts {reached:,.0f} of the {needed:,.0f} MACs needed; lower the target"
            )
        k = removed_filters(best)
        rows_kept = {
            n: torch.ones(layer.sg_mask.shape[0], dtype=torch.bool)
            for n, layer in self.layers.items()
        }
        cols_kept = {
            n: torch.ones(layer.sg_mask.shape[1], dtype=torch.bool)
            for n, layer in self.layers.items()
        }
        for p, c in self.pairs:
            gone = order[p][: k[p]]
            rows_kept[p][gone] = False
            cols_kept[c][gone] = False
        report = GroupingReport(
            stems=self.selection.stems,
            shortcuts=self.selection.shortcuts,
            depthwise=self.selection.depthwise,
            skipped=self.selection.skipped,
        )
        for name, layer in self.layers.items():
            labels = (~rows_kept[name]).long()
            keep = torch.stack([cols_kept[name], torch.zeros_like(cols_kept[name])])
            keep = keep[: int(labels.max()) + 1]
            mask = keep[labels]
            is_conv = isinstance(layer, nn.Conv2d)
            report.layers.append(
                self._apply(name, layer, is_conv, targets[name], labels, keep, mask)
            )
        return report


@torch.no_grad()
def slim(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The physically smaller dense network an ``l1filter``-pruned ``model`` stands for.

    A copy in which every removed filter of a producer is gone: its weight row (and bias), its
    channel in every BatchNorm between the producer and its consumer, and the consumer's
    input column; every masked layer becomes a plain ``nn.Conv2d`` / ``nn.Linear``. The copy
    is checked against ``model`` on ``example_input``. A model whose masks are not whole
    removed filters and their consumers' matching inputs (self-grouped, say) is an error.
    """
    work = copy.deepcopy(model).eval()
    layers = {n: m for n, m in work.named_modules() if is_masked(m)}
    if not layers:
        raise SgcnnError(f"{type(model).__name__} has no pruned layers to slim")
    chains = _chains(work, list(layers), example_input)
    pairs = [(p, c) for p, c, _ in chains]
    rows = {n: m.sg_mask.any(1) for n, m in layers.items()}  # filters kept
    cols = {n: m.sg_mask.any(0) for n, m in layers.items()}  # input channels read
    removed = {p: ~rows[p] for p, _ in pairs}
    for name, layer in layers.items():
        whole = torch.equal(layer.sg_mask, rows[name].unsqueeze(1) & cols[name].unsqueeze(0))
        consumer_of = next((p for p, c in pairs if c == name), None)
        reads = removed[consumer_of] if consumer_of else torch.zeros_like(cols[name])
        if (
            not whole
            or (not rows[name].all() and name not in removed)
            or not torch.equal(~cols[name], reads)
        ):
            raise SgcnnError(
                f"layer {name!r} is not filter-pruned (its mask is not whole filters removed "
                "and its consumer's matching inputs): slim takes a model pruned with method "
                "l1filter; convert other models with sgcnn.convert"
            )
    reference = work(example_input)
    for p, c, norms in chains:
        keep = rows[p]
        replace_modules_(
            work, lambda m, n, t=p: n == t, lambda m, n, k=keep: _sliced_conv(m, k, None)
        )
        replace_modules_(
            work, lambda m, n, t=c: n == t, lambda m, n, k=keep: _sliced_conv(m, None, k)
        )
        for norm in norms:
            replace_modules_(
                work, lambda m, n, t=norm: n == t, lambda m, n, k=keep: _channels(m, k)
            )
    replace_modules_(work, lambda m, n: is_masked(m), lambda m, n: to_dense(m))
    try:
        out = work(example_input)
    except Exception as err:
        raise SgcnnError(
            f"the slimmed network fails on the example input ({type(err).__name__}: {err}): a "
            "removed filter's channel reaches a layer slim cannot slice; deploy the pruned "
            "model with sgcnn.convert instead"
        ) from err
    tol = 1e-4 * max(1.0, reference.abs().max().item())
    if out.shape != reference.shape or (out - reference).abs().max().item() > tol:
        raise SgcnnError(
            "the slimmed network does not compute what the pruned one does (a removed filter "
            "reaches more than its consumer); deploy it with sgcnn.convert instead"
        )
    return work


def _sliced_conv(layer: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None):
    """A plain ``nn.Conv2d`` holding ``layer``'s (masked) weight with only the output filters
    ``rows`` and input channels ``cols`` kept (``None``: all)."""
    dense = to_dense(layer) if is_masked(layer) else layer
    weight = dense.weight.data
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    out = nn.Conv2d(
        weight.shape[1] * dense.groups,
        weight.shape[0],
        dense.kernel_size,
        dense.stride,
        dense.padding,
        dense.dilation,
        dense.groups,
        dense.bias is not None,
        dense.padding_mode,
    )
    out.weight.data = weight.clone()
    if dense.bias is not None:
        bias = dense.bias.data
        out.bias.data = (bias if rows is None else bias[rows]).clone()
    return out


def _channels(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    out = copy.deepcopy(norm)
    out.num_features = int(keep.sum())
    for key in ("weight", "bias"):
        if getattr(norm, key) is not None:
            setattr(out, key, nn.Parameter(getattr(norm, key).data[keep].clone()))
    for key in ("running_mean", "running_var"):
        if getattr(norm, key) is not None:
            setattr(out, key, getattr(norm, key)[keep].clone())
    return out
