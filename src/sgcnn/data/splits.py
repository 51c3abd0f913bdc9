"""Seeded, stratified splits of a labelled index set."""

from __future__ import annotations

import numpy as np

# Purposes mixed into the seed so that splits drawn for different reasons are independent.
VAL_SPLIT = 1
TEST_SPLIT = 2


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, purpose: int = VAL_SPLIT
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into ``(kept, held_out)``, both sorted.

    ``held_out`` holds ``round(fraction * n)`` indices (at least one when ``fraction > 0``),
    shared among classes in proportion to their sizes (largest-remainder rounding), so every
    class keeps its share in both parts; no class gives away its last kept example. Which
    examples of a class are held out is drawn by ``numpy.random.default_rng([seed, purpose])``:
    the same arguments always give the same split.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if fraction <= 0 or n == 0:
        return np.arange(n), np.arange(0)
    classes, counts = np.unique(labels, return_counts=True)
    total = min(max(1, round(fraction * n)), n - len(classes))
    exact = counts * (total / n)
    quota = np.minimum(np.floor(exact).astype(int), counts - 1)
    # Hand the remaining places to the classes with the largest fractional parts. Ends because
    # total <= sum(counts - 1), the most the caps allow.
    order = np.argsort(-(exact - quota), kind="stable")
    while quota.sum() < total:
        for c in order:
            if quota.sum() < total and quota[c] < counts[c] - 1:
                quota[c] += 1
    rng = np.random.default_rng([seed, purpose])
    held = [
        rng.permutation(np.flatnonzero(labels == cls))[:q]
        for cls, q in zip(classes, quota, strict=True)
    ]
    held_out = np.sort(np.concatenate(held)) if held else np.arange(0)
    kept = np.setdiff1d(np.arange(n), held_out, assume_unique=True)
    return kept, held_out
