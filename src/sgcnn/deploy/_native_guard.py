"""The native operators' guard: every value the C kernels index memory with is checked
before they run.

A saved program (``.pt2``, a TorchScript file) calls ``sgcnn::dg_conv2d`` and its kin with
tensors and geometry stored in the file. The kernels trust them: a channel, tap, chunk offset
or output row out of range is a read or write outside the buffers, and a chunk of zero or
more than :data:`RMAX` rows selects no kernel. So the operators refuse, with an
:class:`SgcnnError`, anything the converter would not have written:

- the input: 4-D float32 on the CPU with every channel the layer reads; an ``input_padded``
  input with the :data:`SLACK` floats behind it that such inputs carry;
- the geometry: positive filters, kernel, stride, dilation and block, no negative padding or
  border;
- ``entries`` int32 ``[E, 3]`` (channel, ky, kx), taps inside the kernel, or ``[E]`` channels
  for Winograd; ``chunks`` int64 ``[n, 5]`` (entries, first entry, first weight, rows, first
  row), each inside ``entries``, ``weights`` and ``rowmap``, with 1 to :data:`RMAX` rows;
  ``rowmap`` int64 filters in ``[0, filters)``; ``weights`` and ``bias`` float32 (``filters``
  biases); all contiguous on the CPU.

The tables are checked once per set of tensors and geometry, while none of the tensors has
been written to since (their version counters); the input, every call.
"""

from __future__ import annotations

import weakref

import torch

from sgcnn.errors import SgcnnError

RMAX = 16  # filters per chunk, at most (the kernels are specialised for 1..RMAX)
SLACK = 80  # floats readable past the end of an output (see _native.conv2d)

# (ids, versions, geometry, tile) -> (the tensors, weakly; the largest input channel read)
_CHECKED: dict[tuple, tuple[tuple[weakref.ref, ...], int]] = {}


def _refuse(what: str) -> SgcnnError:
    return SgcnnError(
        f"a native layer's {what}: this program was not written by sgcnn.convert / "
        "sgcnn.export as it is, and is not run"
    )


def _plain(t: torch.Tensor, name: str, dtype: torch.dtype, dims: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.dim() != dims:
        raise _refuse(f"{name} is not a {dims}-D {str(dtype).removeprefix('torch.')} tensor")
    if not t.is_cpu or not t.is_contiguous():
        raise _refuse(f"{name} is not contiguous CPU memory")


def _in_range(t: torch.Tensor, low: int, high: int, name: str) -> None:
    """Every value of ``t`` in ``[low, high)``."""
    if t.numel() and (int(t.min()) < low or int(t.max()) >= high):
        raise _refuse(f"{name} holds values outside [{low}, {high})")


def _check_geometry(geo) -> None:
    positive = (geo.filters, *geo.kernel, *geo.stride, *geo.dilation, geo.block)
    if len(geo.kernel) != 2 or min(positive) < 1 or min(*geo.padding, *geo.border) < 0:
        raise _refuse(f"geometry is impossible ({geo})")


def _check_tables(entries, weights, chunks, rowmap, bias, geo, tile: int) -> int:
    """The tables' checks (see the module docstring); returns the largest channel read."""
    _check_geometry(geo)
    _plain(entries, "entries", torch.int32, 1 if tile else 2)
    _plain(chunks, "chunks", torch.int64, 2)
    _plain(rowmap, "rowmap", torch.int64, 1)
    _plain(weights, "weights", torch.float32, 1)
    _plain(bias, "bias", torch.float32, 1)
    if not tile and entries.shape[1] != 3:
        raise _refuse("entries are not (channel, ky, kx) triples")
    if bias.numel() != geo.filters:
        raise _refuse(f"bias has {bias.numel()} values for {geo.filters} filters")
    channels = entries if tile else entries[:, 0]
    _in_range(channels, 0, 2**31 - 1, "entries (channels)")
    if not tile:
        _in_range(entries[:, 1], 0, geo.kernel[0], "entries (kernel rows)")
        _in_range(entries[:, 2], 0, geo.kernel[1], "entries (kernel columns)")
    _in_range(rowmap, 0, geo.filters, "rowmap (output filters)")
    if chunks.shape[1] != 5:
        raise _refuse("chunks are not (entries, first entry, first weight, rows, first row)")
    count, first, first_weight, rows, first_row = chunks.unbind(1)
    points = (tile + 2) ** 2 if tile else 1
    if chunks.numel() and (
        int(count.min()) < 0
        or int(first.min()) < 0
        or int(first_weight.min()) < 0
        or int(first_row.min()) < 0
        or int(rows.min()) < 1
        or int(rows.max()) > RMAX
        or int((first + count).max()) > entries.shape[0]
        or int((first_weight + count * rows * points).max()) > weights.numel()
        or int((first_row + rows).max()) > rowmap.numel()
    ):
        raise _refuse("chunks point outside entries, weights or rowmap")
    return int(channels.max()) if channels.numel() else -1


def check_tables(entries, weights, chunks, rowmap, bias, geo, tile: int) -> int:
    """:func:`_check_tables`, once per set of tensors (and geometry) not written to since;
    returns the largest input channel the layer reads (-1: none)."""
    tensors = (entries, weights, chunks, rowmap, bias)
    key = (*map(id, tensors), *(getattr(t, "_version", 0) for t in tensors), geo, tile)
    hit = _CHECKED.get(key)
    if hit is not None and all(ref() is t for ref, t in zip(hit[0], tensors, strict=True)):
        return hit[1]
    largest = _check_tables(entries, weights, chunks, rowmap, bias, geo, tile)
    if len(_CHECKED) > 4096:  # forget dead layers' tables now and then
        for k in [k for k, (refs, _) in _CHECKED.items() if any(r() is None for r in refs)]:
            del _CHECKED[k]
    _CHECKED[key] = (tuple(weakref.ref(t) for t in tensors), largest)
    return largest


def check_input(x: torch.Tensor, largest_channel: int, geo) -> None:
    """A float32 CPU input ``[B, C, H, W]`` with every channel the layer reads; with
    ``input_padded``, the :data:`SLACK` floats a padded producer leaves behind it."""
    if x.dim() != 4:
        raise SgcnnError(f"expected a 4-D input [batch, channels, height, width]: {x.shape}")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise SgcnnError(f"the native kernel computes float32 on the CPU: {x.dtype} on {x.device}")
    if largest_channel >= x.shape[1]:
        raise SgcnnError(
            f"this layer reads input channel {largest_channel}, but the input has "
            f"{x.shape[1]} channels; run the program on inputs shaped like its example"
        )
    if geo.input_padded:
        behind = x.untyped_storage().nbytes() // 4 - x.storage_offset() - x.numel()
        if not x.is_contiguous() or behind < SLACK:
            raise _refuse("input is said to come padded from another native layer, and does not")


def check_pool(x: torch.Tensor, kernel, stride, padding) -> None:
    """``sgcnn::max_pool2d``'s arguments: a float32 CPU ``[B, C, H, W]`` input, two positive
    kernel sizes and strides, two paddings of at least 0."""
    if x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        raise SgcnnError(
            f"the native max pooling takes float32 [B, C, H, W] on the CPU: {x.dtype} "
            f"{list(x.shape)} on {x.device}"
        )
    sizes = [list(kernel), list(stride), list(padding)]
    if any(len(s) != 2 for s in sizes) or min(*kernel, *stride) < 1 or min(padding) < 0:
        raise SgcnnError(f"max pooling's kernel {kernel}, stride {stride}, padding {padding}")
