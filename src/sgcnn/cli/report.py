"""``sgcnn report RUN_DIR``: re-render a run's report from its metrics and checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

from sgcnn._io import check_output_dir, read_text
from sgcnn.cli import COMMANDS
from sgcnn.cli._common import check_example_size, positive_int, set_timing_threads
from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.reporting import write_run_report
from sgcnn.engine.rundir import require_run_dir
from sgcnn.engine.state import CONFIG_FILE, METRICS_FILE
from sgcnn.errors import SgcnnError

_TIMING = {"batch_size": 1, "threads": None, "runs": 50, "device": "cpu"}  # --latency defaults


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help=COMMANDS["report"])
    p.add_argument("run_dir", type=Path, help="a run folder (from train, finetune, run, demo)")
    p.add_argument(
        "--latency",
        action="store_true",
        help="first time every result on this machine (converted as deployed, side by side "
        "with the baseline's standard deployments) into latency.json; the report shows it",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=1, help="--latency: images per call (1)"
    )
    p.add_argument("--threads", type=positive_int, help="--latency: torch threads (default all)")
    p.add_argument("--runs", type=positive_int, default=50, help="--latency: timed rounds (50)")
    p.add_argument("--device", default="cpu", help="--latency: cpu or cuda (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sgcnn.reports import format_table

    require_run_dir(args.run_dir)  # a typo is "does not exist", not "not writable"
    check_output_dir(args.run_dir, "run folder")
    given = [f"--{k.replace('_', '-')}" for k in _TIMING if getattr(args, k) != _TIMING[k]]
    if given and not args.latency:
        raise SgcnnError(f"{', '.join(given)} set how --latency times; add --latency")
    if args.latency:
        try:
            _measure(args)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise SgcnnError(
                f"cannot time the results of {str(args.run_dir)!r} ({type(err).__name__}: "
                f"{err}); check its {METRICS_FILE} and checkpoints, or report without --latency"
            ) from err
    try:
        rows = write_run_report(args.run_dir)
    except (KeyError, TypeError, AttributeError, ValueError) as err:  # a hand-damaged record
        raise SgcnnError(
            f"cannot render the report of {str(args.run_dir)!r}: its {METRICS_FILE} or "
            f"{CONFIG_FILE} is damaged ({type(err).__name__}: {err}); restore them or run again"
        ) from err
    config_file = args.run_dir / CONFIG_FILE
    config = config_from_yaml(read_text(config_file, "run config"), str(config_file))
    print(format_table(rows, config.report.paper or None))
    print(f"report: {args.run_dir / 'report.md'}")
    return 0


def _measure(args) -> None:
    from sgcnn.engine.reporting import run_rows
    from sgcnn.engine.run_latency import LATENCY_FILE, measure_run_latency
    from sgcnn.engine.rundir import require_run_dir

    require_run_dir(args.run_dir)
    rows, facts = run_rows(args.run_dir)
    if "input_size" not in facts:
        raise SgcnnError(f"{str(args.run_dir)!r} does not record its input size: nothing to time")
    set_timing_threads(args.threads)
    check_example_size((args.batch_size, *facts["input_size"]))
    measure_run_latency(
        args.run_dir,
        rows,
        facts["input_size"],
        batch=args.batch_size,
        runs=args.runs,
        device=args.device,
        progress=lambda message: print(message, file=sys.stderr),
    )
    print(f"latency: {args.run_dir / LATENCY_FILE}")
