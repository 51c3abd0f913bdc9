"""``sgcnn train``: train a baseline network (no self-grouping) in a run folder."""

from __future__ import annotations

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import positive_int
from sgcnn.cli._pipeline import (
    add_run_args,
    checkpoint_model,
    execute_named,
    load_source,
    recipe_from_args,
    resumed_run,
    section,
    shortcut_sets,
)
from sgcnn.engine.checkpoint import FORMAT
from sgcnn.errors import SgcnnError


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help=COMMANDS["train"])
    p.add_argument("--recipe", help="start from a recipe (its grouping part is ignored)")
    p.add_argument("--model", help="registered model name (model.name)")
    p.add_argument("--checkpoint", help="start from these weights (model.checkpoint)")
    p.add_argument(
        "--num-classes", type=positive_int, help="model.num_classes (default: the dataset's)"
    )
    p.add_argument("--epochs", type=int, help="training epochs (train.epochs)")
    p.add_argument("--lr", type=float, help="peak learning rate (optim.lr)")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    name, recipe = recipe_from_args(args)
    named = isinstance(recipe.get("model"), dict) and recipe["model"].get("name")
    started = resumed_run(args) if args.checkpoint else None
    if started is not None:  # its state holds the model: the checkpoint is not read again
        if not (args.model or named):
            args.model = section(started, "model").get("name")
    elif args.checkpoint:
        payload = load_source(args)
        if args.model or not named:  # the model the checkpoint names (and --model agrees)
            args.model = checkpoint_model(args.checkpoint, payload, args.model)
        if args.num_classes is not None and payload.get("format") == FORMAT:
            raise SgcnnError(
                f"{args.checkpoint!r} records its model's classes: drop --num-classes (a "
                "new classifier for another dataset is `sgcnn transfer`)"
            )
    sets = shortcut_sets(
        args,
        {
            "model": "model.name",
            "checkpoint": "model.checkpoint",
            "num_classes": "model.num_classes",
            "epochs": "train.epochs",
            "lr": "optim.lr",
        },
    )
    sets += [*args.sets, "grouping.scheme=baseline", "grouping.conv=[]"]
    return execute_named(
        args, name, recipe, sets, "baseline", lambda c: f"{c.model.name}-{c.data.name}"
    )
