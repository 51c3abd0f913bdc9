"""2-D max pooling by the native kernel (see :mod:`sgcnn.deploy.fast`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sgcnn.deploy import _native
from sgcnn.deploy._fast_base import _taker
from sgcnn.deploy._fast_native import _plain


class MaxPool2d(nn.Module):
    """``F.max_pool2d`` (dilation 1, no indices) computed by the native kernel for float32
    NCHW tensors on the CPU: per output row, the maximum of the window's input rows, then of
    the window's columns, on whole vectors (strides 1 and 2; a scalar loop for others).
    ResNet's stem pooling at batch 16 on 2 threads: 3.9 ms against PyTorch's 67 ms in NCHW
    and 5.9 ms in channels-last (``benchmarks/bench_max_pool.py``). Exact, NaN included;
    other inputs fall back to ``F.max_pool2d``."""

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
        native = native and not (x.requires_grad and torch.is_grad_enabled())  # no backward
        if native and _native.available() and not torch.onnx.is_in_onnx_export():
            if _plain(x):
                return _native.max_pool2d(x, *args, _taker(self, x))
            return torch.ops.sgcnn.max_pool2d(x, *args)
        return F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, ceil_mode={self.ceil_mode}"
        )
