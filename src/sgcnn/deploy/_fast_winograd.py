"""The Winograd realization of 3x3 stride-1 diverse group convolutions (native kernel
``csrc/winograd.c``), fp32 NCHW on the CPU.

Winograd's minimal filtering F(2x2, 3x3) computes a 2x2 tile of outputs of a 3x3 convolution
from its 4x4 input patch ``d`` with 16 multiplications instead of 36::

    Y = A^T [ U .* V ] A,   U = G w G^T (4x4, per filter and channel),   V = B^T d B

    B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
    G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
    A^T = [1 1 1 0; 0 1 -1 -1]

The transforms are linear, so for filter ``n`` of a self-group ``j`` with kept input channels
``C_j`` the sum over channels moves inside: ``Y = A^T [sum_{c in C_j} U[n, c] .* V_c] A``. Per
transform point (16 of them) this sum is a matrix product of the group's ``U`` (filters x kept
channels) with the ``V`` of its kept channels (kept channels x tiles), which the native kernel's
register-blocked products compute straight from a per-block panel of ``V``, without gathering.
So a self-grouped 3x3 layer executes ``16 / 36`` of its direct multiply-accumulates (2.25x
fewer, on top of what self-grouping saves), plus the transforms' additions. The input
transform is shared by all groups (each channel is transformed once per block of tiles); the
output transform adds the bias, the residual and the ReLU as the direct kernel does.

F(2x2, 3x3) is numerically close to the direct convolution (its matrices hold 0, +-1 and
+-1/2): on ResNet-50 layers the largest difference is a few 1e-6. Conversion tunes it against
the direct kernel per layer and keeps whichever is faster.
"""

from __future__ import annotations

import torch
from torch import nn

from sgcnn.deploy import _native
from sgcnn.deploy._fast_base import LayerSpec, _balanced_split, _Fast
from sgcnn.deploy._fast_native import NativeGroupConv2d

# float64, so that U = G w G^T and its inverse (for spec()) lose nothing beyond fp32 rounding
_G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
_G_PINV = torch.linalg.pinv(_G)  # G^+ G = I: w = G^+ U G^+T


class WinogradGroupConv2d(NativeGroupConv2d):
    """Diverse group convolution of a 3x3, stride-1, dilation-1 layer by F(2x2, 3x3) (see the
    module docstring), on the native kernels; the same interface, fused epilogue and memory
    planning (padded hand-off, in-place residual, arena) as :class:`NativeGroupConv2d`.

    ``entries`` holds each group's kept channels (one entry per channel, not per tap) and each
    chunk's ``weights`` its transformed filters packed ``[16][channels][filters]``. ``block``
    counts runs of 16 output *tiles* (2x2 positions each) per work item.
    """

    realization = "winograd"
    _winograd = True
    settings_to_try = ((1, 6), (2, 6), (3, 6))

    def __init__(self, spec: LayerSpec, block: int = 2, rows: int = 6) -> None:
        _Fast.__init__(self, spec)
        if not self.handles(spec):
            raise ValueError("the Winograd kernel realizes 3x3 stride-1 float32 convolutions only")
        if not 1 <= rows <= _native.RMAX:
            raise ValueError(f"rows must be in 1..{_native.RMAX}")
        if not 1 <= block <= 6:
            raise ValueError("block must be in 1..6")
        lanes = _native.lanes() if _native.available() else 16
        w = spec.weight.double()
        cg = w.shape[1]
        channels_all, packed, chunks, rowmap = [], [], [], []
        n_entries = n_weights = 0
        for filters, channels in spec.groups:
            u = (_G @ w[filters][:, channels % cg] @ _G.t()).reshape(len(filters), -1, 16)
            channels_all.append(channels)
            for part in _balanced_split(torch.arange(len(filters)), rows):
                block_u = u[part].permute(2, 1, 0).float().contiguous()  # [16, channels, rows]
                chunks.append([len(channels), n_entries, n_weights, len(part), len(rowmap)])
                packed.append(block_u.flatten())
                rowmap.extend(filters[part].tolist())
                n_weights += block_u.numel()
            n_entries += len(channels)
        self.register_buffer("entries", torch.cat(channels_all).to(torch.int32).contiguous())
        self.register_buffer("chunks", torch.tensor(chunks, dtype=torch.long))
        self.register_buffer("rowmap", torch.tensor(rowmap, dtype=torch.long))
        self.weights = nn.Parameter(torch.cat(packed).contiguous(), requires_grad=False)
        self.bias = nn.Parameter(spec.bias.clone().contiguous(), requires_grad=False)
        self.block = block
        self.rows = rows
        self._vectors = block * 16 // lanes
        self.out_pad = (0, 0)
        self.input_padded = False
        self.accumulate = False

    @staticmethod
    def handles(spec: LayerSpec) -> bool:
        """Whether F(2x2, 3x3) computes ``spec``: a 3x3, stride-1, dilation-1 float32
        convolution."""
        return (
            spec.kind == "conv"
            and tuple(spec.weight.shape[2:]) == (3, 3)
            and spec.stride == (1, 1)
            and spec.dilation == (1, 1)
            and spec.weight.dtype == torch.float32
        )

    @classmethod
    def from_spec(cls, spec: LayerSpec, block: int = 2, rows: int = 6) -> WinogradGroupConv2d:
        return cls(spec, block, rows)

    @staticmethod
    def supports(spec: LayerSpec, device: torch.device | str = "cpu") -> bool:
        """Whether this realization can run ``spec`` on ``device``."""
        return (
            WinogradGroupConv2d.handles(spec)
            and torch.device(device).type == "cpu"
            and _native.available()
        )

    def _executed_per_position(self) -> int:
        # 16 products per kept (filter, channel) pair and 2x2 tile: 4 per output position
        return int((self.chunks[:, 0] * self.chunks[:, 3]).sum()) * 4

    def macs(self, shape) -> tuple[int, int]:
        """``(executed, padding)`` products for an input of ``shape``: 16 per kept (filter,
        channel) pair and 2x2 output tile (``16 / 36`` of the direct convolution's); padding
        counts those of the outputs that tiles over an odd height or width compute and drop."""
        b, _, h, w = shape
        ph, pw = (0, 0) if self.input_padded else self.padding
        ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
        per_tile = int((self.chunks[:, 0] * self.chunks[:, 3]).sum()) * 16
        executed = per_tile * b * -(-ho // 2) * -(-wo // 2)
        return executed, executed - per_tile * b * ho * wo // 4

    def _dense_weight(self) -> torch.Tensor:
        dense = torch.zeros(self._weight_shape, dtype=torch.float64)
        cg = self._weight_shape[1]
        channels, weights = self.entries.long().cpu(), self.weights.detach().cpu().double()
        for ne, e0, w0, rows, r0 in self.chunks.tolist():
            ch = channels[e0 : e0 + ne] % cg
            filters = self.rowmap[r0 : r0 + rows].cpu()
            u = weights[w0 : w0 + 16 * ne * rows].view(4, 4, ne, rows).permute(3, 2, 0, 1)
            dense[filters[:, None], ch] = _G_PINV @ u @ _G_PINV.t()
        return dense.to(self.weights.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", winograd=F(2x2,3x3)"
