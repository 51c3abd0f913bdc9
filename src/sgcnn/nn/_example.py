"""One example image for a model, from any of the ways sgcnn's API accepts an input size."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from sgcnn.errors import SgcnnError


def example_image(model: nn.Module, input_size: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """One zero image ``[1, C, H, W]`` (or the first image of an example tensor), on the
    model's device and in its floating dtype."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if isinstance(input_size, torch.Tensor):
        if input_size.dim() not in (3, 4) or input_size.numel() == 0:
            raise SgcnnError(
                "an example input must be a tensor [N, C, H, W] or [C, H, W], got shape "
                f"{tuple(input_size.shape)}"
            )
        image = input_size[:1] if input_size.dim() == 4 else input_size[None]
        return image.to(device=device, dtype=dtype)
    if _is_int(input_size):
        input_size = (input_size, input_size)
    if hasattr(input_size, "tolist") and getattr(input_size, "ndim", None) == 1:
        input_size = input_size.tolist()  # a 1-D numpy array of sizes
    sequence = isinstance(input_size, Sequence) and not isinstance(input_size, str)
    if not sequence or not all(_is_int(s) for s in input_size):
        raise SgcnnError(
            f"input_size must be H, (H, W), (C, H, W) or (N, C, H, W) in whole pixels, or an "
            f"example tensor; got {input_size!r}"
        )
    size = tuple(int(s) for s in input_size)
    if len(size) == 4:  # (N, C, H, W): counts are per image, whatever N
        size = size[1:]
    if len(size) == 2:
        first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        size = (first.in_channels if first is not None else 3, *size)
    if len(size) != 3 or min(size) < 1:
        raise SgcnnError(
            f"input_size must be H, (H, W), (C, H, W) or (N, C, H, W), got {input_size!r}"
        )
    return torch.zeros(1, *size, device=device, dtype=dtype)


def _is_int(value) -> bool:
    """A whole number (Python or numpy integer), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
