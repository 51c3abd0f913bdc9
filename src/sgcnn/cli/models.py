"""``sgcnn models``: list the registered models."""

from __future__ import annotations

from sgcnn.cli import COMMANDS
from sgcnn.models.registry import list_models, model_entry


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help=COMMANDS["models"])
    p.add_argument("--source", choices=["sgcnn", "torchvision"], help="only this source")
    p.set_defaults(func=run)


def run(args) -> int:
    for name in list_models(args.source):
        entry = model_entry(name)
        size = "x".join(map(str, entry.input_size))
        print(f"{name:28s} {entry.source:12s} classes={entry.num_classes:<5d} input={size}")
    return 0
