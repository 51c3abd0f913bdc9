"""``sgcnn report RUN_DIR``: re-render a run's report from its metrics and checkpoints."""

from __future__ import annotations

from pathlib import Path

from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.reporting import write_run_report
from sgcnn.engine.state import CONFIG_FILE


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="re-render report.md / report.json / plots of a run folder"
    )
    p.add_argument("run_dir", type=Path, help="a run folder (from train, finetune, run, demo)")
    p.set_defaults(func=run)


def run(args) -> int:
    from sgcnn.reports import format_table

    rows = write_run_report(args.run_dir)
    config = config_from_yaml((args.run_dir / CONFIG_FILE).read_text())
    print(format_table(rows, config.report.paper or None))
    print(f"report: {args.run_dir / 'report.md'}")
    return 0
