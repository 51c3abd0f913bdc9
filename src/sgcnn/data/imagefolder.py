"""``imagefolder``: a ``train/`` + ``val/`` and/or ``test/`` tree of class folders.

``root`` is the tree, a folder holding it as its only subfolder, or a tar archive of either
(extracted once into the cache, see :mod:`sgcnn.data.cache`). Splits:

- ``val/`` and ``test/`` both present: they are the validation and test splits;
- only one of them: it is the test split, and validation is carved from ``train/``
  (stratified, ``val_fraction``, ``split_seed``). ImageNet's ``val/`` is its test set this way.

Class names are the subfolders of ``train/`` (sorted; label = position), or the subset that
``classes`` names (label = position in that list; e.g. one domain of a dataset split by class);
images may sit in nested folders below them. Small images (both sides <= 64 px, like CIFAR) are
decoded once into a uint8 tensor, cached on disk, and served with CIFAR-style augmentation
(random crop with padding 4 + flip) and per-channel mean / std measured on the training split
(``train/`` less any validation images carved from it); they are one channel when every
image is grayscale, unless the model takes 3 (``model_channels``). Larger
images are decoded per item with ImageNet-style transforms
(:func:`~sgcnn.data.file_dataset.imagenet_transforms`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sgcnn.data.cache import cache_root, extract_archive, load_tensors, locked, save_tensors
from sgcnn.data.config import DataConfig, DatasetSplits
from sgcnn.data.file_dataset import (
    WIDE_GRAY_MODES,
    FileImageDataset,
    convert_8bit,
    imagenet_transforms,
)
from sgcnn.data.splits import stratified_split
from sgcnn.data.tensor_dataset import Augment, TensorImageDataset, channel_stats
from sgcnn.errors import SgcnnError

# What PIL raises for a file it cannot decode: OSError (truncated, unidentified), ValueError
# (odd modes, tiles), DecompressionBombError (more pixels than PIL will open).
UNREADABLE = (OSError, ValueError, Image.DecompressionBombError)


log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SMALL_IMAGE_MAX = 64  # pixels: images up to this size on both sides are held in memory
LARGE_DEFAULT_SIZE = 224  # pixels: ImageNet-style crop size when image_size is not given
_GRAY_MODES = {"1", "L", "LA", "F", *WIDE_GRAY_MODES}
_DECODE_CACHE_VERSION = 2  # 2: 16-bit images scaled, not clipped; the folder's own path keyed
_DECODED_KEYS = {"images", "labels", "mean", "std"}

Sample = tuple[str, int, int, int]  # (path, label, size in bytes, mtime in ns)


def build_imagefolder(config: DataConfig, model_channels: int | None = None) -> DatasetSplits:
    """The three splits of the tree at ``config.root`` (see the module docstring); grayscale
    images are given as RGB when the model takes 3 channels (``model_channels``)."""
    tree = find_tree(config)
    classes = _class_names(tree / "train")
    skip: set[str] = set()
    if config.classes is not None:  # a subset of the classes, labelled in the given order
        missing = [name for name in config.classes if name not in classes]
        if missing:
            raise SgcnnError(
                f"classes {', '.join(missing)} are not class folders of {tree / 'train'} (it "
                f"has: {', '.join(classes[:20])}). Fix data.classes."
            )
        skip = set(classes) - set(config.classes)
        classes = list(config.classes)
    class_index = {name: i for i, name in enumerate(classes)}
    train = _scan(tree / "train", class_index, skip)
    held_out = [name for name in ("val", "test") if _is_dir(tree / name)]
    held = {name: _scan(tree / name, class_index, skip) for name in held_out}
    if not held:
        raise SgcnnError(
            f"{tree} has train/ but neither val/ nor test/. Add a held-out test/ folder of class "
            "folders (validation is then carved from train/)."
        )
    width, height, channels = _probe(train)
    if channels == 1 and model_channels == 3:  # gray images for a model of colour images
        channels = 3
    if max(width, height) <= SMALL_IMAGE_MAX:
        return _small_splits(config, tree, classes, train, held, (channels, height, width))
    return _large_splits(config, classes, train, held)


def _probe(train: list[tuple], samples: int = 16) -> tuple[int, int, int]:
    """``(width, height, channels)`` of the training images, from ``samples`` images spread over
    the list: the most common size (one odd thumbnail does not set the size of all), and 1
    channel only if every one of them is grayscale (an RGB set may hold a few gray images)."""
    step = max(1, len(train) // samples)
    channels, sizes = 1, []
    for path, *_ in train[::step][:samples]:
        try:
            with Image.open(path) as probe:
                sizes.append(probe.size)
                if probe.mode not in _GRAY_MODES:
                    channels = 3
        except UNREADABLE as err:
            raise SgcnnError(
                f"cannot read image {path}: {err}. Remove or replace the file and run again."
            ) from err
    (width, height), _ = Counter(sizes).most_common(1)[0]
    return width, height, channels


def find_tree(config: DataConfig) -> Path:
    """The folder holding ``train/`` for ``config.root``, extracting an archive when needed."""
    if not config.root:
        raise SgcnnError(
            "dataset 'imagefolder' needs root: a folder with train/ and val/ or test/ class "
            "folders, or a .tar.gz of one."
        )
    root = Path(config.root).expanduser()
    if not root.exists():
        raise SgcnnError(f"data root {root} does not exist. Check the path given as root.")
    if not os.access(root, os.R_OK):
        raise SgcnnError(f"data root {root} is not readable. Check its permissions.")
    if root.is_file():
        if not tarfile_like(root):
            raise SgcnnError(
                f"data root {root} is a file but not a tar archive. Give a folder with train/ "
                "and val/ or test/ class folders, or a .tar / .tar.gz of one."
            )
        root = extract_archive(root, cache_root(config.cache_dir))
    if _is_dir(root / "train"):
        return root
    subfolders = [p for p in _listdir(root) if _is_dir(p) and not p.name.startswith((".", "__"))]
    if len(subfolders) == 1 and _is_dir(subfolders[0] / "train"):
        return subfolders[0]
    found = ", ".join(sorted(p.name for p in subfolders)) or "nothing"
    raise SgcnnError(
        f"no train/ folder in {config.root} (found: {found}). An imagefolder root holds train/ "
        "and val/ or test/, each with one subfolder of images per class."
    )


def tarfile_like(path: Path) -> bool:
    """Whether ``path`` is named like a tar archive (its content is checked on extraction)."""
    return path.name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


def _small_splits(config, tree, classes, train, held, shape) -> DatasetSplits:
    cache = cache_root(config.cache_dir)
    size = (config.image_size, config.image_size) if config.image_size else shape[1:]
    decoded = _decode_cached(train, shape, cache, tree / "train")
    if len(held) == 2:
        kept, carved = np.arange(len(train)), None
    else:
        labels = decoded["labels"].numpy()
        kept, carved = stratified_split(labels, config.val_fraction, config.split_seed)
    mean = tuple(decoded["mean"].tolist())  # measured on train/ only
    std = tuple(decoded["std"].tolist())
    if carved is not None and len(carved) and config.normalize is None:
        mean, std = channel_stats(decoded["images"][torch.from_numpy(kept)])  # not on val

    def dataset(data: dict) -> TensorImageDataset:
        return TensorImageDataset(data["images"], data["labels"], mean, std, size=size)

    full_train = dataset(decoded)
    if carved is None:
        val = dataset(_decode_cached(held["val"], shape, cache, tree / "val"))
    else:
        val = full_train.view(carved, None)
    name, samples = list(held.items())[-1]
    test = dataset(_decode_cached(samples, shape, cache, tree / name))
    augment = Augment(pad=4, flip=True) if config.augment else None
    return DatasetSplits(
        train=full_train.view(kept, augment),
        val=val,
        test=test,
        num_classes=len(classes),
        input_size=(shape[0], *size),
        classes=classes,
        mean=mean,
        std=std,
        in_memory=True,
    )


def _large_splits(config, classes, train, held) -> DatasetSplits:
    size = config.image_size or LARGE_DEFAULT_SIZE
    pairs = [(path, label) for path, label, _, _ in train]
    if len(held) == 2:
        val = [(p, y) for p, y, _, _ in held["val"]]
        test = [(p, y) for p, y, _, _ in held["test"]]
    else:
        labels = np.array([label for _, label in pairs])
        kept, carved = stratified_split(labels, config.val_fraction, config.split_seed)
        val = [pairs[i] for i in carved]
        pairs = [pairs[i] for i in kept]
        test = [(p, y) for p, y, _, _ in next(iter(held.values()))]
    train_tf = imagenet_transforms(size, train=config.augment)
    eval_tf = imagenet_transforms(size, train=False)
    return DatasetSplits(
        train=FileImageDataset(pairs, train_tf),
        val=FileImageDataset(val, eval_tf),
        test=FileImageDataset(test, eval_tf),
        num_classes=len(classes),
        input_size=(3, size, size),
        classes=classes,
        mean=train_tf.transforms[-1].mean,
        std=train_tf.transforms[-1].std,
    )


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _listdir(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise SgcnnError(f"cannot list {folder}: {err}. Check the path and permissions.") from err


def _class_names(train: Path) -> list[str]:
    names = [p.name for p in _listdir(train) if _is_dir(p) and not p.name.startswith(".")]
    if not names:
        raise SgcnnError(
            f"{train} holds no class folders. Put each class's images in its own subfolder, "
            "e.g. train/cat/0001.jpg."
        )
    if len(names) == 1:  # every prediction would be right: Top-1 100 % of nothing
        raise SgcnnError(
            f"{train} holds one class folder ({names[0]}); a classifier needs at least 2 "
            "classes, each in its own subfolder."
        )
    return names


def _scan(split: Path, class_index: dict[str, int], skip: set[str] = frozenset()) -> list[Sample]:
    """Image files of ``split/<class>/**``, sorted by class, then path; folders in ``skip``
    (classes left out by ``classes``) are ignored."""
    folders = [
        p
        for p in _listdir(split)
        if _is_dir(p) and not p.name.startswith(".") and p.name not in skip
    ]
    unknown = sorted(p.name for p in folders if p.name not in class_index)
    if unknown:
        raise SgcnnError(
            f"{split} has class folders that train/ lacks: {', '.join(unknown[:10])}. Every "
            "split must use the class folders of train/."
        )
    samples: list[Sample] = []
    for folder in sorted(folders, key=lambda p: class_index[p.name]):
        found = _scan_class(str(folder), class_index[folder.name])
        if not found and split.name == "train":
            raise SgcnnError(
                f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}). Add "
                "images or remove the folder."
            )
        samples.extend(found)
    if not samples:
        raise SgcnnError(f"{split} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return samples


def _scan_class(folder: str, label: int) -> list[Sample]:
    """Image files below ``folder`` (recursively), sorted by path. Plain strings and
    ``os.scandir``: a 50,000-image folder takes a fraction of a second."""
    found: list[Sample] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise SgcnnError(f"cannot read {folder}: {err}. Check its permissions.") from err
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_scan_class(entry.path, label))
        elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
            try:
                stat = entry.stat()
            except OSError as err:  # e.g. a link to a file that is gone
                raise SgcnnError(
                    f"cannot read image {entry.path}: {err.strerror or err}. Remove or replace "
                    "the file and run again."
                ) from err
            found.append((entry.path, label, stat.st_size, stat.st_mtime_ns))
    return found


def _decode_cached(samples: list[Sample], shape, cache: Path, split: Path) -> dict:
    """``{"images": uint8 [N, C, H, W], "labels": int64 [N], "mean", "std": [C]}`` of
    ``samples`` (per-channel statistics in [0, 1]), decoded once.

    The cache file is keyed by the folder's absolute path, every file's relative path, label,
    size and modification time, and by ``shape``: any change to the folder decodes it again,
    and two folders never share an entry (archives packed with fixed modification times give
    equal-sized images equal keys otherwise).
    """
    digest = hashlib.sha1(f"v{_DECODE_CACHE_VERSION}:{shape}:{split.resolve()}".encode())
    skip = len(str(split)) + 1
    for path, label, nbytes, mtime in samples:
        digest.update(f"{path[skip:]}:{label}:{nbytes}:{mtime}\n".encode())
    file = cache / "decoded" / f"{split.parent.name}-{split.name}-{digest.hexdigest()[:16]}.pt"
    cached = _load_decoded(file, (len(samples), *shape))
    if cached is not None:
        return cached
    file.parent.mkdir(parents=True, exist_ok=True)
    with locked(file):
        cached = _load_decoded(file, (len(samples), *shape))  # written while we waited?
        if cached is not None:
            return cached
        return _decode_and_save(samples, shape, file)


def _load_decoded(file: Path, shape: tuple[int, ...]) -> dict | None:
    cached = load_tensors(file)
    if cached is None or set(cached) != _DECODED_KEYS or cached["images"].shape != shape:
        return None
    return cached


def _decode_and_save(samples: list[Sample], shape, file: Path) -> dict:
    log.info("decoding %d images (once; cached as %s)", len(samples), file)
    images = _decode_all(samples, shape)
    mean, std = channel_stats(images)
    decoded = {
        "images": images,
        "labels": torch.tensor([label for _, label, _, _ in samples], dtype=torch.int64),
        "mean": torch.tensor(mean, dtype=torch.float64),
        "std": torch.tensor(std, dtype=torch.float64),
    }
    try:
        save_tensors(decoded, file)
    except (OSError, RuntimeError) as err:  # e.g. a full disk: the decoded images still serve
        warnings.warn(
            f"could not cache the decoded images in {file} ({err}); continuing without the "
            "cache, which means decoding them again next time (free space in $SGCNN_CACHE)",
            stacklevel=2,
        )
    return decoded


def _decode_all(samples: list[Sample], shape) -> torch.Tensor:
    """Decode every image with PIL into one uint8 tensor ``[N, *shape]`` (about 0.15 ms per
    32 x 32 JPEG); images of another size are resized (bilinear) to ``shape``."""
    channels, height, width = shape
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(samples), height, width, channels), dtype=np.uint8)
    for i, (path, _, _, _) in enumerate(samples):
        try:
            with Image.open(path) as image:
                image = convert_8bit(image, mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                array = np.asarray(image)
        except UNREADABLE as err:
            raise SgcnnError(
                f"cannot read image {path}: {err}. Remove or replace the file and run again."
            ) from err
        out[i] = array.reshape(height, width, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
