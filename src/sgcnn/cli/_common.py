"""Arguments and helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from sgcnn._io import check_output_dir, write_text
from sgcnn.core.grouper import SEED_MAX
from sgcnn.engine.checkpoint import load_checkpoint, model_from_payload, payload_record
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import create_model, model_entry


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--num-classes``, ``--input-size``."""
    parser.add_argument(
        "--model", help="registered model name (sgcnn models); optional with an sgcnn checkpoint"
    )
    parser.add_argument("--checkpoint", help="sgcnn checkpoint or plain state_dict to load")
    parser.add_argument(
        "--num-classes", type=positive_int, help="number of classes (model default)"
    )
    parser.add_argument(
        "--input-size",
        type=parse_input_size,
        help="input size H, HxW or CxHxW (default: the size the checkpoint was trained at, "
        "else the model's own, e.g. 28 for lenet5)",
    )


def parse_input_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(s) for s in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not H, HxW or CxHxW") from None
    if len(size) not in (1, 2, 3) or min(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not H, HxW or CxHxW")
    return size * 2 if len(size) == 1 else size


def parse_ratio(text: str) -> float:
    """A sparsity in [0, 1); '70%' is accepted as 0.7."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"{text} is outside [0, 1): give the fraction of kernels to prune, e.g. 0.7"
        )
    return value


class NamedModel(NamedTuple):
    """A model the arguments name, with its registry name, constructor keyword arguments and
    the data record its checkpoint carries (``None`` without one)."""

    model: nn.Module
    name: str
    kwargs: dict[str, Any]
    record: dict | None


def load_model_from_args(args: argparse.Namespace) -> NamedModel:
    """The model the arguments name: from ``--checkpoint`` if given (read once), else freshly
    built."""
    if args.checkpoint:
        payload = load_checkpoint(args.checkpoint)
        model, name, kwargs = model_from_payload(
            payload, args.checkpoint, args.model, args.num_classes, user_classes=True
        )
        return NamedModel(model, name, kwargs, payload_record(payload))
    if not args.model:
        raise SgcnnError("say which model: pass --model NAME, or --checkpoint PATH")
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    return NamedModel(create_model(args.model, **kwargs), args.model, kwargs, None)


def require_grouped_checkpoint(args: argparse.Namespace) -> None:
    """``--checkpoint`` is required (``sgcnn convert`` / ``export`` start from one)."""
    if not args.checkpoint:
        raise SgcnnError("give --checkpoint: a self-grouped model (from `sgcnn group`)")


def model_for_example(
    args: argparse.Namespace, batch: int
) -> tuple[nn.Module, str, tuple[int, int, int], dict | None]:
    """The model the arguments name, its name, input size and data record (``None`` without
    one); an example batch of ``batch`` inputs too big to hold is refused before any work."""
    model, name, _, record = load_model_from_args(args)
    size = input_size_for(args, name, record)
    check_example_size((batch, *size))
    return model, name, size, record


def data_record_line(record: dict | None) -> str:
    """What a written program says about the data its model was trained on."""
    if not record:
        return "no data record in the checkpoint: class names and normalisation not stored"
    return (
        f"stored the data record: {len(record.get('classes') or [])} class names, the "
        "normalisation (mean / std) and the input size"
    )


def input_size_for(
    args: argparse.Namespace, name: str, record: dict | None = None
) -> tuple[int, int, int]:
    """``--input-size`` completed with the model's channels; else the size the model was
    trained at (its data ``record``), else the model's default size."""
    default = model_entry(name).input_size
    if record and len(record.get("input_size") or ()) == 3:
        default = tuple(int(v) for v in record["input_size"])
    if args.input_size is None:
        return default
    size = tuple(args.input_size)
    size = (default[0], *size) if len(size) == 2 else size
    check_example_size((1, *size))  # one image too big to hold: said now, not by the allocator
    return size


def write_json(path: Path, data: Any, overwrite: bool = True) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n", overwrite)


def check_output_free(output: Path, overwrite: bool) -> None:
    """Fail early, before any work, if the folder ``output`` cannot be written."""
    check_output_dir(output)
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise SgcnnError(
            f"output {str(output)!r} exists and is not an empty folder; choose another "
            "--output or pass --overwrite"
        )


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output files that already exist"
    )


def positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (argparse type)."""
    return _int_at_least(text, 0)


def path_arg(text: str) -> Path:
    """A file or folder path, not empty (argparse type: ``Path("")`` would mean ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a path, not an empty string")
    return Path(text)


def seed_int(text: str) -> int:
    """A random seed: an integer in [0, SEED_MAX] (argparse type)."""
    value = _int_at_least(text, 0)
    if value > SEED_MAX:
        raise argparse.ArgumentTypeError(f"{value} is above {SEED_MAX}, the largest seed")
    return value


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is below {low}; give an integer >= {low}")
    return value


MAX_EXAMPLE_BYTES = 1 << 30  # 1 GiB of float32 example input


def check_example_size(shape: tuple[int, ...]) -> None:
    """Refuse an example batch too big to hold: conversion keeps several activations of it."""
    nbytes = 4 * math.prod(shape)
    if nbytes > MAX_EXAMPLE_BYTES:
        raise SgcnnError(
            f"an example input of {'x'.join(map(str, shape))} takes {nbytes / 2**20:,.0f} MiB "
            f"(float32), and a model holds several activations that size; use a --batch-size "
            f"and --input-size whose input stays under {MAX_EXAMPLE_BYTES >> 20} MiB"
        )


def set_timing_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` for timing; more threads than CPUs is an error
    (oversubscribed threads make every timing meaningless)."""
    import os

    import torch

    if threads is None:
        return
    if threads > (os.cpu_count() or 1):
        raise SgcnnError(
            f"--threads {threads} is more than the {os.cpu_count()} CPUs here; "
            "oversubscribed threads make every timing meaningless"
        )
    torch.set_num_threads(threads)
