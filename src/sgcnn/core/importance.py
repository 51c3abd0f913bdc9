"""Step 1 of SG-CNN: importance vectors (docs/method.md section 1, step 1).

For filter ``n`` and input channel ``c`` of a layer with weight ``W`` and mask ``M``::

    I[n, c] = sum_{i,j} |W[n, c, i, j] * M[n, c, i, j]|      (convolution)
    I[n, c] = |W[n, c] * M[n, c]|                              (fully connected)

The importance vector of filter ``n`` is the row ``V_n = I[n, :]``: raw values, not normalised,
in float64. The weight is copied to the CPU and converted to float64 *before* the sum, so the
same weight values give the same ``I`` (and masks) whatever the model's dtype (bf16, fp16,
fp32) or device: the sum runs in one precision, in one order, on one kind of processor (and
float64 is not available on every accelerator, MPS for one).
"""

from __future__ import annotations

import torch
from torch import nn

from sgcnn.errors import SgcnnError


def importance_vectors(layer: nn.Conv2d | nn.Linear, mask: torch.Tensor | None = None):
    """The ``[N, C]`` importance matrix ``I`` of ``layer`` (float64, on the CPU).

    ``mask`` is the ``[N, C]`` boolean kernel mask (all ones when ``None``). For a grouped
    convolution ``C`` is the weight's second dimension, the input channels of one group.
    """
    weight = layer.weight.detach()
    if not torch.isfinite(weight).all():
        raise SgcnnError(
            "the layer's weights contain NaN or inf; self-grouping needs finite weights "
            "(check the checkpoint or the training run that produced it)"
        )
    weight = weight.to(device="cpu").to(torch.float64)  # exact for every float dtype
    importance = weight.abs().flatten(2).sum(2) if weight.dim() > 2 else weight.abs()
    if mask is not None:
        importance = importance * mask.to(device="cpu", dtype=torch.float64)
    return importance
