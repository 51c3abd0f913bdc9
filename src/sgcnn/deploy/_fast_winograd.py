"""The Winograd realizations of 3x3 stride-1 diverse group convolutions (native kernel
``csrc/winograd.c``), fp32 NCHW on the CPU.

Winograd's minimal filtering F(m x m, 3x3) computes an m x m tile of outputs of a 3x3
convolution from its (m + 2) x (m + 2) input patch ``d`` with ``(m + 2)^2`` multiplications
instead of ``9 m^2``::

    Y = A^T [ U .* V ] A,   U = G w G^T (per filter and input channel),   V = B^T d B

    F(2x2, 3x3): B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
                 G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
                 A^T = [1 1 1 0; 0 1 -1 -1]
    F(4x4, 3x3): B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
                        0 2 -1 -2 1 0; 0 4 0 -5 0 1]
                 G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6;
                        1/24 -1/12 1/6; 0 0 1]
                 A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]

The transforms are linear, so for filter ``n`` of a self-group ``j`` with kept input channels
``C_j`` the sum over channels moves inside: ``Y = A^T [sum_{c in C_j} U[n, c] .* V_c] A``. Per
transform point (``(m + 2)^2`` of them) this sum is a matrix product of the group's ``U``
(filters x kept channels) with the ``V`` of its kept channels (kept channels x tiles), which
the native kernel's register-blocked products compute straight from a per-block panel of
``V``, without gathering. So a self-grouped 3x3 layer executes ``16 / 36`` (m = 2, 2.25x
fewer) or ``36 / 144`` (m = 4, 4x fewer) of its direct multiply-accumulates, on top of what
self-grouping saves, plus the transforms' additions. The input transform is shared by all
groups (each channel is transformed once per block of tiles); the output transform adds the
bias, the residual and the ReLU as the direct kernel does.

Accuracy: F(2x2, 3x3) (matrices of 0, +-1, +-1/2) differs from the direct convolution by a
few 1e-6 on ResNet-50 layers, F(4x4, 3x3) by up to about 4e-5 (outputs of magnitude 10-30),
well inside conversion's equivalence check. F(4x4) adds inputs with coefficients that cancel
only in exact arithmetic, so every value it reads past the valid input is a zero or a real
activation, never uninitialised memory. Conversion times both tile sizes against the direct
kernel per layer and keeps the fastest.
"""

from __future__ import annotations

import torch

from sgcnn.deploy import _native
from sgcnn.deploy._fast_base import LayerSpec, _Fast
from sgcnn.deploy._fast_native import NativeGroupConv2d

# G of F(m x m, 3x3) by tile size m, in float64, so that U = G w G^T and its inverse (for
# spec()) lose nothing beyond fp32 rounding
_G2 = [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]
_G4 = [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
]
_G = {2: torch.tensor(_G2, dtype=torch.float64), 4: torch.tensor(_G4, dtype=torch.float64)}
_G_PINV = {m: torch.linalg.pinv(g) for m, g in _G.items()}  # G^+ G = I: w = G^+ U G^+T


class WinogradGroupConv2d(NativeGroupConv2d):
    """Diverse group convolution of a 3x3, stride-1, dilation-1 layer by F(m x m, 3x3) with
    ``tile`` m = 2 or 4 (see the module docstring), on the native kernels; the same interface,
    fused epilogue and memory planning (padded hand-off, in-place residual, arena) as
    :class:`NativeGroupConv2d`.

    ``entries`` holds each group's kept channels (one entry per channel, not per tap) and each
    chunk's ``weights`` its transformed filters packed ``[(m + 2)^2][channels][filters]``.
    ``block`` counts runs of 16 output *tiles* (m x m positions each) per work item. ``spec()``
    rebuilds the masked weight from ``U`` (exact zeros, other values to fp32 rounding).
    """

    realization = "winograd"
    # (tile, block, rows) triples convert measures
    settings_to_try = ((2, 2, 6), (2, 3, 6), (4, 2, 6), (4, 3, 6))

    def __init__(self, spec: LayerSpec, block: int = 2, rows: int = 6, tile: int = 2) -> None:
        _Fast.__init__(self, spec)
        if tile not in _G:
            raise ValueError(f"tile must be one of {sorted(_G)}")
        if not self.handles(spec):
            raise ValueError("the Winograd kernel realizes 3x3 stride-1 float32 convolutions only")
        if not 1 <= rows <= _native.RMAX:
            raise ValueError(f"rows must be in 1..{_native.RMAX}")
        if not 1 <= block <= 6:
            raise ValueError("block must be in 1..6")
        w = spec.weight.double()
        cg = w.shape[1]
        g, npts = _G[tile], (tile + 2) ** 2
        per_group = []
        for filters, channels in spec.groups:  # U = G w G^T: [filters, kept channels, points]
            u = g @ w[filters][:, channels % cg] @ g.t()
            per_group.append((filters, channels, u.reshape(len(filters), -1, npts)))
        self._pack(spec, per_group, block, rows)
        self.tile = tile

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
    def from_spec(
        cls, spec: LayerSpec, block: int = 2, rows: int = 6, tile: int = 2
    ) -> WinogradGroupConv2d:
        return cls(spec, block, rows, tile)

    @staticmethod
    def supports(spec: LayerSpec, device: torch.device | str = "cpu") -> bool:
        """Whether this realization can run ``spec`` on ``device``."""
        return (
            WinogradGroupConv2d.handles(spec)
            and torch.device(device).type == "cpu"
            and _native.available()
        )

    def _executed_per_position(self) -> int:
        # (m + 2)^2 products per kept (filter, channel) pair and m x m tile
        pairs = int((self.chunks[:, 0] * self.chunks[:, 3]).sum())
        return pairs * (self.tile + 2) ** 2 // self.tile**2

    def macs(self, shape) -> tuple[int, int]:
        """``(executed, padding)`` products for an input of ``shape``: ``(m + 2)^2`` per kept
        (filter, channel) pair and m x m output tile (F(2x2, 3x3): ``16 / 36`` of the direct
        convolution's, F(4x4, 3x3): ``36 / 144``); padding counts those of the outputs that
        tiles over a height or width not a multiple of m compute and drop."""
        b, _, h, w = shape
        m = self.tile
        ph, pw = (0, 0) if self.input_padded else self.padding
        ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
        per_tile = int((self.chunks[:, 0] * self.chunks[:, 3]).sum()) * (m + 2) ** 2
        executed = per_tile * b * -(-ho // m) * -(-wo // m)
        return executed, executed - per_tile * b * ho * wo // m**2

    def _dense_weight(self) -> torch.Tensor:
        dense = torch.zeros(self._weight_shape, dtype=torch.float64)
        cg = self._weight_shape[1]
        channels, weights = self.entries.long().cpu(), self.weights.detach().cpu().double()
        a, pinv = self.tile + 2, _G_PINV[self.tile]
        for ne, e0, w0, rows, r0 in self.chunks.tolist():
            ch = channels[e0 : e0 + ne] % cg
            filters = self.rowmap[r0 : r0 + rows].cpu()
            u = weights[w0 : w0 + a * a * ne * rows].view(a, a, ne, rows).permute(3, 2, 0, 1)
            dense[filters[:, None], ch] = pinv @ u @ pinv.t()
        return dense.to(self.weights.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", winograd=F({self.tile}x{self.tile},3x3)"
