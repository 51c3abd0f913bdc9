"""``mnist``, ``cifar10``, ``cifar100`` through torchvision, downloaded only when asked.

The decoded images torchvision holds are moved into a :class:`TensorImageDataset` (one uint8
tensor, batched augmentation). Validation is carved from the official training split
(stratified, ``val_fraction``, ``split_seed``) and served without augmentation; the official
test split is the test split.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets

from sgcnn.data.builtin import MNIST_MEAN, MNIST_STD
from sgcnn.data.cache import cache_root, locked
from sgcnn.data.config import DataConfig, DatasetSplits
from sgcnn.data.splits import stratified_split
from sgcnn.data.tensor_dataset import Augment, TensorImageDataset
from sgcnn.errors import SgcnnError


@dataclass(frozen=True)
class _Source:
    cls: type  # torchvision dataset class
    folder: str  # what torchvision looks for under root
    mean: tuple[float, ...]  # per-channel mean of the training images, pixels in [0, 1]
    std: tuple[float, ...]
    augment: Augment


_CIFAR = Augment(pad=4, flip=True)  # RandomCrop(32, padding=4) + RandomHorizontalFlip
SOURCES = {
    "mnist": _Source(datasets.MNIST, "MNIST/raw/", MNIST_MEAN, MNIST_STD, Augment(pad=2)),
    "cifar10": _Source(
        datasets.CIFAR10,
        "cifar-10-batches-py/",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        _CIFAR,
    ),
    "cifar100": _Source(
        datasets.CIFAR100,
        "cifar-100-python/",
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        _CIFAR,
    ),
}


def default_root(config: DataConfig) -> Path:
    """``root``, or ``<cache>/datasets`` when none is given."""
    if config.root:
        return Path(config.root).expanduser()
    return cache_root(config.cache_dir) / "datasets"


def build_torchvision(config: DataConfig) -> DatasetSplits:
    """The torchvision dataset ``config.name`` as train / val / test (see the module doc)."""
    source = SOURCES[config.name]
    root = default_root(config)
    train, test = (_open(source, config, root, train=flag) for flag in (True, False))
    images, labels = _images(train), torch.as_tensor(train.targets, dtype=torch.int64)
    kept, carved = stratified_split(labels.numpy(), config.val_fraction, config.split_seed)
    size = (config.image_size,) * 2 if config.image_size else tuple(images.shape[2:])
    full = TensorImageDataset(images, labels, source.mean, source.std, size=size)
    test_labels = torch.as_tensor(test.targets, dtype=torch.int64)
    return DatasetSplits(
        train=full.view(kept, source.augment if config.augment else None),
        val=full.view(carved, None),
        test=TensorImageDataset(_images(test), test_labels, source.mean, source.std, size=size),
        num_classes=len(train.classes),
        input_size=(images.shape[1], *size),
        classes=_class_names(config.name, train.classes),
        mean=source.mean,
        std=source.std,
        in_memory=True,
    )


def _class_names(name: str, classes: list[str]) -> list[str]:
    """torchvision's class names, except MNIST's ("0 - zero", ...), recorded as ``mnist5k``'s
    ("0" .. "9") so that a model of either digit set is evaluated on the other."""
    return [c.split(" - ")[0] for c in classes] if name == "mnist" else list(classes)


def _open(source: _Source, config: DataConfig, root: Path, train: bool):
    if not config.download:
        return _open_unlocked(source, config, root, train)
    # One downloader at a time (DDP ranks, two runs): the next finds the files and checks them.
    with locked(cache_root(config.cache_dir) / f"download-{config.name}"):
        return _open_unlocked(source, config, root, train)


def _open_unlocked(source: _Source, config: DataConfig, root: Path, train: bool):
    top = root / Path(source.folder).parts[0]  # e.g. MNIST of MNIST/raw/
    new = [p for p in (root, top) if not p.exists()]
    try:
        return source.cls(str(root), train=train, download=config.download)
    except (RuntimeError, OSError, ValueError, AssertionError, EOFError, IndexError) as err:
        # RuntimeError / OSError: missing files or checksums; the rest: files torchvision
        # cannot parse (e.g. an empty MNIST idx file: no checksum without download)
        if config.download:
            for folder in reversed(new):  # what the failed download created, and nothing else
                shutil.rmtree(folder, ignore_errors=True)
            raise SgcnnError(
                f"could not download {config.name} into {root}: {err}. Check the internet "
                f"connection, or fetch it elsewhere and point root at the folder holding "
                f"{source.folder}."
            ) from err
        if (root / source.folder).is_dir():
            raise SgcnnError(
                f"dataset {config.name} under {root / source.folder} fails torchvision's checksum "
                "(a file is corrupt, incomplete or missing); delete that folder and fetch it "
                "again (--set data.download=true), or point data.root at a good copy."
            ) from err
        raise SgcnnError(
            f"dataset {config.name} not found under {root} (torchvision looks for "
            f"{source.folder} there). Fetch it with --set data.download=true (needs the "
            "internet), or point data.root at the folder that holds it (--set data.root=PATH)."
        ) from err


def _images(dataset) -> torch.Tensor:
    """torchvision's decoded images as uint8 ``[N, C, H, W]``."""
    data = torch.as_tensor(dataset.data)
    if data.dim() == 3:  # MNIST: [N, H, W]
        return data.unsqueeze(1).contiguous()
    return data.permute(0, 3, 1, 2).contiguous()  # CIFAR: [N, H, W, C]
