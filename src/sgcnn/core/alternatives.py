"""Baselines for self-grouping: other ways to prune the same layers to the same sparsity.

Each method is a :class:`~sgcnn.core.grouper.SelfGrouper` subclass, so it selects exactly the
same layers (stems and shortcut projections left dense, the same ``include`` / ``exclude``),
attaches the same masked layers and has the same ``step(conv_sparsity, fc_sparsity)`` lifecycle;
only the rule that turns a layer into ``(labels, keep, mask)`` changes. Every result is a valid
group structure (filter ``n`` computes with the input channels ``keep[labels[n]]``), so
:func:`sgcnn.convert` realizes all of them. For a layer of ``N`` filters and ``C`` input
channels at target sparsity ``p``:

- ``sg``: self-grouping (importance vectors, k-means, centroid pruning).
- ``groupconv``: standard, data-independent group convolution. ``g = round(1 / (1 - p))``
  groups of contiguous filters (sizes ``N / g``, rounded); group ``j`` keeps the window of
  ``w = round((1 - p) C)`` contiguous input channels starting at ``round(j (C - w) / (g - 1))``.
  When ``p = 1 - 1/g`` this is exactly ``nn.Conv2d(..., groups=g)``: equal, disjoint groups,
  each seeing an equal contiguous slice of the input. Other sparsities (Conv-70 gives ``g = 3``,
  windows of ``0.3 C``) keep the same form with evenly spaced windows.
- ``random``: self-grouping's own structure with the data taken out: the same group sizes and
  kept-channel counts per group as ``sg`` computes on this layer, but the filters of each group
  and its kept channels drawn at random (seeded by ``seed`` and the layer name).
- ``kernel_l1``: kernel-level L1 pruning without groups: the layer keeps
  ``K = round((1 - p) N C)`` kernels (self-grouping's count at ``p``, up to its groups' sizes),
  each filter its own
  input channels of largest ``sum |W[n, c]|`` (``K // N`` each, one more for the filters whose
  next channel is strongest). The accuracy ceiling of kernel sparsity; as a group structure
  every filter is its own group, which no fast convolution exploits.
- ``l1filter``: whole-filter L1-norm pruning (a smaller dense network), matched in FLOPs
  instead of per-layer sparsity; see :mod:`sgcnn.core.filter_pruning`.

The alternatives prune once, from dense layers (the G scheme); a target a method cannot reach on
some layer (more than half an input channel per filter away) is an error naming the layer and
what it reached, raised before any mask changes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from torch import nn

from sgcnn.core._method_checks import OneShot
from sgcnn.core.filter_pruning import FilterL1Pruner
from sgcnn.core.grouper import SelfGrouper
from sgcnn.core.importance import importance_vectors
from sgcnn.errors import SgcnnError

METHODS = ("sg", "groupconv", "random", "l1filter", "kernel_l1")


def check_reached(method: str, name: str, target: float, mask: torch.Tensor, why: str) -> None:
    """Raise unless ``mask`` is within half an input channel per filter of ``target``."""
    reached = 1.0 - mask.float().mean().item()
    if abs(reached - target) > 0.5 / mask.shape[1] + 1e-9:
        raise SgcnnError(
            f"method {method} cannot reach sparsity {target:.1%} on layer {name!r} "
            f"({mask.shape[0]} filters x {mask.shape[1]} input channels): it reached "
            f"{reached:.1%} ({why}); lower the target or leave the layer dense "
            f"(grouping.exclude)"
        )


class GroupConvPruner(OneShot, SelfGrouper):
    """Standard data-independent group convolution (see the module docstring).

    ``groups`` and ``seed`` are ignored: the structure depends only on ``N``, ``C`` and ``p``.
    """

    method = "groupconv"

    def _layer_groups(self, name, layer, target, groups):
        self._check_layer(name, layer)
        n, c = layer.sg_mask.shape
        g = max(1, min(n, round(1.0 / (1.0 - target))))
        width = max(1, round((1.0 - target) * c))
        labels = torch.arange(n) * g // n  # contiguous blocks of equal size (+-1)
        keep = torch.zeros(g, c, dtype=torch.bool)
        for j in range(g):
            start = round(j * (c - width) / (g - 1)) if g > 1 else 0
            keep[j, start : start + width] = True
        mask = keep[labels]
        check_reached(self.method, name, target, mask, f"windows of {width} of {c} channels")
        return labels, keep, mask


class RandomGrouper(OneShot, SelfGrouper):
    """Self-grouping's group sizes and kept counts, with filters and channels chosen at random.

    Filter-to-group assignment: a random permutation of ``sg``'s labels (group sizes kept).
    Group ``j`` keeps ``|keep_sg[j]|`` channels drawn uniformly without replacement. The draw is
    seeded by ``seed`` and the layer's name, so it is reproducible and differs between layers.
    """

    method = "random"

    def _layer_groups(self, name, layer, target, groups):
        self._check_layer(name, layer)
        labels, keep, _ = super()._layer_groups(name, layer, target, groups)
        n, c = layer.sg_mask.shape
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        labels = labels[torch.randperm(n, generator=gen)]
        shuffled = torch.zeros_like(keep)
        for j, kept in enumerate(keep.sum(1).tolist()):
            shuffled[j, torch.randperm(c, generator=gen)[:kept]] = True
        return labels, shuffled, shuffled[labels]


class KernelL1Pruner(OneShot, SelfGrouper):
    """Kernel-level L1 pruning: each filter keeps its own strongest input channels.

    The layer keeps ``K = max(N, round((1 - p) N C))`` kernels, the count self-grouping comes
    to at ``p`` up to its groups' sizes (a per-filter ``round((1 - p) C)`` would keep up to
    half a channel per filter more: 5 of 16 at Conv-70 is 68.75 %). Filter ``n`` keeps its
    ``K // N`` channels ``c`` of largest ``I[n, c] = sum |W[n, c, :, :]|``, and the ``K mod N``
    filters whose next channel has the largest ``I`` keep one more. Every filter is its own
    group (``labels = arange(N)``, ``keep = mask``). ``groups`` and ``seed`` are ignored.
    """

    method = "kernel_l1"
    plain_only = False

    def _layer_groups(self, name, layer, target, groups):
        self._check_layer(name, layer)
        importance = importance_vectors(layer)
        n, c = importance.shape
        total = min(n * c, max(n, round((1.0 - target) * n * c)))
        k, extra = divmod(total, n)
        ranked = importance.sort(dim=1, descending=True).indices  # [N, C] strongest first
        mask = torch.zeros(n, c, dtype=torch.bool)
        mask.scatter_(1, ranked[:, :k], True)
        if extra:
            rows = torch.arange(n)
            lucky = importance[rows, ranked[:, k]].topk(extra).indices
            mask[lucky, ranked[lucky, k]] = True
        check_reached(self.method, name, target, mask, f"{total} of {n * c} kernels")
        return torch.arange(n), mask.clone(), mask


def create_pruner(
    method: str,
    model: nn.Module,
    *,
    groups: int = 16,
    seed: int = 0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **options,
) -> SelfGrouper:
    """The pruner of ``method`` (one of :data:`METHODS`) over ``model``'s selected layers;
    ``options`` go to :class:`~sgcnn.core.grouper.SelfGrouper` (``input_size``, ...)."""
    if method not in METHODS:
        raise SgcnnError(f"unknown pruning method {method!r}; valid: {', '.join(METHODS)}")
    cls = {
        "sg": SelfGrouper,
        "groupconv": GroupConvPruner,
        "random": RandomGrouper,
        "kernel_l1": KernelL1Pruner,
        "l1filter": FilterL1Pruner,
    }[method]
    return cls(model, groups=groups, seed=seed, include=include, exclude=exclude, **options)
