"""Arguments and execution shared by the pipeline commands (train, finetune, transfer, run,
demo).

Each command turns its arguments into a recipe mapping plus a list of ``--set`` overrides,
resolves them into a :class:`~sgcnn.engine.config.Config` (defaults < recipe < command
options < ``--set``), and hands it to :class:`~sgcnn.engine.runner.Runner` in its run folder.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sgcnn._io import check_output_dir
from sgcnn.cli._common import parse_ratio, path_arg, positive_int, seed_int
from sgcnn.engine.checkpoint import FORMAT, checkpoint_name, load_checkpoint, plain_state_dict
from sgcnn.engine.config import Config, resolve_config
from sgcnn.engine.recipes import load_recipe
from sgcnn.errors import SgcnnError


def add_set_arg(
    p: argparse.ArgumentParser,
    metavar: str = "KEY=VALUE",
    help: str = "override a config key, e.g. --set optim.lr=0.05 --set grouping.conv=[0.7,0.8]",
) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.sets``."""
    p.add_argument("--set", dest="sets", action="append", default=[], metavar=metavar, help=help)


def add_run_args(p: argparse.ArgumentParser, output_help: str = "runs/<name>") -> None:
    """``--set``, ``--output``, ``--resume``, ``--quiet`` and the common shortcuts."""
    add_set_arg(p)
    p.add_argument("--output", type=path_arg, help=f"run folder (default: {output_help})")
    p.add_argument("--resume", action="store_true", help="continue the run in --output")
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per epoch)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (train.device)")
    p.add_argument("--data", help="dataset name (data.name): mnist5k, cifar10, imagefolder, ...")
    p.add_argument("--data-root", help="data folder or archive (data.root)")
    p.add_argument(
        "--download",
        action="store_const",
        const=True,
        help="let torchvision download mnist / cifar10 / cifar100 (data.download=true)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, help="images per process per step (train.batch_size)"
    )
    p.add_argument("--seed", type=seed_int, help="training seed (train.seed)")


def add_sparsity_args(p: argparse.ArgumentParser, when: str = "") -> None:
    """``--conv`` / ``--fc``: the self-grouping targets (:data:`SPARSITY_SHORTCUTS`); ``when``
    starts their help (e.g. ``"G / LG: "``)."""
    p.add_argument("--conv", type=parse_ratio, nargs="+", help=f"{when}target conv sparsities")
    p.add_argument("--fc", type=parse_ratio, nargs="+", help=f"{when}FC sparsities (default: conv)")


SPARSITY_SHORTCUTS = {"conv": "grouping.conv", "fc": "grouping.fc"}


