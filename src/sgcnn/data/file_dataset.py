"""Image files decoded per item, with ImageNet-style transforms (large images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms

from sgcnn.errors import SgcnnError

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
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:  # cannot decode
            raise SgcnnError(
                f"cannot read image {path}: {err}. Remove or replace the file and run again."
            ) from err
        return self.transform(rgb), label
