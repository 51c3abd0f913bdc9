"""``sgcnn`` command line: one sub-command per pipeline step.

Each sub-command lives in its own module of :mod:`sgcnn.cli` exposing ``register(subparsers)``,
which adds its parser and sets ``func=run(args) -> int``. User mistakes raise
:class:`~sgcnn.errors.SgcnnError`; they are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Collection

from sgcnn.cli import COMMANDS
from sgcnn.errors import SgcnnError


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported on one line (exit status 2), and values such as
    ``-1,2`` read as values (so they reach the option's own check) rather than options."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\d[\d,.]*$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _chosen_command(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names (its first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``sgcnn`` parser, with the sub-commands in ``full`` (default: all) registered in full.

    Only those sub-commands' modules are imported; the others are listed (name and one-line
    help) without their options, so that ``sgcnn --help`` and the start of one command do not
    import every command's dependencies.
    """
    parser = _Parser(
        prog="sgcnn",
        description="Self-grouping convolutional neural networks: self-group, fine-tune, "
        "convert, benchmark.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_line in COMMANDS.items():
        if full is None or name in full:
            importlib.import_module(f"sgcnn.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=help_line)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = _chosen_command(argv)
    name = chosen if chosen in COMMANDS else "?"
    try:
        parser = build_parser(full=[chosen] if chosen in COMMANDS else [])
        args = parser.parse_args(argv)
        name = args.command
        return int(args.func(args) or 0)
    except SgcnnError as err:
        print(f"sgcnn {name}: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`sgcnn models | head`): nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the final flush does not raise again
        return 1
    except OSError as err:  # the file system refused: not a bug, say what and where
        where = f" {err.filename!r}" if err.filename else ""
        print(f"sgcnn {name}: error:{where} {err.strerror or err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
        print(f"sgcnn {name}: error: {_out_of_memory_advice(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # A run stopped by Ctrl-C says where its state is and how to continue (--resume).
        print(f"sgcnn {name}: {str(err) or 'interrupted'}", file=sys.stderr)
        return 130


def _one_line(message: str) -> str:
    """An error message on one line. An error raised in a data-loader worker arrives wrapped
    in the worker's traceback ("Caught ... Original Traceback ..."): its last line is the
    message."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if lines and "Original Traceback" in message:
        last = lines[-1]
        lines = [last.split(": ", 1)[1] if last.startswith("sgcnn.errors.") else last]
    return " / ".join(lines)


def _out_of_memory(err: BaseException) -> bool:
    """Host memory (MemoryError) or an accelerator's (torch's OutOfMemoryError)."""
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"


def _out_of_memory_advice(err: BaseException) -> str:
    where = "host" if isinstance(err, MemoryError) else "GPU"
    first = (str(err).strip().splitlines() or [""])[0][:160]
    detail = f" ({first})" if first else ""
    # What --resume accepts: rundir.RESUMABLE_CHANGES (the evaluation batch and the device,
    # not the training batch, which changes the steps and so the results).
    return (
        f"out of {where} memory{detail}. Use a smaller batch (--batch-size) or smaller inputs, "
        "or another device. A run continues from its last save with --resume and a smaller "
        "evaluation batch (--set train.eval_batch_size=N) or another --device; a smaller "
        "training batch (--batch-size, train.batch_size) needs a new run (another --output)"
    )


if __name__ == "__main__":
    sys.exit(main())
