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

import math

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
    rows = max(1, _BLOCK // max(1, math.prod(weight.shape[1:])))
    importance = torch.empty(weight.shape[:2], dtype=torch.float64)
    for start in range(0, weight.shape[0], rows):
        _block_importance(weight[start : start + rows], importance[start : start + rows])
    if mask is not None:
        importance.mul_(mask.to(device="cpu", dtype=torch.float64))
    return importance


_BLOCK = 1 << 22  # weights converted to float64 at a time: bounds the copy on large layers


def _block_importance(block: torch.Tensor, out: torch.Tensor) -> None:
    """``I`` of some filters into ``out``: the weights are copied to the CPU and made float64
    (exact for every float dtype) before the sum, so the same values give the same sums on any
    device and in any dtype."""
    if block.dim() > 2:
        out.copy_(block.to(device="cpu", dtype=torch.float64).abs_().flatten(2).sum(2))
    else:
        out.copy_(block).abs_()  # copy_ converts to float64 on the CPU
