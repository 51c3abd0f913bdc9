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
- :class:`WinogradGroupConv2d`: 3x3 stride-1 layers by Winograd's F(2x2, 3x3) or F(4x4, 3x3)
  on the native kernels (2.25x or 4x fewer multiply-accumulates;
  :mod:`sgcnn.deploy._fast_winograd`).

Each class has ``from_masked(layer, bn=None, relu=False)`` and ``from_spec(spec)``;
``macs(input_shape)`` returns the multiply-accumulates it really executes and how many of them
are padding (zeros computed to keep shapes regular). ``spec()`` gives the layer back, so any
realization can be rebuilt from any other.

The classes live in private modules of this package (``_fast_base``: :class:`LayerSpec`, the
spec helpers and the shared base; ``_fast_dense``, ``_fast_grouped``, ``_fast_native``,
``_fast_winograd``, ``_fast_pool``) and are imported from here.
"""

from __future__ import annotations

from torch import nn

from sgcnn.deploy._fast_base import (
    LayerSpec,
    explicit_padding,
    group_supports,
    spec_from_layer,
    useful_macs,
)
from sgcnn.deploy._fast_dense import DenseConv2d, DenseLinear
from sgcnn.deploy._fast_grouped import (
    GroupedConv2d,
    GroupedLinear,
    GroupLoopConv2d,
    GroupLoopLinear,
)
from sgcnn.deploy._fast_native import NativeGroupConv2d
from sgcnn.deploy._fast_pool import MaxPool2d
from sgcnn.deploy._fast_winograd import WinogradGroupConv2d
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear

__all__ = [
    "CONV_REALIZATIONS",
    "FAST_TYPES",
    "LINEAR_REALIZATIONS",
    "DenseConv2d",
    "DenseLinear",
    "GroupLoopConv2d",
    "GroupLoopLinear",
    "GroupedConv2d",
    "GroupedLinear",
    "LayerSpec",
    "MaxPool2d",
    "NativeGroupConv2d",
    "WinogradGroupConv2d",
    "group_supports",
    "is_fast",
    "is_supported_layer",
    "spec_from_layer",
    "useful_macs",
]


CONV_REALIZATIONS = {
    "dense": DenseConv2d,
    "grouped": GroupedConv2d,
    "loop": GroupLoopConv2d,
    "native": NativeGroupConv2d,
    "winograd": WinogradGroupConv2d,
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
    WinogradGroupConv2d,
)


def is_fast(module: nn.Module) -> bool:
    """Whether ``module`` is one of :func:`sgcnn.convert`'s fast layer modules (convolution
    or linear realizations; the native max pooling it may also place is not one)."""
    return isinstance(module, FAST_TYPES)


def is_supported_layer(module: nn.Module) -> bool:
    """Conv2d / Linear layers a fast module can realize (masked or plain)."""
    if isinstance(module, (MaskedConv2d, nn.Conv2d)):
        return module.padding_mode == "zeros" and explicit_padding(module) is not None
    return isinstance(module, (MaskedLinear, nn.Linear))
