"""``build_datasets(config)``: the registry of dataset names and the checks on a config."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Callable
from dataclasses import replace

from sgcnn.data.builtin import build_mnist5k, build_synthetic
from sgcnn.data.config import DataConfig, DatasetSplits
from sgcnn.data.imagefolder import build_imagefolder
from sgcnn.data.torchvision_sets import SOURCES, build_torchvision
from sgcnn.errors import SgcnnError

_BUILDERS: dict[str, Callable[[DataConfig], DatasetSplits]] = {
    "mnist5k": build_mnist5k,
    **{name: build_torchvision for name in SOURCES},
    "imagefolder": build_imagefolder,
    "synthetic": build_synthetic,
}


def list_datasets() -> list[str]:
    """Names :func:`build_datasets` accepts, sorted."""
    return sorted(_BUILDERS)


def build_datasets(config: DataConfig, model_channels: int | None = None) -> DatasetSplits:
    """Train / validation / test splits of the dataset ``config`` describes.

    Items are ``(float32 [C, H, W] normalised, int label)``; the validation split never comes
    from the test data and is never augmented. Every user mistake (unknown name, bad fraction,
    missing or corrupt data) raises :class:`SgcnnError` saying what to do. ``model_channels``:
    the channels of the model the data is for; an image folder of grayscale images is given
    as RGB to a model of 3 channels (as large images always are).
    """
    _check(config)
    if config.name == "imagefolder":
        splits = build_imagefolder(config, model_channels)
    else:
        splits = _BUILDERS[config.name](config)
    return splits if config.normalize is None else _normalised(splits, config.normalize)


def _normalised(splits: DatasetSplits, normalize: list[list[float]]) -> DatasetSplits:
    """``splits`` normalised with ``normalize = [mean, std]`` (the statistics a model was
    trained with) in place of the dataset's own."""
    mean, std = (tuple(float(x) for x in v) for v in normalize)
    if len(mean) != splits.input_size[0]:
        raise SgcnnError(
            f"data.normalize gives {len(mean)} values per channel list; the images have "
            f"{splits.input_size[0]} channel(s)"
        )
    train, val, test = (d.renormalised(mean, std) for d in (splits.train, splits.val, splits.test))
    return replace(splits, train=train, val=val, test=test, mean=mean, std=std)


def _check(config: DataConfig) -> None:
    if config.name not in _BUILDERS:
        close = difflib.get_close_matches(str(config.name), _BUILDERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SgcnnError(
            f"unknown dataset {config.name!r}.{hint} Valid datasets: {', '.join(list_datasets())}."
        )
    fraction = config.val_fraction
    if not _is_real(fraction) or not 0 <= fraction < 1:
        raise SgcnnError(
            f"val_fraction must be a number in [0, 1), got {fraction!r} "
            "(e.g. 0.1 holds out a tenth of the training data for validation)."
        )
    _check_int(config.split_seed, "split_seed", minimum=0)
    if config.image_size is not None:
        _check_int(config.image_size, "image_size", minimum=8)
    if config.classes is not None:
        _check_classes(config)
    if config.normalize is not None:
        _check_normalize(config.normalize)
    if config.name == "synthetic":
        _check_int(config.num_classes, "num_classes", minimum=2)
        _check_int(config.channels, "channels", minimum=1)
        _check_int(config.synthetic_size, "synthetic_size", minimum=config.num_classes)


def _check_classes(config: DataConfig) -> None:
    if config.name != "imagefolder":
        raise SgcnnError(
            f"classes selects class folders of an imagefolder dataset, not of {config.name!r}: "
            "remove data.classes or use data.name=imagefolder."
        )
    names = config.classes
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise SgcnnError(f"classes must be a list of class folder names, got {names!r}.")
    if len(names) < 2:
        raise SgcnnError(
            f"classes names {len(names)} class ({names}); a classifier needs at least 2 classes."
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SgcnnError(f"classes names {', '.join(repeated)} more than once.")


def _check_normalize(value) -> None:
    pair = isinstance(value, (list, tuple)) and len(value) == 2
    lists = pair and all(isinstance(v, (list, tuple)) and v for v in value)
    numbers_ = lists and all(_is_real(x) for v in value for x in v)
    if not numbers_ or len(value[0]) != len(value[1]):
        raise SgcnnError(
            f"normalize must be [mean, std], two lists of one number per channel, e.g. "
            f"[[0.49, 0.48, 0.45], [0.25, 0.24, 0.26]]; got {value!r}."
        )
    if not all(x > 0 for x in value[1]):
        raise SgcnnError(f"normalize's std values must be > 0, got {list(value[1])}.")


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_int(value, name: str, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise SgcnnError(f"{name} must be an integer >= {minimum}, got {value!r}.")
