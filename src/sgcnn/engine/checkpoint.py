"""Checkpoints: atomic writes, safe loads, and a format that rebuilds the model.

A model checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {"format": "sgcnn.model", "version": 1,
     "model": {"name": "resnet50", "kwargs": {"num_classes": 1000}},
     "masked": ["layer1.0.conv1", ...],          # self-grouped layers
     "state_dict": {...},                        # weights, masks, labels, kept sets
     ...}                                        # callers may add config, metrics, ...

Writes go through :func:`sgcnn._io.atomic_write` (temporary file in the target folder, fsync,
rename), so a crash never leaves a half-written checkpoint behind. Loading refuses empty,
truncated and non-PyTorch files, and weights that are not finite (NaN or infinity).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sgcnn._io import atomic_write
from sgcnn.deploy._pt2_check import looks_like_pt2
from sgcnn.errors import SgcnnError, describe
from sgcnn.models.registry import create_model
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear, is_masked
from sgcnn.nn.swap import replace_modules_

FORMAT = "sgcnn.model"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """``torch.save(payload)`` to ``path`` atomically."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; user-facing errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise SgcnnError(_folder_not_checkpoint(path))
    if not path.is_file():
        raise SgcnnError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise SgcnnError(f"checkpoint {str(path)!r} is empty (0 bytes); write it again")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SgcnnError(_unreadable(path, err)) from err
    if not isinstance(payload, dict):
        raise SgcnnError(f"checkpoint {str(path)!r} holds a {type(payload).__name__}, not a dict")
    return payload


