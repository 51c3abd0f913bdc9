"""Render a run folder's report from what the run recorded.

Everything a report states comes from the run folder: the rows from the ``row`` lines of
``metrics.jsonl`` (one per result, in plan order), the facts of the run (its folder, command,
start and end, elapsed time, machine and library versions, split sizes, training budget,
failure) from its ``start`` / ``resume`` / ``end`` / ``failed`` lines, the paper's rows from
``report.paper`` of ``config.yaml``, the group-structure pictures from the most pruned row's
``model.pt``. Rendering reads nothing else (not the clock, not the current machine), so
``sgcnn report RUN_DIR`` rebuilds the presentation byte for byte, on any machine, and works on
a run still in progress.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from sgcnn._io import read_text
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.config import Config, config_from_yaml
from sgcnn.engine.health import FAILED
from sgcnn.engine.run_latency import read_run_latency
from sgcnn.engine.rundir import require_run_dir
from sgcnn.engine.state import CONFIG_FILE, METRICS_FILE, read_metrics


def provenance() -> dict[str, Any]:
    """The machine and library versions of this process (recorded when a run starts or
    resumes)."""
    import sgcnn

    info = {
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


def run_facts(config: Config, splits, steps_per_epoch: int, world_size: int) -> dict[str, Any]:
    """What a report needs to interpret its accuracies: split sizes and the training budget
    (recorded in the ``start`` line of a run)."""
    from sgcnn.engine.schemes import plan, total_epochs

    t, g = config.train, config.grouping
    budget = {
        "epochs": t.epochs,
        "steps_per_epoch": steps_per_epoch,
        "limit_batches": t.limit_batches,
        "batch_size": t.batch_size * world_size,
        "total_epochs": total_epochs(plan(config)),
    }
    if g.scheme != "baseline":
        budget.update(local_epochs=g.local_epochs, global_epochs=g.global_epochs)
    return {
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "classes": splits.num_classes,
        "input_size": list(splits.input_size),
        "budget": budget,
    }


def run_rows(run_dir: Path) -> tuple[list[dict], dict[str, Any]]:
    """``(rows, recorded facts)`` of ``run_dir/metrics.jsonl``."""
    rows: dict[str, dict] = {}
    facts: dict[str, Any] = {}
    for r in read_metrics(run_dir / METRICS_FILE):
        event = r.get("event")
        if event == "row":
            rows[r["name"]] = {k: v for k, v in r.items() if k not in ("event", "time")}
        elif event == "start":
            facts.update({k: v for k, v in r.items() if k != "event"})
        elif event == "resume":
            facts["resumed"] = facts.get("resumed", 0) + 1
            facts.setdefault("command", r.get("command"))
        elif event == "end":
            facts.update(finished=r["time"], elapsed_s=r["elapsed_s"])
        elif event == FAILED:
            facts["failed"] = r
    return list(rows.values()), facts


def _meta(run_dir: Path, config: Config, facts: dict, rows: int, planned: int) -> dict:
    """The facts table of the report, in reading order."""
    meta: dict[str, Any] = {
        "run": facts.get("run", run_dir.name),
        "model": config.model.name,
        "data": config.data.name,
    }
    if "splits" in facts:
        s = facts["splits"]
        size = "x".join(map(str, facts["input_size"]))
        meta["splits"] = (
            f"train {s['train']} / val {s['val']} / test {s['test']} images, "
            f"{facts['classes']} classes, {size}"
        )
    if "budget" in facts:
        meta["budget"] = _budget_text(facts["budget"], config.grouping.scheme)
    meta["scheme"] = config.grouping.scheme
    for key in ("command", "time", "resumed", "finished", "elapsed_s", "world_size"):
        if facts.get(key) is not None:
            meta["started" if key == "time" else key] = facts[key]
    if "failed" in facts:
        f = facts["failed"]
        meta["status"] = f"failed: {f['message']}"
        meta["elapsed_s"] = f.get("elapsed_s")
    elif rows < planned:
        meta["status"] = f"incomplete: {rows} of {planned} rows"
    else:
        meta["status"] = "complete"
    meta.update(facts.get("machine", {}))
    return meta


def _budget_text(b: dict, scheme: str) -> str:
    limit = f"train.limit_batches {b['limit_batches']}" if b["limit_batches"] else "full epochs"
    text = (
        f"baseline {_epochs(b['epochs'])} x {b['steps_per_epoch']} steps ({limit}) of "
        f"{b['batch_size']} images"
    )
    if scheme != "baseline":
        text += (
            f"; {scheme}: local {_epochs(b['local_epochs'])} per step, "
            f"global {_epochs(b['global_epochs'])}"
        )
    return text + f"; {_epochs(b['total_epochs'])} in all"


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def write_run_report(run_dir: str | os.PathLike) -> list:
    """Write ``report.md`` / ``report.json`` / plot / structure pictures into ``run_dir``;
    returns the rows."""
    from sgcnn.reports import write_report

    run_dir = Path(run_dir)
    require_run_dir(run_dir)
    config_file = run_dir / CONFIG_FILE
    config = config_from_yaml(read_text(config_file, "run config"), str(config_file))
    rows, facts = run_rows(run_dir)
    structures = {}
    grouped = [r for r in rows if r["name"] != "baseline"]
    if grouped:
        path = run_dir / grouped[-1]["checkpoint"]
        if path.is_file():
            from sgcnn.core.grouper import group_structure

            model, _, _ = ckpt.build_model(ckpt.load_checkpoint(path), str(path))
            structures = group_structure(model)
    title = config.report.title or config.name or run_dir.name
    meta = _meta(run_dir, config, facts, len(rows), _planned_rows(config))
    latency = read_run_latency(run_dir, rows)
    if latency is not None:  # measured by `sgcnn report --latency`, not here
        measured, meta["latency"] = latency
        rows = [{**r, "latency_ms": measured.get(r["name"])} for r in rows]
    write_report(run_dir, title, rows, config.report.paper or None, structures, meta)
    return rows


def _planned_rows(config) -> int:
    from sgcnn.engine.schemes import plan

    return sum(1 for s in plan(config) if s.kind == "evaluate")
