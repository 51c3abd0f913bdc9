"""Step 2 of SG-CNN: self-grouping of filters by k-means (docs/method.md section 1, step 2).

The N importance vectors of a layer are clustered with k-means (Euclidean distance) into
``min(g, N)`` groups, with scikit-learn's ``KMeans(n_clusters=g, init="random", n_init=10,
max_iter=300)`` as in the paper. Groups are data dependent and of unequal size.

Heavily pruned or all-zero layers may have fewer distinct vectors than groups: ``k`` is then
capped at the number of distinct vectors, since k-means cannot fill more clusters (and
scikit-learn would warn that it found fewer). Vectors distinct only in their last bits can
still make it find fewer; that one warning is filtered, by its message, when this module is
imported. Layers are clustered in worker threads, where ``warnings.catch_warnings`` is not
thread-safe (it swaps the process-wide filter list, so concurrent uses leak warnings and leave
filters behind).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

# Fewer distinct vectors than clusters is expected after heavy pruning (module docstring).
warnings.filterwarnings(
    "ignore", message=r"Number of distinct clusters \(\d+\) found smaller than n_clusters"
)


@dataclass(frozen=True)
class KMeansSettings:
    """k-means settings; the defaults are the paper's."""

    init: str = "random"  # initial centroids: "random" rows (paper) or "k-means++"
    n_init: int = 10  # restarts; the run with the lowest inertia wins
    max_iter: int = 300  # Lloyd iterations per restart


def cluster_filters(
    importance: torch.Tensor, groups: int, seed: int, settings: KMeansSettings = KMeansSettings()
) -> torch.Tensor:
    """Group labels ``[N]`` (long, values ``0 .. g'-1``) of the rows of ``importance``.

    ``g' <= min(groups, N, distinct rows)``: k-means may still leave a cluster empty; labels
    are renumbered densely in order of first appearance so that every label names a non-empty
    group.
    """
    n = importance.shape[0]
    data = importance.numpy()
    k = min(groups, n)
    if k > 1:  # distinct vectors, by a hash of each row's bytes (cheap on large layers)
        k = min(k, len({hash(row.tobytes()) for row in np.ascontiguousarray(data)}))
    if k <= 1:
        return torch.zeros(n, dtype=torch.long)
    # scikit-learn is imported here, not at module level, so that `import sgcnn` stays light.
    from sklearn.cluster import KMeans

    kmeans = KMeans(
        n_clusters=k,
        init=settings.init,
        n_init=settings.n_init,
        max_iter=settings.max_iter,
        random_state=seed,
    ).fit(data)
    _, dense = np.unique(kmeans.labels_, return_inverse=True)
    first_seen = np.unique(dense, return_index=True)[1]
    order = np.argsort(np.argsort(first_seen))
    return torch.from_numpy(order[dense].astype(np.int64))