def _folder_not_checkpoint(path: Path) -> str:
    """What to pass instead of a folder: the ``model.pt`` in it (``sgcnn group``, ``train``,
    ``finetune`` write one there), or those of its row folders (a run folder)."""
    inside = path / "model.pt"
    if inside.is_file():
        return f"checkpoint {str(path)!r} is a folder; the checkpoint in it is {str(inside)!r}"
    rows = sorted(str(p) for p in path.glob("*/model.pt"))
    if rows:
        listed = ", ".join(repr(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        return (
            f"checkpoint {str(path)!r} is a folder (a run folder?); pass one of the checkpoints "
            f"in it: {listed}"
        )
    return f"checkpoint {str(path)!r} is a folder, not a checkpoint file, and holds no model.pt"


def _unreadable(path: Path, err: BaseException) -> str:
    """Why ``path`` is not a checkpoint: a program written by sgcnn, or a broken file."""
    uses = (
        "training, grouping, converting and exporting take the self-grouped checkpoint "
        "(model.pt) it was made from"
    )
    if looks_like_pt2(path):
        return (
            f"{str(path)!r} is a converted program (.pt2), not a checkpoint: `sgcnn eval` "
            f"evaluates it and sgcnn.load(path) runs it; {uses}"
        )
    if path.suffix.lower() == ".onnx":
        return (
            f"{str(path)!r} is an ONNX model, not a checkpoint: `sgcnn eval` evaluates it in "
            f"onnxruntime; {uses}"
        )
    return (
        f"cannot read checkpoint {str(path)!r}: it is corrupt, truncated or not a PyTorch "
        f"checkpoint ({describe(err)})"
    )


def model_payload(model: nn.Module, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint dict that rebuilds ``model`` (registered as ``name`` with ``kwargs``)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": name, "kwargs": dict(kwargs)},
        "masked": [n for n, m in model.named_modules() if is_masked(m)],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def attach_masks_(model: nn.Module, names: list[str]) -> None:
    """Swap the named Conv2d / Linear layers of ``model`` for masked ones (all-ones masks)."""
    wanted = set(names)
    found = replace_modules_(
        model,
        lambda m, n: n in wanted and isinstance(m, (nn.Conv2d, nn.Linear)) and not is_masked(m),
        lambda m, n: (MaskedConv2d if isinstance(m, nn.Conv2d) else MaskedLinear).from_dense(m),
    )
    already = {n for n, m in model.named_modules() if is_masked(m)}
    missing = wanted - set(found) - already
    if missing:
        raise SgcnnError(
            f"the checkpoint names self-grouped layers the model does not have: "
            f"{sorted(missing)[:5]}; was it made for another model?"
        )


# What a mismatch asks the user to check; callers whose command lacks these options pass theirs.
CHECK_OPTIONS = "Check --model and --num-classes match the checkpoint."
WRAPPER_PREFIX = "module."  # nn.DataParallel / DistributedDataParallel's, on every key
LISTED = 5  # names of missing / unexpected keys an error lists


def load_state_dict_(
    model: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    hint: str | None = None,
) -> None:
    """``model.load_state_dict(state_dict)`` with an error that explains a mismatch (the first
    few missing, unexpected and misshapen keys, with their counts, then ``hint``: what to
    check, default :data:`CHECK_OPTIONS`); weights that are not finite (NaN, infinity) are
    refused: nothing trained or grouped from them means anything."""
    check_finite(state_dict, source)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise SgcnnError(
            f"checkpoint {source!r} does not fit model {type(model).__name__}: "
            f"{_mismatch(model, state_dict) or str(err).splitlines()[0][:300]}. "
            f"{CHECK_OPTIONS if hint is None else hint}"
        ) from err


def _mismatch(model: nn.Module, state_dict: dict[str, Any]) -> str:
    """``"missing keys (62): a, b, ... and 57 more; unexpected keys ...; ..."``."""
    own = model.state_dict()
    shaped = [
        f"{k} {list(v.shape)} (the model's {list(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    lists = (
        ("missing keys", [k for k in own if k not in state_dict]),
        ("unexpected keys", [k for k in state_dict if k not in own]),
        ("keys of another shape", shaped),
    )
    return "; ".join(f"{what} ({len(keys)}): {_first(keys)}" for what, keys in lists if keys)


def _first(names: list[str]) -> str:
    more = len(names) - LISTED
    return ", ".join(names[:LISTED]) + (f" and {more} more" if more > 0 else "")


def unwrapped(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state_dict`` without the ``module.`` prefix a model wrapped in ``nn.DataParallel``
    or ``DistributedDataParallel`` saves on every key, when every key has it and none of
    ``model``'s keys does (so that only the stripped keys can match); else as it is."""
    n = len(WRAPPER_PREFIX)
    if not state_dict or not all(str(k).startswith(WRAPPER_PREFIX) for k in state_dict):
        return state_dict
    if any(k.startswith(WRAPPER_PREFIX) for k in model.state_dict()):
        return state_dict
    return {k[n:]: v for k, v in state_dict.items()}


def check_finite(state_dict: dict[str, Any], source: str) -> None:
    """Raise unless every floating-point tensor of ``state_dict`` is finite."""
    bad = [
        k
        for k, v in state_dict.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise SgcnnError(
            f"checkpoint {source!r} has weights that are NaN or infinite in layer "
            f"{bad[0].rpartition('.')[0]!r} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
            "; the training that wrote it diverged: use an earlier checkpoint or train again "
            "with a lower learning rate"
        )


def build_model(
    payload: dict[str, Any], source: str = "checkpoint", hint: str | None = None
) -> tuple[nn.Module, str, dict]:
    """Rebuild ``(model, name, kwargs)`` from a :func:`model_payload` dict (``hint``: see
    :func:`load_state_dict_`)."""
    if payload.get("format") != FORMAT:
        raise SgcnnError(
            f"{source!r} is not an sgcnn model checkpoint (no 'format: {FORMAT}' entry); "
            "a plain state_dict needs --model to say which model it belongs to"
        )
    spec = payload.get("model")
    if not (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and isinstance(spec.get("kwargs", {}), dict)
        and isinstance(payload.get("state_dict"), dict)
    ):
        raise not_a_model_error(source, payload)
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    attach_masks_(model, payload.get("masked", []))
    load_state_dict_(model, payload["state_dict"], source, hint)
    return model, spec["name"], dict(spec.get("kwargs", {}))


def recorded_data(path: str | os.PathLike) -> dict | None:
    """The data record an sgcnn checkpoint carries (class names, normalisation, input size,
    split sizes: :func:`sgcnn.data.config.data_record`); ``None`` for a plain state_dict or a
    model saved without one."""
    return payload_record(load_checkpoint(path))


def payload_record(payload: dict[str, Any]) -> dict | None:
    """The data record a loaded checkpoint ``payload`` carries (see :func:`recorded_data`)."""
    record = payload.get("data") if payload.get("format") == FORMAT else None
    return dict(record) if isinstance(record, dict) else None


def checkpoint_name(path: str, payload: dict[str, Any]) -> str:
    """The model name an sgcnn checkpoint records; :func:`not_a_model_error` for a damaged one."""
    spec = payload.get("model")
    if payload.get("format") != FORMAT or not (
        isinstance(spec, dict) and isinstance(spec.get("name"), str)
    ):
        raise not_a_model_error(path, payload)
    return spec["name"]


def plain_state_dict(path: str, payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The plain state_dict a file that is not an sgcnn checkpoint holds (bare, or under
    ``"state_dict"``); :func:`not_a_model_error` when it holds none."""
    kind = payload.get("format")
    if isinstance(kind, str) and kind.startswith("sgcnn."):  # another of sgcnn's own files
        raise not_a_model_error(path, payload)
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise not_a_model_error(path, payload)
    return state


def not_a_model_error(path: str, payload: dict[str, Any]) -> SgcnnError:
    """What to say of a file that is neither an sgcnn model checkpoint nor a state_dict."""
    kind = payload.get("format")
    if kind == "sgcnn.detector":
        return SgcnnError(
            f"{path!r} is a detector checkpoint (sgcnn detect), not a classifier; use sgcnn "
            "detect eval with it, or give the classifier checkpoint its backbone came from"
        )
    if kind == FORMAT:
        return SgcnnError(
            f"{path!r} is a damaged sgcnn checkpoint (no model name or state_dict); write it again"
        )
    if kind == "sgcnn.state" or {"stage", "epoch", "model", "optimizer"} <= set(payload):
        return SgcnnError(
            f"{path!r} is a run's training state (state.pt, for --resume), not a model; use "
            "the model.pt the run wrote beside it (or in its row folders)"
        )
    if isinstance(kind, str) and kind.startswith("sgcnn."):
        return SgcnnError(f"{path!r} is an sgcnn {kind[6:]} file, not a model checkpoint")
    return SgcnnError(f"{path!r} is neither an sgcnn checkpoint nor a state_dict")


def load_model(
    path: str | os.PathLike,
    name: str | None = None,
    num_classes: int | None = None,
    user_classes: bool = False,
) -> tuple[nn.Module, str, dict]:
    """Load ``(model, name, kwargs)`` from an sgcnn checkpoint or a plain state_dict.

    A plain ``state_dict`` (e.g. torchvision weights saved by the user) needs ``name``; an sgcnn
    checkpoint names its own model, and a different ``name`` is an error. ``num_classes``
    builds a plain state_dict's model; with ``user_classes`` (the user's own
    ``--num-classes``) it is an error for an sgcnn checkpoint, which records its classes.
    """
    return model_from_payload(load_checkpoint(path), path, name, num_classes, user_classes)


def model_from_payload(
    payload: dict[str, Any],
    path: str | os.PathLike,
    name: str | None = None,
    num_classes: int | None = None,
    user_classes: bool = False,
    hint: str | None = None,
) -> tuple[nn.Module, str, dict]:
    """:func:`load_model` of a checkpoint already read from ``path`` (named in errors; ``hint``
    says what to check when the weights do not fit, see :func:`load_state_dict_`). A plain
    state_dict saved from a wrapped model loads without the wrapper's prefix (:func:`unwrapped`)."""
    if payload.get("format") == FORMAT:
        model, saved, kwargs = build_model(payload, str(path), hint)
        if name is not None and name != saved:
            raise SgcnnError(
                f"checkpoint {str(path)!r} holds a {saved!r} model, not {name!r}; "
                f"drop --model or pass --model {saved}"
            )
        if num_classes is not None and user_classes:
            raise SgcnnError(
                f"checkpoint {str(path)!r} records its model's classes; drop --num-classes "
                "(it is for plain state_dicts)"
            )
        return model, saved, kwargs
    state = plain_state_dict(str(path), payload)
    if name is None:
        raise SgcnnError(f"{str(path)!r} is a plain state_dict: pass --model NAME to say whose")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(name, **kwargs)
    state = unwrapped(state, model)
    masked = sorted({k.rsplit(".", 1)[0] for k in state if k.endswith(".sg_mask")})
    attach_masks_(model, masked)
    load_state_dict_(model, state, str(path), hint)
    return model, name, kwargs
