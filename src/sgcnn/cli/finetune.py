"""``sgcnn finetune``: self-group a trained model and fine-tune it (G, LG or L)."""

from __future__ import annotations

import sys

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import parse_ratio
from sgcnn.cli._pipeline import (
    SPARSITY_SHORTCUTS,
    add_run_args,
    add_sparsity_args,
    checkpoint_model,
    execute_named,
    is_main_process,
    load_source,
    recipe_from_args,
    resumed_run,
    section,
    sets_key,
    shortcut_sets,
)
from sgcnn.data.config import as_trained, ignored_normalize_note
from sgcnn.engine.checkpoint import FORMAT, payload_record
from sgcnn.engine.config import SCHEMES
from sgcnn.errors import SgcnnError


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help=COMMANDS["finetune"])
    p.add_argument(
        "--checkpoint",
        required=True,
        help="trained model: an sgcnn checkpoint (its dataset is the default) or a state_dict",
    )
    p.add_argument("--model", help="model name (needed for a plain state_dict)")
    p.add_argument("--recipe", help="start from a recipe (its baseline training is skipped)")
    p.add_argument("--scheme", choices=[s for s in SCHEMES if s != "baseline"], help="default G")
    add_sparsity_args(p)
    p.add_argument("--fc-cap", type=parse_ratio, help="FC sparsity never above this")
    p.add_argument("--epochs", type=int, help="global fine-tuning epochs (grouping.global_epochs)")
    p.add_argument("--local-epochs", type=int, help="epochs after each LG / L step")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (finetune.lr)")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    name, recipe = recipe_from_args(args)
    started = resumed_run(args)
    record = None
    if started is not None:  # its state holds the model: the checkpoint is not read again
        model = args.model or section(started, "model").get("name")
        data = section(started, "data")
    else:
        payload = load_source(args)
        model = checkpoint_model(args.checkpoint, payload, args.model)
        saved = payload.get("config") if payload.get("format") == FORMAT else None
        data = saved["data"] if saved else None
        record = payload_record(payload)
    if data and args.data is None and "data" not in recipe:
        if started is None:  # normalised as the checkpoint's weights were trained
            data = _as_trained(args, data, record)
        recipe = {**recipe, "data": data}  # the dataset the checkpoint was made on (the run's)
    sets = [f"model.name={model}"]
    sets += shortcut_sets(
        args,
        {
            "checkpoint": "model.checkpoint",
            "scheme": "grouping.scheme",
            **SPARSITY_SHORTCUTS,
            "fc_cap": "grouping.fc_cap",
            "epochs": "grouping.global_epochs",
            "local_epochs": "grouping.local_epochs",
            "lr": "finetune.lr",
        },
    )
    grouping = recipe.get("grouping")  # not a mapping: resolving the config says so
    if args.scheme is None and not (isinstance(grouping, dict) and grouping.get("scheme")):
        sets.append("grouping.scheme=G")
    scheme = args.scheme or (grouping.get("scheme") if isinstance(grouping, dict) else None)
    _check_epoch_options(args, scheme or "G")
    sets += [*args.sets, "train.epochs=0"]
    return execute_named(
        args,
        name,
        recipe,
        sets,
        "finetune",
        lambda c: f"{c.model.name}-{c.data.name}-{c.grouping.scheme}",
    )


def _as_trained(args, data: dict, record: dict | None) -> dict:
    """The checkpoint's run's data section with the normalisation its weights were trained
    with (:func:`~sgcnn.data.config.as_trained`: an older sgcnn ignored data.normalize for
    most datasets), said in a note when that differs from the section's."""
    note = ignored_normalize_note(data, record, repr(args.checkpoint))
    if note and not sets_key(args.sets, "data.normalize") and is_main_process():
        print(note, file=sys.stderr)
    return as_trained(data, record)


def _check_epoch_options(args, scheme: str) -> None:
    """An epoch option the scheme never uses is refused, not silently ignored."""
    if args.epochs is not None and scheme == "L":
        raise SgcnnError(
            "--epochs sets the global fine-tune of G / LG; the L scheme has none: use "
            "--local-epochs (the epochs after each pruning step)"
        )
    if args.local_epochs is not None and scheme == "G":
        raise SgcnnError(
            "--local-epochs sets the epochs after each LG / L pruning step; G prunes once and "
            "fine-tunes globally: use --epochs"
        )
