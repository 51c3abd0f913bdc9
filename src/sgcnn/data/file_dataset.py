"""Image files decoded per item, with ImageNet-style transforms (large images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from sgcnn.errors import SgcnnError

# Grayscale modes of more than 8 bits: PIL's convert() clips them at 255 (a 16-bit image
# becomes nearly black and white), so :func:`convert_8bit` scales them first.
WIDE_GRAY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


def convert_8bit(image: Image.Image, mode: str) -> Image.Image:
    """A loaded copy of ``image`` in ``mode`` (``"L"`` or ``"RGB"``), 8 bits per channel.
    16-bit grayscale (and PIL's 32-bit integer mode ``I``, how PIL opens most 16-bit files) is
    scaled ``v / 257`` (0..65535 to 0..255) rather than clipped; 32-bit float images are
    refused, since their range is unknown (``ValueError``, reported as an unreadable image)."""
    if image.mode == "F":
        raise ValueError("32-bit float image; save it as an 8- or 16-bit image")
    if image.mode in WIDE_GRAY_MODES:
        wide = np.asarray(image).astype(np.float64)
        image = Image.fromarray((wide / 257).round().clip(0, 255).astype(np.uint8), "L")
    return image.convert(mode)  # a loaded copy even in the same mode: the file may be closed


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transforms(size: int, train: bool) -> Callable:
    """ImageNet recipe. Train: ``RandomResizedCrop(size)`` + horizontal flip. Eval:
    ``Resize(size * 256 / 224)`` (shorter side) + ``CenterCrop(size)``. Both then scale to
    [0, 1] and normalise with the ImageNet mean / std."""
    if train:
        head = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        head = [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
    return transforms.Compose(
        [*head, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


class FileImageDataset(Dataset):
    """Items ``(transform(RGB image), label)`` read from ``samples = [(path, label), ...]``."""

    def __init__(self, samples: list[tuple[str | Path, int]], transform: Callable) -> None:
        self.samples = samples
        self.transform = transform

    def renormalised(self, mean: tuple[float, ...], std: tuple[float, ...]) -> FileImageDataset:
        """The same samples, their transform's final ``Normalize`` using ``mean`` / ``std``."""
        steps = list(self.transform.transforms)
        steps[-1] = transforms.Normalize(mean, std)
        return FileImageDataset(self.samples, transforms.Compose(steps))

    @property
    def targets(self) -> list[int]:
        """Labels, in item order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = convert_8bit(image, "RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # cannot decode
            raise SgcnnError(
                f"cannot read image {path}: {err}. Remove or replace the file and run again."
            ) from err
        return self.transform(rgb), label
