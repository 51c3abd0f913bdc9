"""Render a run folder's report from what the run recorded.

The rows come from the ``row`` lines of ``metrics.jsonl`` (one per result, in plan order), the
paper's rows from ``report.paper`` of the run's ``config.yaml``, the group-structure pictures
from the most pruned row's ``model.pt``. Rendering reads nothing else, so ``sgcnn report
RUN_DIR`` gives the same report as the end of the run, and works on a run still in progress.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from sgcnn._io import read_text
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.rundir import require_run_dir
from sgcnn.engine.state import CONFIG_FILE, METRICS_FILE, read_metrics


def provenance() -> dict[str, Any]:
    """Where and with what the numbers were made: host, CPU / GPU, library versions, date."""
    import sgcnn

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "sgcnn": sgcnn.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_rows(run_dir: Path) -> tuple[list[dict], dict[str, Any]]:
    """``(rows, run info)`` recorded in ``run_dir/metrics.jsonl``."""
    records = read_metrics(run_dir / METRICS_FILE)
    rows: dict[str, dict] = {}
    info: dict[str, Any] = {}
    for r in records:
        if r.get("event") == "row":
            rows[r["name"]] = {k: v for k, v in r.items() if k not in ("event", "time")}
        elif r.get("event") in ("start", "resume") and "command" in r:
            info.setdefault("command", r["command"])
    return list(rows.values()), info


def write_run_report(run_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> list:
    """Write ``report.md`` / ``report.json`` / plot / structure pictures into ``run_dir``;
    returns the rows."""
    from sgcnn.reports import write_report

    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    config_file = run_dir / CONFIG_FILE
    config = config_from_yaml(read_text(config_file, "run config"), str(config_file))
    rows, info = run_rows(run_dir)
    structures = {}
    grouped = [r for r in rows if r["name"] != "baseline"]
    if grouped:
        path = run_dir / grouped[-1]["checkpoint"]
        if path.is_file():
            from sgcnn.core.grouper import group_structure

            model, _, _ = ckpt.build_model(ckpt.load_checkpoint(path), str(path))
            structures = group_structure(model)
    planned = _planned_rows(config)
    title = config.report.title or config.name or run_dir.name
    meta = {
        "run": str(run_dir),
        "model": config.model.name,
        "data": config.data.name,
        "scheme": config.grouping.scheme,
        **info,
        **(meta or {}),
        **provenance(),
    }
    if len(rows) < planned:
        meta["status"] = f"incomplete: {len(rows)} of {planned} rows"
    write_report(run_dir, title, rows, config.report.paper or None, structures, meta)
    return rows


def _planned_rows(config) -> int:
    from sgcnn.engine.schemes import plan

    return sum(1 for s in plan(config) if s.kind == "evaluate")
