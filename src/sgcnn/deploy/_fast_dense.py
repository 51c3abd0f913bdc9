"""The dense realizations (see :mod:`sgcnn.deploy.fast`): one convolution or matrix product
with the masked weight, the fallback every layer has."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sgcnn.deploy._fast_base import LayerSpec, _epilogue, _Fast, _taker
from sgcnn.deploy._fast_native import _plain


class DenseConv2d(_Fast):
    """The dense fallback: ``conv(x, W * M) + bias``.

    ``mode``: ``"nchw"`` (F.conv2d as the input comes), ``"nhwc"`` (run the convolution in
    channels-last memory and return a contiguous result) or ``"matmul"`` (1x1 convolutions:
    one batched matrix product ``W[N, C] @ x[b, C, HW]``, bias fused).
    """

    realization = "dense"
    modes = ("nchw", "nhwc", "matmul")

    def __init__(self, spec: LayerSpec, mode: str = "nchw") -> None:
        super().__init__(spec)
        if mode == "matmul" and (spec.taps != 1 or spec.conv_groups != 1 or spec.padding != (0, 0)):
            raise ValueError("matmul mode needs a 1x1 convolution without padding or groups")
        self.mode = mode
        self.output_in_arena = mode == "matmul"
        self.weight = nn.Parameter(spec.weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone(), requires_grad=False)

    @classmethod
    def from_spec(cls, spec: LayerSpec, mode: str = "nchw") -> DenseConv2d:
        return cls(spec, mode)

    def _executed_per_position(self) -> int:
        return self.weight[0].numel() * self.out_features

    def _dense_weight(self) -> torch.Tensor:
        return self.weight.detach().clone()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)  # every mode: PyTorch's conv2d would take an unbatched input
        if self.mode == "matmul":
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            b, c, h, w = x.shape
            w2 = self.weight.view(self.out_features, c)
            take = _taker(self, x) if _plain(x) else None
            out = take(b * self.out_features * h * w) if take is not None else None
            y = torch.baddbmm(
                self.bias.view(1, -1, 1).expand(b, -1, h * w),
                w2.expand(b, -1, -1),
                x.reshape(b, c, h * w),
                out=out.view(b, self.out_features, h * w) if out is not None else None,
            ).view(b, self.out_features, h, w)
        elif self.mode == "nhwc":
            xc = x.contiguous(memory_format=torch.channels_last)
            wc = self.weight.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(
                xc, wc, self.bias, self.stride, self.padding, self.dilation, self.conv_groups
            )
            if not x.is_contiguous(memory_format=torch.channels_last):
                y = y.contiguous()  # back to NCHW; a channels-last input stays channels-last
        else:
            y = F.conv2d(
                x,
                self.weight,
                self.bias,
                self.stride,
                self.padding,
                self.dilation,
                self.conv_groups,
            )
        return _epilogue(y, residual, self.relu)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"


class DenseLinear(_Fast):
    """The dense fallback for a linear layer: ``x @ (W * M)^T + bias``."""

    realization = "dense"

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(spec)
        self.weight = nn.Parameter(spec.weight.clone(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone(), requires_grad=False)

    def _executed_per_position(self) -> int:
        return self.weight.numel()

    def _dense_weight(self) -> torch.Tensor:
        return self.weight.detach().clone()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input(x)
        return _epilogue(F.linear(x, self.weight, self.bias), residual, self.relu)
