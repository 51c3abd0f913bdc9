"""``sgcnn`` command line: one sub-command per pipeline step.

Each sub-command lives in its own module of :mod:`sgcnn.cli` exposing ``register(subparsers)``,
which adds its parser and sets ``func=run(args) -> int``. User mistakes raise
:class:`~sgcnn.errors.SgcnnError`; they are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sgcnn.errors import SgcnnError

# Sub-command modules, in the order `sgcnn --help` lists them.
_COMMANDS = [
    "models",
    "count",
    "group",
    "train",
    "finetune",
    "transfer",
    "detect",
    "run",
    "eval",
    "convert",
    "export",
    "bench",
    "report",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgcnn",
        description="Self-grouping convolutional neural networks: self-group, fine-tune, "
        "convert, benchmark.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"sgcnn.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SgcnnError as err:
        print(f"sgcnn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sgcnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
