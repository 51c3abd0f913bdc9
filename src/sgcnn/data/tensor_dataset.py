"""In-memory image dataset with batched augmentation.

Small images (MNIST, CIFAR, synthetic, small ImageFolder trees) are held once as one uint8
tensor ``[N, C, H, W]``; the train, validation and test splits are index views of it. The
DataLoader fetches a whole batch through ``__getitems__``, so random crops, flips, resizing and
normalisation run as a few tensor operations per batch instead of a Python pipeline per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Augment:
    """Training augmentation of small images, as torchvision's ``RandomCrop`` + flip."""

    pad: int = 0  # pixels of zero padding before a random crop back to the image size; 0: none
    flip: bool = False  # random horizontal flip with probability 0.5


class TensorImageDataset(Dataset):
    """Items ``(x, y)``: ``x`` float32 ``[C, H', W']`` normalised, ``y`` an int label.

    ``images`` is uint8 ``[N, C, H, W]``, ``labels`` int ``[N]``; ``indices`` picks the items
    of this view (default: all). ``augment`` is applied at the native size, then the image is
    resized to ``size`` (bilinear, antialiased when shrinking; ``None`` keeps ``H x W``) and
    normalised: ``x = (pixel / 255 - mean) / std`` per channel. Randomness comes from torch's
    global generator, which the DataLoader seeds per worker.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        indices: Tensor | None = None,
        augment: Augment | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], not {images.dtype} {images.shape}"
            )
        self.images = images
        self.labels = labels.to(torch.int64)
        self.indices = torch.arange(len(images)) if indices is None else torch.as_tensor(indices)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.augment = augment
        self.size = tuple(size) if size is not None else tuple(images.shape[2:])
        channels = images.shape[1]
        self._offset = 255.0 * torch.tensor(self.mean).view(1, channels, 1, 1)
        self._scale = 1.0 / (255.0 * torch.tensor(self.std).view(1, channels, 1, 1))

    def view(self, indices, augment: Augment | None) -> TensorImageDataset:
        """Another split of the same images (no copy): ``indices`` into the full image tensor."""
        return TensorImageDataset(
            self.images,
            self.labels,
            self.mean,
            self.std,
            indices=torch.as_tensor(indices, dtype=torch.int64),
            augment=augment,
            size=self.size,
        )

    def renormalised(self, mean: tuple[float, ...], std: tuple[float, ...]) -> TensorImageDataset:
        """The same view normalised with ``mean`` / ``std`` (no copy of the images)."""
        return TensorImageDataset(
            self.images,
            self.labels,
            mean,
            std,
            indices=self.indices,
            augment=self.augment,
            size=self.size,
        )

    @property
    def targets(self) -> list[int]:
        """Labels of this view, in item order."""
        return self.labels[self.indices].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        rows = self.indices[torch.as_tensor(indices, dtype=torch.int64)]
        x = self.images[rows]
        if self.augment is not None:
            x = _augment(x, self.augment)
        x = x.float()
        if self.size != tuple(x.shape[2:]):
            shrink = self.size[0] < x.shape[2] or self.size[1] < x.shape[3]
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=shrink)
        x = x.sub_(self._offset).mul_(self._scale)  # = (x / 255 - mean) / std
        return list(zip(x.unbind(0), self.labels[rows].tolist(), strict=True))


def _augment(x: Tensor, augment: Augment) -> Tensor:
    """Random crop with zero padding, then random horizontal flip, independently per image."""
    n, _, h, w = x.shape
    if augment.pad > 0:
        p = augment.pad
        # All (2p + 1)^2 crop windows as a view [N, C, 2p+1, 2p+1, H, W]; pick one per image.
        windows = F.pad(x, (p, p, p, p)).unfold(2, h, 1).unfold(3, w, 1)
        top = torch.randint(0, 2 * p + 1, (n,))
        left = torch.randint(0, 2 * p + 1, (n,))
        x = windows[torch.arange(n), :, top, left]
    if augment.flip:
        flip = torch.rand(n) < 0.5
        x[flip] = x[flip].flip(3)
    return x


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``images`` ``[N, C, H, W]``, in [0, 1].

    Computed exactly from a 256-bin histogram per channel, without a float copy of the data.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for ch in range(images.shape[1]):
        hist = torch.bincount(images[:, ch].reshape(-1), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * values.square()).sum() / total - mean.square()
        means.append(round(float(mean), 4))
        stds.append(round(max(float(var.clamp_min(0).sqrt()), 1e-3), 4))
    return tuple(means), tuple(stds)