def shortcut_sets(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """``KEY=VALUE`` overrides for the shortcut options that were given; strings (list items
    too: class names like ``0`` or ``yes``) are quoted so that YAML keeps them strings."""
    common = {
        "device": "train.device",
        "data": "data.name",
        "data_root": "data.root",
        "batch_size": "train.batch_size",
        "seed": "train.seed",
        "download": "data.download",
    }
    sets = []
    for attr, key in {**common, **mapping}.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if isinstance(value, list):
            value = "[" + ", ".join(quote(v) if isinstance(v, str) else str(v) for v in value) + "]"
        elif isinstance(value, str):
            value = quote(value)
        sets.append(f"{key}={value}")
    return sets


def sets_key(sets: list[str], key: str) -> bool:
    """Whether the ``--set`` items ``sets`` give ``key`` (e.g. ``data.normalize``)."""
    return any(item.partition("=")[0].strip() == key for item in sets)


def quote(text: str) -> str:
    """A string as a YAML scalar that stays a string (paths like ``1e5`` or ``null``)."""
    return "'" + text.replace("'", "''") + "'"


def recipe_from_args(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """The ``--recipe`` of train / finetune, if any."""
    if getattr(args, "recipe", None):
        return load_recipe(args.recipe)
    return None, {}


def configure(recipe: dict, sets: list[str], resume: bool = False) -> Config:
    """Resolve the config (defaults < recipe < sets).

    A schedule setting the schedule does not read (``optim.milestones`` with ``cosine``; see
    :func:`sgcnn.engine.config.resolve_config`) is refused for a new run only: a run started
    before such settings were refused resumes with the command that started it (its saved
    config is what it uses, and the setting changes nothing)."""
    return resolve_config(recipe, sets, check_unused=not resume)


def output_dir(args: argparse.Namespace, config: Config, default_name: str) -> Path:
    """``--output``, else ``runs/<config name or default_name>``."""
    if args.output is not None:
        return args.output
    return Path("runs") / (config.name or default_name)


def command_line() -> str:
    """The command as typed, for the run's provenance."""
    return "sgcnn " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def execute(config: Config, run_dir: Path, args: argparse.Namespace) -> tuple[list[dict], float]:
    """Run (or resume) ``config`` in ``run_dir``; returns ``(rows, seconds)``."""
    from sgcnn.engine.rundir import keep_trained_statistics
    from sgcnn.engine.runner import Runner

    if args.resume:
        note = keep_trained_statistics(run_dir, config)
        if note and is_main_process():
            print(note, file=sys.stderr)
    else:
        check_output_dir(run_dir)  # before any data or model is built
    start = time.perf_counter()
    runner = Runner(
        config,
        run_dir,
        resume=args.resume,
        quiet=args.quiet,
        meta={"command": command_line()},
    )
    rows = runner.run()
    return rows, time.perf_counter() - start


def execute_and_print(
    config: Config,
    run_dir: Path,
    args: argparse.Namespace,
    after: Callable[[list[dict]], None] | None = None,
) -> int:
    """:func:`execute`, then (on rank 0) the rows' table, ``after(rows)`` and the elapsed time.

    The tail of ``sgcnn train`` / ``finetune`` / ``run`` / ``transfer``; returns exit status 0.
    """
    rows, seconds = execute(config, run_dir, args)
    if is_main_process():
        print_rows(rows, config)
        if after is not None:
            after(rows)
        print(f"elapsed {seconds:.1f} s")
    return 0


def execute_named(
    args: argparse.Namespace,
    name: str | None,
    recipe: dict[str, Any],
    sets: list[str],
    suffix: str,
    default_name: Callable[[Config], str],
) -> int:
    """Resolve ``recipe`` (named ``name``, see :func:`recipe_from_args`) with ``sets``, name the
    run ``<name>-<suffix>`` (without a recipe: the config's name, else ``default_name(config)``)
    and :func:`execute_and_print` it in ``--output`` or ``runs/<that name>``."""
    config = configure(recipe, sets, resume=args.resume)
    default = default_name(config)
    config.name = f"{name}-{suffix}" if name else (config.name or default)
    return execute_and_print(config, output_dir(args, config, default), args)


def resumed_run(args: argparse.Namespace) -> dict[str, Any] | None:
    """With ``--resume --output RUN``: the config RUN was started with (its ``config.yaml``).

    The commands that start from a checkpoint (``train --checkpoint``, ``finetune``,
    ``transfer``) take its model and dataset from there instead of reading ``--checkpoint``
    again: a run folder always holds its model (the first state is saved with it), so the
    source may have moved or gone since. ``None`` when not resuming, or without ``--output``
    (the default folder is named after the checkpoint's model: see :func:`load_source`)."""
    if not getattr(args, "resume", False) or getattr(args, "output", None) is None:
        return None
    from sgcnn.engine.rundir import read_run_config

    return read_run_config(Path(args.output))


def load_source(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint ``--checkpoint``, loaded; a missing one on ``--resume`` (without
    ``--output``, see :func:`resumed_run`) says how to resume without it."""
    try:
        return load_checkpoint(args.checkpoint)
    except SgcnnError as err:
        if getattr(args, "resume", False) and not Path(args.checkpoint).is_file():
            raise SgcnnError(
                f"{err}. The run's state holds the model: pass its folder as --output to "
                "resume without the checkpoint"
            ) from err
        raise


def section(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Section ``name`` of a saved config (``{}`` where it has none)."""
    value = config.get(name)
    return value if isinstance(value, dict) else {}


def checkpoint_model(path: str, payload: dict, given: str | None = None) -> str:
    """The model of checkpoint ``path``: the one an sgcnn checkpoint names (``given``, the
    user's ``--model``, must agree: refused now, before any data is read), else ``given`` (a
    plain state_dict names none)."""
    if payload.get("format") == FORMAT:
        recorded = checkpoint_name(path, payload)
        if given is not None and given != recorded:
            raise SgcnnError(
                f"{path!r} holds a {recorded}, not a {given}; drop --model (an sgcnn checkpoint "
                "names its model) or give the right checkpoint"
            )
        return recorded
    plain_state_dict(path, payload)  # else: not a model at all, said as such
    if given is None:
        raise SgcnnError(f"{path!r} is a plain state_dict: pass --model NAME to say whose")
    return given


def print_rows(rows: list[dict], config: Config, is_main: bool = True) -> None:
    """The paper-style table of ``rows`` (with the paper's numbers beside them)."""
    if not is_main:
        return
    from sgcnn.reports import format_table

    print(format_table(rows, config.report.paper or None))


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job, or a single process."""
    import os

    return os.environ.get("RANK", "0") == "0"
