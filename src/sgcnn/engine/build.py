"""Build what a run's config names (datasets, model) and check that they fit each other.

Every mismatch a user can make here gets an :class:`SgcnnError` that says what is wrong and
how to fix it, before any run folder is created: images of the wrong size or channel count for
the model, a model (or checkpoint) with a different number of classes than the dataset, a
checkpoint of another model, a checkpoint whose classifier would be kept for other classes
(or another label order) or for another normalisation than its weights were trained with.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgcnn.data import DatasetSplits, build_datasets
from sgcnn.data.config import class_names_text, close_values, same_classes
from sgcnn.engine.checkpoint import load_checkpoint, model_from_payload, payload_record
from sgcnn.engine.config import Config
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import create_model, model_entry
from sgcnn.nn._modes import eval_mode


def build_data(config: Config) -> DatasetSplits:
    """The train / validation / test splits of ``config.data`` for ``config.model`` (an image
    folder of grayscale images is given as RGB to a registered model of 3 channels); an empty
    split is an error."""
    try:
        model_channels = model_entry(config.model.name).input_size[0]
    except SgcnnError:  # an unknown model is reported where the model is built
        model_channels = None
    splits = build_datasets(config.data, model_channels)
    if len(splits.train) == 0:
        raise SgcnnError(f"dataset {config.data.name!r} has an empty training split")
    if len(splits.test) == 0:
        raise SgcnnError(f"dataset {config.data.name!r} has an empty test split")
    return splits


# What a checkpoint that does not fit asks to check, in the words of every pipeline command
# (recipes and --set); `sgcnn train` / `finetune` spell model.name as --model too.
_PIPELINE_HINT = "Check model.name (--model) and model.num_classes match the checkpoint."


def build_model(config: Config, splits: DatasetSplits) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, kwargs)``: from ``model.checkpoint`` when given (with a fresh classifier for
    this dataset when ``model.reset_classifier``), else freshly initialised (``torch``'s global
    generator, seeded by the caller). The number of classes defaults to the dataset's."""
    m = config.model
    classes = m.num_classes or splits.num_classes
    if m.checkpoint and m.reset_classifier:
        from sgcnn.engine.transfer import load_transferred

        model, _, kwargs, _ = load_transferred(m.checkpoint, m.name, classes)
    elif m.checkpoint:
        payload = load_checkpoint(m.checkpoint)
        model, name, kwargs = model_from_payload(
            payload, m.checkpoint, m.name, classes, hint=_PIPELINE_HINT
        )
        if name != m.name:  # pragma: no cover - model_from_payload refuses this
            raise SgcnnError(f"checkpoint {m.checkpoint!r} holds {name!r}, not {m.name!r}")
        check_checkpoint_data(payload_record(payload), config, splits)
    else:
        kwargs = {"num_classes": classes}
        model = create_model(m.name, **kwargs)
    check_fits(model, config, splits)
    return model, kwargs


def check_checkpoint_data(record: dict | None, config: Config, splits: DatasetSplits) -> None:
    """A checkpoint whose classifier is kept must meet the data its ``record`` describes
    (:func:`sgcnn.data.config.data_record`; ``None``, from a plain state_dict or an older
    sgcnn, is not checked): the same class names in the same order (its outputs are those
    classes; as ``sgcnn eval`` requires), and the same normalisation (what its weights expect
    of their input): data normalised otherwise is an error unless ``data.normalize`` is set
    (the error says which values to set)."""
    if not record:
        return
    source = f"checkpoint {config.model.checkpoint!r}"
    recorded = record.get("classes")
    if recorded is not None and not same_classes(recorded, splits.classes):
        raise SgcnnError(
            f"{source} was trained on classes {class_names_text(recorded)}, but this data "
            f"has {class_names_text(splits.classes)}: its classifier would give the scores of "
            "other classes. "
            "Use the same classes in the same order (data.classes), or `sgcnn transfer` for a "
            "new task (it replaces the classifier)"
        )
    mean, std = record.get("mean"), record.get("std")
    if config.data.normalize is not None or not mean or not std:
        return  # set by the user: that choice stands
    if close_values(mean, splits.mean) and close_values(std, splits.std):
        return
    what = (
        f"{source} was trained on images normalised with mean {_values(mean)} / std "
        f"{_values(std)}, but dataset {config.data.name!r} gives mean {_values(splits.mean)} / "
        f"std {_values(splits.std)}"
    )
    raise SgcnnError(
        f"{what}. Set data.normalize=[{_values(mean)}, {_values(std)}] to give the weights "
        "what they were trained on, or set it to the data's own values to keep those"
    )


def _values(values) -> str:
    return "[" + ", ".join(f"{float(v):.6g}" for v in values) + "]"


@torch.no_grad()
def check_fits(model: nn.Module, config: Config, splits: DatasetSplits) -> None:
    """Run two blank images of the dataset's size through ``model``: it must accept them and
    answer one score per class of the dataset."""
    name, data = config.model.name, config.data.name
    size = tuple(splits.input_size)
    expected = model_entry(name).input_size
    try:
        param = next(model.parameters())
        with eval_mode(model):
            out = model(torch.zeros(2, *size, dtype=param.dtype, device=param.device))
    except RuntimeError as err:
        hint = (
            f"set data.image_size={expected[1]}"
            if size[0] == expected[0]
            else f"use a model for {size[0]}-channel images"
        )
        raise SgcnnError(
            f"dataset {data!r} gives images of {'x'.join(map(str, size))} (CxHxW) but model "
            f"{name!r} expects {'x'.join(map(str, expected))}: {hint}, or choose another model "
            f"({str(err).splitlines()[0][:160]})"
        ) from err
    if out.dim() != 2 or out.shape[1] != splits.num_classes:
        got = out.shape[1] if out.dim() == 2 else tuple(out.shape[1:])
        source = f"checkpoint {config.model.checkpoint!r}" if config.model.checkpoint else "model"
        raise SgcnnError(
            f"{source} ({name}) gives {got} class scores but dataset {data!r} has "
            f"{splits.num_classes} classes: set model.num_classes={splits.num_classes}, or use "
            "a checkpoint trained on this dataset"
        )
