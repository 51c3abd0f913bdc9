"""``sgcnn report RUN_DIR``: re-render a run's report from its metrics and checkpoints."""

from __future__ import annotations

from pathlib import Path

from sgcnn._io import check_output_dir, read_text
from sgcnn.cli import COMMANDS
from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.reporting import write_run_report
from sgcnn.engine.state import CONFIG_FILE, METRICS_FILE
from sgcnn.errors import SgcnnError


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help=COMMANDS["report"])
    p.add_argument("run_dir", type=Path, help="a run folder (from train, finetune, run, demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sgcnn.reports import format_table

    check_output_dir(args.run_dir, "run folder")
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
