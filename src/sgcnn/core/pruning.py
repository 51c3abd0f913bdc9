"""Step 3 of SG-CNN: centroid-based pruning (docs/method.md section 1, step 3).

For a target (cumulative) sparsity ``p`` of a layer with importance ``I`` ``[N, C]``, group
labels ``l`` ``[N]`` and current mask ``M`` ``[N, C]``:

    centroid_j      = mean of I[n, :] over the filters n of group j            [g, C]
    value[n, c]     = centroid_{l(n)}[c] * M[n, c]                             [N, C]
    threshold       = numpy.percentile(value.flatten(), 100 p)  (linear)
    keep_j[c]       = centroid_j[c] > threshold                                [g, C]
    M'[n, c]        = keep_{l(n)}[c] * M[n, c]

so every centroid counts once per member, whole kernels are pruned and masks only shrink. From
a dense layer all filters of a group share the group's kept input channels; after a re-grouping
(LG) a member keeps only those its own earlier mask kept. ``keep_j`` is still the union of its
members' channels: a kept channel has a nonzero centroid (or is a tie kept below), so some
member's mask keeps it.

**Ties at zero.** When ``threshold == 0`` every kept pair of zero importance (all-zero weights:
a zero-initialised head, a dead channel) is tied at the threshold, and ``>`` would prune them
all, up to the whole layer, which could then never train again. The rule then prunes no more
than it does on distinct values, ``P = floor((N C - 1) p) + 1`` entries: the pairs already
masked out stay pruned, and the zero-centroid ``(group j, channel c)`` blocks (``members`` of
``j`` keeping ``c`` entries each) are pruned in order of ``c``, then ``j``, while the count
stays within ``P``; the rest are kept. Weights with no exact zero outside the mask never tie
at zero, so for them the rule is exactly the one above.
"""

from __future__ import annotations

import numpy as np
import torch


def group_centroids(importance: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean importance vector of each group: ``[g, C]`` with ``g = labels.max() + 1``."""
    groups = int(labels.max()) + 1
    sums = torch.zeros(groups, importance.shape[1], dtype=importance.dtype)
    sums.index_add_(0, labels, importance)
    sizes = torch.bincount(labels, minlength=groups).to(importance.dtype)
    return sums / sizes.unsqueeze(1)


def percentile_of_repeated(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``numpy.percentile(np.repeat(values, counts), q)`` (method "linear") without the repeat.

    The list has ``n = counts.sum()`` entries; the linear method interpolates between its order
    statistics ``floor(h)`` and ``floor(h) + 1`` at ``h = (n - 1) q / 100``, computed here from
    cumulative counts over the sorted distinct values, with numpy's own interpolation formula.
    """
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(counts[order])
    n = int(cumulative[-1])
    h = (np.float64(q) / 100) * (n - 1)
    low = np.floor(h)
    t = h - low
    a = values[np.searchsorted(cumulative, int(low), side="right")]
    b = values[np.searchsorted(cumulative, min(int(low) + 1, n - 1), side="right")]
    diff = b - a
    return float(b - diff * (1 - t) if t >= 0.5 else a + diff * t)


def centroid_prune(
    importance: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, sparsity: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep [g, C], new_mask [N, C])`` for target sparsity ``sparsity`` in ``[0, 1)``.

    ``importance`` must already be masked (it is ``|W * M|`` summed over the kernel).
    A sparsity of 0 prunes nothing. The ``N x C`` list of ``value`` holds at most ``g x C``
    distinct non-zero entries (a centroid value times the members whose mask keeps it) plus
    zeros, so its percentile is taken over those with their multiplicities.
    """
    centroids = group_centroids(importance, labels)
    if sparsity <= 0:
        keep = torch.ones_like(centroids, dtype=torch.bool)
        return keep, mask.clone()
    groups = centroids.shape[0]
    members = torch.zeros(groups, mask.shape[1], dtype=torch.long)
    members.index_add_(0, labels, mask.long())  # members of group j keeping channel c
    zeros = mask.numel() - int(members.sum())  # masked-out pairs have value 0
    values = np.concatenate([centroids.numpy().ravel(), [0.0]])
    counts = np.concatenate([members.numpy().ravel(), [zeros]])
    threshold = percentile_of_repeated(values, counts, 100.0 * sparsity)
    keep = centroids > threshold
    if threshold <= 0:
        _keep_zero_ties(keep, centroids, members, zeros, sparsity)
    return keep, mask & keep[labels]


def _keep_zero_ties(keep, centroids, members, zeros: int, sparsity: float) -> None:
    """Keep (in place) zero-centroid blocks beyond the ``P`` entries the rule prunes on distinct
    values (module docstring, "Ties at zero")."""
    n = int(members.sum()) + zeros
    h = (np.float64(100.0 * sparsity) / 100) * (n - 1)  # as percentile_of_repeated
    budget = int(np.floor(h)) + 1 - zeros
    tied = (centroids == 0) & (members > 0)  # [g, C]
    if int(members[tied].sum()) <= budget:
        return  # the strict rule already prunes no more than P
    blocks = tied.t().nonzero()  # (c, j), in order of c then j
    sizes = members.t()[tied.t()]
    pruned = torch.cumsum(sizes, 0) <= max(budget, 0)  # a prefix within the budget
    kept = blocks[~pruned]
    keep[kept[:, 1], kept[:, 0]] = True
