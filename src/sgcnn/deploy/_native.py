"""The native kernels (x86-64, fp32, NCHW): diverse group convolution and max pooling.

A diverse group convolution cannot be handed to oneDNN: its groups have unequal sizes and
overlapping input-channel sets. Gathering each group's input channels into a copy costs about
``g * keep`` times the input's memory traffic (6.4x for g = 16 at 40% kept), which is more than
the arithmetic saved. This kernel gathers nothing: it reads each group's input planes in place.

For output filter ``n`` of group ``j`` and output position ``q`` it computes::

    y[b, n, q] = relu?( bias[n] + residual?[b, n, q] + sum_{e in E_j} w[n, e] * src[b, off_e + q] )

where the *entries* ``E_j`` of group ``j`` are its (kept input channel, kernel tap) pairs and
``off_e`` is where that channel's plane, shifted by that tap, starts in ``src``. ``src`` is the
input itself for a 1x1 stride-1 convolution, otherwise a zero-padded copy (stride 1), or the
``s_h x s_w`` polyphase split of the padded input (stride > 1), so that every tap of every
channel is one contiguous run of memory and output positions map to consecutive addresses
(each output row carries ``k - 1`` junk columns that are computed and dropped). The padded copy
is made once per call (1x the input), not once per group. Each work item then copies the runs
its block of positions reads (one per input channel and phase) into a contiguous *panel*, so
that the inner loop streams one small buffer rather than hundreds of planes a page apart.

Work is split into items (image, block of ``lanes * block`` positions, share of the chunks of
at most ``rows <= 16`` filters of one group) run by OpenMP threads. Each item keeps ``filters x
vectors`` accumulators in registers: per entry it loads ``vectors`` input vectors and
broadcasts one weight per filter, so small groups still fill the vector lanes. The epilogue
adds the bias, an optional residual and an optional ReLU, so a following BatchNorm (folded
into ``w`` and ``bias``), the residual addition and the ReLU cost no memory pass; where the
output rows are the grid's rows (1x1 layers) it is applied straight from the registers.

The C source (``csrc/dg_conv.c``) is compiled on first use and loaded with ``ctypes`` by
:mod:`sgcnn.deploy._native_build` (its names are available here too): the vector width
follows the CPU, AVX-512F (16 lanes) or AVX2 + FMA (8 lanes); ``SGCNN_NATIVE=0`` disables it;
:func:`available` says whether it can run. Both kernels are registered as PyTorch custom
operators (``sgcnn::dg_conv2d``, ``sgcnn::dg_conv2d_accumulate_``, ``sgcnn::max_pool2d``) so
that ``torch.export`` and ``torch.jit.trace`` record them as calls.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import register_flop_formula

from sgcnn.deploy._native_build import (
    FLAGS,
    _CGeometry,
    _need,
    available,
    build_key,
    cpu_id,
    isa,
    lanes,
    max_block,
    unavailable_reason,
)
from sgcnn.deploy._native_guard import RMAX, SLACK, check_input, check_pool, check_tables
from sgcnn.errors import SgcnnError

__all__ = [
    "FLAGS",
    "OPERATORS",
    "RMAX",
    "SLACK",
    "Geometry",
    "accumulate_",
    "available",
    "build_key",
    "conv2d",
    "cpu_id",
    "dg_conv2d",
    "dg_conv2d_accumulate_",
    "isa",
    "lanes",
    "max_block",
    "max_pool2d",
    "max_pool2d_op",
    "op_args",
    "output_size",
    "pool_output_size",
    "unavailable_reason",
    "wino4_conv2d",
    "wino4_conv2d_accumulate_",
    "wino_conv2d",
    "wino_conv2d_accumulate_",
]


@dataclass(frozen=True)
class Geometry:
    """A native convolution's fixed geometry (the input's shape comes with each call).

    ``block``: vectors of ``lanes()`` output positions per work item; ``border``: a zero border
    written around each output plane, so that the next convolution needs no padded copy;
    ``input_padded``: the input comes from such a producer (it already carries this layer's
    zero padding, and its storage is readable :data:`SLACK` floats past its end).
    """

    filters: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    block: int = 8
    border: tuple[int, int] = (0, 0)
    input_padded: bool = False

    def output_shape(self, x_shape) -> tuple[int, int, int, int]:
        """``(batch, filters, out_h + 2 border_h, out_w + 2 border_w)``; an SgcnnError when
        ``x_shape`` is not 4-D or leaves no output position (as PyTorch's convolution)."""
        if len(x_shape) != 4:
            raise SgcnnError(f"expected a 4-D input [batch, channels, height, width]: {x_shape}")
        b, _, h, w = x_shape
        ho, wo = self._out_hw(h, w)
        if ho < 1 or wo < 1:
            raise SgcnnError(
                f"an input of {h}x{w} is too small for a {self.kernel[0]}x{self.kernel[1]} "
                f"kernel with padding {self.padding}, stride {self.stride} and dilation "
                f"{self.dilation}: no output position"
            )
        return (b, self.filters, ho + 2 * self.border[0], wo + 2 * self.border[1])

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        return tuple(
            output_size(s, self.kernel[i], self.stride[i], self.padding[i], self.dilation[i])
            for i, s in enumerate((h, w))
        )

    def c_struct(self, x_shape) -> _CGeometry:
        b, c, h, w = x_shape
        # The block was chosen in vectors of the converting CPU's width; a program run where
        # vectors are wider (AVX-512 after AVX2) takes the largest block this build has. The
        # block only splits the work: every output is summed in the same order.
        block = min(self.block, max_block())
        return _CGeometry(
            b, c, h, w, self.filters, *self.kernel, *self.stride, *self.padding,
            *self.dilation, *self._out_hw(h, w), block, *self.border,
            int(self.input_padded),
        )  # fmt: skip


class Plan:
    """What a call at one input shape needs besides the tensors: the output's shape and the C
    geometry structure, built once (a converted model calls each layer at the same shapes)."""

    __slots__ = (
        "_out", "_static", "c_geo", "c_ref", "geo", "numel", "residual_shape", "shape", "x_shape"
    )  # fmt: skip

    def __init__(self, geo: Geometry, x_shape) -> None:
        self.geo, self.x_shape = geo, tuple(x_shape)
        self.shape = geo.output_shape(x_shape)
        b, n, h, w = self.shape  # a residual is the output without its border
        self.residual_shape = (b, n, h - 2 * geo.border[0], w - 2 * geo.border[1])
        self.numel = math.prod(self.shape)
        if _largest_shift(geo, x_shape) >= 1 << 24:  # the direct kernel packs it in 24 bits
            raise SgcnnError(
                f"an input of {x_shape[2]}x{x_shape[3]} is too large for the native kernel with "
                f"a {geo.kernel[0]}x{geo.kernel[1]} kernel and dilation {geo.dilation}; "
                "convert with realizations=('dense',) for such inputs"
            )
        self.c_geo = geo.c_struct(x_shape)
        self.c_ref = ctypes.byref(self.c_geo)
        self._static = None  # the kernel and the layer's own arguments (see call)
        self._out = None  # the output view last made in an arena buffer (see output)

    def call(self, x, entries, weights, chunks, rowmap, bias, residual, y, relu, tile) -> None:
        """Run the kernel: ``y <- relu?(conv(x) + bias + residual?)``, ``x`` contiguous and of
        this plan's shape. The layer's own arguments (its tensors' addresses and sizes, the
        kernel) are gathered once and reused while those addresses stay the same, which is
        checked on every call."""
        key = (entries.data_ptr(), weights.data_ptr(), chunks.data_ptr(), rowmap.data_ptr())
        key += (bias.data_ptr(), relu, tile)
        static = self._static
        if static is None or static[0] != key:  # first call, or the layer's tensors moved
            _check_layer_tensors(weights, bias)
            lib = _need()
            mid = (key[0], entries.shape[0], key[1], chunks.shape[0], key[2], key[3], key[4])
            tail = (int(relu), tile) if tile else (int(relu),)
            kernel = lib.sg_wino_conv2d if tile else lib.sg_dg_conv2d
            static = self._static = (key, kernel, mid, tail)
        _, kernel, mid, tail = static
        res = None if residual is None else residual.data_ptr()
        status = kernel(x.data_ptr(), self.c_ref, *mid, res, y.data_ptr(), *tail)
        if status != 0:
            _raise(status, self.geo)

    def output(self, flat: torch.Tensor, keep: bool = False) -> torch.Tensor:
        """The output, in the first :attr:`numel` floats of the 1-D ``flat`` (at least
        ``numel + SLACK`` long), whose :data:`SLACK` floats behind the output are zeroed (a
        Winograd consumer's last tiles read them). ``keep``: ``flat`` is an arena buffer used
        again call after call, so the view is kept and handed out again while ``flat`` is the
        same buffer."""
        out = self._out
        if out is None or out._base is not flat:
            out = flat[: self.numel].view(self.shape)
            self._out = out if keep else None
        size = flat.element_size()
        ctypes.memset(flat.data_ptr() + self.numel * size, 0, SLACK * size)
        return out


def _largest_shift(geo: Geometry, x_shape) -> int:
    """The largest distance, in floats, between a tap's run and its channel's row in the
    direct kernel's source (the input itself, or its padded polyphase split)."""
    w = x_shape[3]
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    if geo.stride == (1, 1) and geo.padding == (0, 0) and (kh * kw == 1 or geo.input_padded):
        return (kh - 1) * dh * w + (kw - 1) * dw
    wq = -(-(w + 2 * geo.padding[1]) // sw)
    return (kh - 1) * dh // sh * wq + (kw - 1) * dw // sw


def _check_layer_tensors(weights: torch.Tensor, bias: torch.Tensor) -> None:
    """The kernels read the layer's weights and bias as contiguous float32 CPU memory; a
    layer cast with ``.double()`` / ``.half()`` or moved to a GPU would be read as garbage."""
    for t in (weights, bias):
        if t.dtype != torch.float32 or not t.is_cpu or not t.is_contiguous():
            raise SgcnnError(
                "a native layer's weights must stay contiguous float32 on the CPU (found "
                f"{t.dtype} on {t.device}); convert the model again for another dtype or "
                "device instead of casting or moving the converted one"
            )


class Plans(dict):
    """A module's plans by call key; copies and pickles start empty (ctypes structures are
    neither copied nor pickled, and are rebuilt on the next call)."""

    def __reduce__(self):
        return (Plans, ())


def output_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ------------------------------------------------------------------------- calling


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _raise(status: int, geo: Geometry):
    if status == -2:
        raise ValueError(f"block must be in 1..{max_block()}")
    if status == -3:
        raise ValueError(f"the Winograd kernel computes 3x3 stride-1 convolutions only, not {geo}")
    raise MemoryError("sgcnn native kernel: out of memory for its workspace")


def _run(x, entries, weights, chunks, rowmap, bias, residual, plan: Plan, relu, y, tile):
    if tuple(x.shape) != plan.x_shape:
        raise ValueError(f"the plan is for inputs of shape {plan.x_shape}, not {tuple(x.shape)}")
    if residual is not None and (
        residual.shape != plan.residual_shape
        or residual.dtype != torch.float32
        or not residual.is_cpu
    ):  # the kernel reads it element by element, as float32 host memory
        raise SgcnnError(
            f"the residual added to this layer's output (float32 {list(plan.residual_shape)}) "
            f"is {str(residual.dtype).removeprefix('torch.')} {list(residual.shape)} on "
            f"{residual.device}; the native kernel adds CPU residuals of the same shape and "
            "type only"
        )
    if plan.numel == 0:  # an empty batch: nothing to compute (the kernel needs one image)
        return
    plan.call(x, entries, weights, chunks, rowmap, bias, residual, y, relu, tile)


def conv2d(
    x, entries, weights, chunks, rowmap, bias, residual, geo: Geometry, relu: bool,
    tile: int = 0, plan: Plan | None = None, buffer: torch.Tensor | None = None,
):  # fmt: skip
    """Diverse group convolution (see the module docstring), float32 NCHW on CPU.

    ``entries`` int32 [E, 3] (input channel, ky, kx); ``chunks`` int64 [nchunks, 5] (entries,
    first entry, first weight, filters, first row of ``rowmap``); ``weights`` packed
    ``[entries, filters]`` per chunk; ``rowmap`` the output channel of every packed row.
    With ``tile`` m = 2 or 4 the kernel is Winograd's F(m x m, 3x3)
    (:mod:`sgcnn.deploy._fast_winograd`): ``entries`` int32 [E] are the groups' channels and
    ``weights`` the transformed filters. ``plan``: :class:`Plan` of ``geo`` at ``x``'s shape,
    if the caller keeps one. ``buffer``: an arena buffer (1-D, at least the output's size plus
    :data:`SLACK`, the same tensor call after call) that holds the output, else it is
    allocated.
    """
    x = x.contiguous()
    residual = residual.contiguous() if residual is not None else None
    plan = plan if plan is not None else Plan(geo, x.shape)
    # Slack behind the output: a consumer running the junk columns of its last row may read
    # a few floats past the end of the last plane (Plan.output zeroes it).
    if buffer is None:
        y = plan.output(torch.empty(plan.numel + SLACK, dtype=x.dtype))
    else:
        y = plan.output(buffer, keep=True)
    _run(x, entries, weights, chunks, rowmap, bias, residual, plan, relu, y, tile)
    return y


def accumulate_(
    residual, x, entries, weights, chunks, rowmap, bias, geo: Geometry, relu, tile=0,
    plan: Plan | None = None,
):  # fmt: skip
    """In place: ``residual <- act(residual + conv2d(x) + bias)``; saves allocating and
    writing a new output when the residual is dead after this layer."""
    if not residual.is_contiguous() or geo.border != (0, 0):
        raise ValueError("in-place accumulation needs a contiguous residual and no border")
    x = x.contiguous()
    plan = plan if plan is not None else Plan(geo, x.shape)
    _run(x, entries, weights, chunks, rowmap, bias, residual, plan, relu, residual, tile)


# The same functions as PyTorch custom operators, so that torch.export and torch.jit.trace
# record them (and a saved program can call them once `sgcnn.deploy.fast` is imported, as
# `sgcnn.load` does). Their geometry arguments are the fields of Geometry, by name. Eager
# calls skip the dispatcher (about 30 us a call) and use the functions above directly.


def _geo(filters, kernel, stride, padding, dilation, block, border, input_padded) -> Geometry:
    return Geometry(
        filters, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), block,
        tuple(border), input_padded,
    )  # fmt: skip


def op_args(geo: Geometry) -> tuple:
    """``geo`` as the operators' trailing geometry arguments."""
    return (
        geo.filters, list(geo.kernel), list(geo.stride), list(geo.padding), list(geo.dilation),
        geo.block, list(geo.border), geo.input_padded,
    )  # fmt: skip


# Both convolution operators take the kernel's tensors, then the fields of Geometry and relu;
# their schemas are written out once here (what torch.library would infer from annotations).
OPERATORS = {0: "dg_conv2d", 2: "wino_conv2d", 4: "wino4_conv2d"}  # by Winograd tile (0: direct)
_TENSORS = "Tensor entries, Tensor weights, Tensor chunks, Tensor rowmap, Tensor bias"
_GEOMETRY = (
    "SymInt filters, SymInt[] kernel, SymInt[] stride, SymInt[] padding, SymInt[] dilation, "
    "SymInt block, SymInt[] border, bool input_padded, bool relu"
)


def _guard(x, entries, weights, chunks, rowmap, bias, geo: Geometry, tile: int) -> None:
    """The operators' checks (a traced or saved program calls them without the fast module's
    own): :mod:`sgcnn.deploy._native_guard`."""
    largest = check_tables(entries, weights, chunks, rowmap, bias, geo, tile)
    check_input(x, largest, geo)


def _register(tile: int, flops_per_weight) -> tuple:
    """The operators ``sgcnn::<name>`` and ``sgcnn::<name>_accumulate_`` of one kernel
    (``name = OPERATORS[tile]``)."""
    name = OPERATORS[tile]

    @torch.library.custom_op(
        f"sgcnn::{name}",
        mutates_args=(),
        schema=f"(Tensor x, {_TENSORS}, Tensor? residual, {_GEOMETRY}) -> Tensor",
    )
    def op(x, entries, weights, chunks, rowmap, bias, residual, *geo_relu) -> torch.Tensor:
        geo, relu = _geo(*geo_relu[:-1]), geo_relu[-1]
        _guard(x, entries, weights, chunks, rowmap, bias, geo, tile)
        return conv2d(x, entries, weights, chunks, rowmap, bias, residual, geo, relu, tile=tile)

    @op.register_fake
    def _fake(x, entries, weights, chunks, rowmap, bias, residual, *geo_relu):
        return x.new_empty(_geo(*geo_relu[:-1]).output_shape(x.shape))

    @torch.library.custom_op(
        f"sgcnn::{name}_accumulate_",
        mutates_args=("residual",),
        schema=f"(Tensor(a0!) residual, Tensor x, {_TENSORS}, {_GEOMETRY}) -> ()",
    )
    def op_acc(residual, x, entries, weights, chunks, rowmap, bias, *geo_relu) -> None:
        geo, relu = _geo(*geo_relu[:-1]), geo_relu[-1]
        _guard(x, entries, weights, chunks, rowmap, bias, geo, tile)
        accumulate_(residual, x, entries, weights, chunks, rowmap, bias, geo, relu, tile)

    @op_acc.register_fake
    def _fake_acc(residual, x, entries, weights, chunks, rowmap, bias, *geo_relu):
        return None

    @register_flop_formula(getattr(torch.ops.sgcnn, name))
    def _op_flops(x, entries, weights, chunks, rowmap, bias, residual, *rest, **kwargs):
        return flops_per_weight(x, weights, _geo(*rest[:8]))

    @register_flop_formula(getattr(torch.ops.sgcnn, f"{name}_accumulate_"))
    def _op_acc_flops(residual, x, entries, weights, chunks, rowmap, bias, *rest, **kwargs):
        return flops_per_weight(x, weights, _geo(*rest[:8]))

    return op, op_acc


def _flops(x_shape, weights_shape, geo: Geometry) -> int:
    """FLOPs (2 per multiply-accumulate) the direct kernel executes: every packed weight meets
    every output position once (junk columns of the padded grid not counted)."""
    b, _, hy, wy = geo.output_shape(x_shape)
    positions = b * (hy - 2 * geo.border[0]) * (wy - 2 * geo.border[1])
    return 2 * math.prod(weights_shape) * positions


def _winograd_flops(m: int):
    def flops(x_shape, weights_shape, geo: Geometry) -> int:
        """FLOPs of the Winograd kernel's products: every packed (transformed) weight meets
        every m x m output tile once (the transforms' additions not counted)."""
        b, _, hy, wy = geo.output_shape(x_shape)
        ho, wo = hy - 2 * geo.border[0], wy - 2 * geo.border[1]
        return 2 * math.prod(weights_shape) * b * math.ceil(ho / m) * math.ceil(wo / m)

    return flops


# :func:`conv2d` and :func:`accumulate_` as operators, by kernel: direct (tile 0), Winograd
# F(2x2, 3x3) and F(4x4, 3x3)
dg_conv2d, dg_conv2d_accumulate_ = _register(0, _flops)
wino_conv2d, wino_conv2d_accumulate_ = _register(2, _winograd_flops(2))
wino4_conv2d, wino4_conv2d_accumulate_ = _register(4, _winograd_flops(4))


# --------------------------------------------------------------------------- pooling


def pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size (dilation 1)."""
    span = size + 2 * p - k
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside
        out -= 1
    return out


def max_pool2d(
    x: torch.Tensor,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
    take=None,
) -> torch.Tensor:
    """``F.max_pool2d`` for float32 NCHW CPU tensors (dilation 1), one pass over memory;
    ``take(numel)``, if given, supplies the output's flat storage."""
    lib = _need()
    x = x.contiguous()
    b, c, h, w = x.shape
    ho = pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    numel = b * c * ho * wo
    too_padded = 2 * padding[0] > kernel[0] or 2 * padding[1] > kernel[1]
    if ho < 1 or wo < 1 or numel == 0 or too_padded:
        # PyTorch's answer: an empty output, or its error (too small an input; padding over
        # half the kernel, where a window could hold nothing but padding)
        return F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode)
    flat = take(numel) if take is not None else torch.empty(numel, dtype=x.dtype)
    y = flat.view(b, c, ho, wo)
    if lib.sg_max_pool2d(_ptr(x), _ptr(y), b * c, h, w, *kernel, *stride, *padding, ho, wo):
        raise MemoryError("sgcnn native kernel: out of memory for max pooling's row buffer")
    return y


@torch.library.custom_op("sgcnn::max_pool2d", mutates_args=())
def max_pool2d_op(
    x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool
) -> torch.Tensor:
    """:func:`max_pool2d` as the operator ``sgcnn::max_pool2d``."""
    check_pool(x, kernel, stride, padding)
    return max_pool2d(x, kernel, stride, padding, ceil_mode)


@max_pool2d_op.register_fake
def _max_pool2d_fake(x, kernel, stride, padding, ceil_mode):
    b, c, h, w = x.shape
    ho = pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode)
    wo = pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode)
    return x.new_empty(b, c, ho, wo)
