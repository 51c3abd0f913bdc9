"""Measured latency of a run's results, for its report (``sgcnn report RUN_DIR --latency``).

Every result row's model is deployed as sgcnn deploys it: a self-grouped one through
:func:`sgcnn.convert` (tuned at the batch size), a dense one through the same compiler
(:func:`sgcnn.deploy.convert.fuse_dense`: BatchNorm, residual and ReLU fused). The dense
baseline row is also deployed in every standard way (eager PyTorch and
:data:`sgcnn.metrics.latency.DEPLOYMENTS`: channels-last, ``torch.jit.optimize_for_inference``,
onnxruntime), the fair reference a user already has. All of them run side by side in the same
interleaved rounds (:func:`sgcnn.metrics.latency.compare_latency`), and the medians are written
to ``latency.json`` in the run folder with the machine, threads, batch and clock; the report
renders that file and measures nothing itself.

Each row's entry records its checkpoint's content hash: a row whose checkpoint changed after
the measurement (a run resumed or redone) shows no latency until measured again; a copied run
folder keeps its measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sgcnn._io import atomic_write
from sgcnn.engine import checkpoint as ckpt
from sgcnn.errors import SgcnnError, describe

LATENCY_FILE = "latency.json"
FORMAT = "sgcnn.run_latency"


def _stamp(path: Path) -> str:
    """The checkpoint's content hash: a copied run folder keeps its measurement, a changed
    checkpoint loses it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


def measure_run_latency(
    run_dir: str | os.PathLike,
    rows: list[dict],
    input_size: list[int],
    batch: int = 1,
    runs: int = 50,
    warmup: int = 5,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every row of ``rows`` (a run's result rows) at ``batch`` images of ``input_size``
    and write ``run_dir/latency.json``; returns what was written."""
    from sgcnn.deploy._convert_checks import resolve_device
    from sgcnn.deploy.convert import convert, fuse_dense
    from sgcnn.metrics.latency import DEPLOYMENTS, compare_latency, deploy, environment
    from sgcnn.nn.masked import is_masked

    say = progress or (lambda message: None)
    run_dir = Path(run_dir)
    if not rows:
        raise SgcnnError(f"{str(run_dir)!r} has no result rows yet: nothing to time")
    dev = resolve_device(device, torch.nn.Module())
    x = torch.randn(batch, *input_size, device=dev)
    models: dict[str, Callable] = {}
    baseline = None  # the row whose standard deployments are timed too
    entries: dict[str, dict] = {}
    standard: dict[str, str] = {}
    for row in rows:
        path = run_dir / row["checkpoint"]
        if not path.is_file():
            entries[row["name"]] = {"ms": None, "note": f"{row['checkpoint']} is missing"}
            continue
        model, _, _ = ckpt.build_model(ckpt.load_checkpoint(path), str(path))
        model = model.eval().to(dev)
        grouped = any(is_masked(m) for m in model.modules())
        say(f"{row['name']}: {'converting' if grouped else 'compiling (dense)'}")
        fast = convert(model, x, progress=False) if grouped else fuse_dense(model, x)
        models[row["name"]] = fast
        how = "sgcnn.convert" if grouped else "dense, sgcnn fusion"
        entries[row["name"]] = {"ms": None, "deployed": how, "checkpoint": _stamp(path)}
        if row.get("scheme") == "baseline" and not grouped and not standard:
            baseline = row["name"]
            models[f"{row['name']} (eager)"] = model
            standard[f"{row['name']} (eager)"] = "eager"
            for way in DEPLOYMENTS:
                try:
                    models[f"{row['name']} ({way})"] = deploy(model, x, way)
                    standard[f"{row['name']} ({way})"] = way
                except Exception as err:  # an unavailable way is reported, not fatal
                    say(f"{row['name']}: {way} skipped ({describe(err)})")
    if not models:
        raise SgcnnError(
            f"no result row of {str(run_dir)!r} has its checkpoint (model.pt): nothing to time"
        )
    say(f"timing {len(models)} models, {runs} interleaved rounds at batch {batch}")
    with torch.inference_mode():
        times = compare_latency(models, x, runs=runs, warmup=warmup)
    for name in entries:
        if name in times:
            entries[name]["ms"] = round(times[name]["median_ms"], 4)
    dense = {standard[n]: round(times[n]["median_ms"], 4) for n in standard}
    doc = {
        "format": FORMAT,
        "batch": batch,
        "input_size": list(input_size),
        "runs": runs,
        "clock": "wall",
        "environment": environment(dev),
        "rows": entries,
        "baseline_deployments": {"row": baseline, "ms": dense} if dense else {},
    }
    text = json.dumps(doc, indent=2) + "\n"
    atomic_write(run_dir / LATENCY_FILE, lambda f: f.write(text.encode()))
    return doc


def read_run_latency(run_dir: Path, rows: list[dict]) -> tuple[dict[str, float], str] | None:
    """``({row name: median ms}, description)`` from ``run_dir/latency.json``, leaving out
    rows whose checkpoint changed since; None when there is no (readable) measurement."""
    path = Path(run_dir) / LATENCY_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            return None
        measured, current = {}, {r["name"]: run_dir / r["checkpoint"] for r in rows}
        for name, entry in doc["rows"].items():
            file = current.get(name)
            if entry.get("ms") is None or file is None or not file.is_file():
                continue
            if _stamp(file) == entry.get("checkpoint"):
                measured[name] = float(entry["ms"])
        env, deployed = doc["environment"], doc.get("baseline_deployments") or {}
        # the standard deployments belong to the baseline row's measurement: as current as it
        dense = deployed.get("ms", {}) if deployed.get("row") in measured else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged file measures nothing; `--latency` writes it again
    threads = env.get("threads")
    text = (
        f"batch {doc['batch']}, {threads} thread{'' if threads == 1 else 's'} on "
        f"{env.get('host_cpu')} "
        f"({env.get('device')}), median of {doc['runs']} interleaved rounds, wall clock, "
        f"{env.get('date')}; self-grouped rows through sgcnn.convert, dense rows through the "
        "same fusion"
    )
    if dense:
        best = min(dense, key=dense.get)
        ways = ", ".join(f"{k} {v:.3f}" for k, v in dense.items())
        text += f"; the baseline deployed as usual, ms: {ways} (best: {best})"
    stale = [r["name"] for r in rows if r["name"] not in measured]
    if stale:
        text += f"; not measured (or changed since): {', '.join(stale)}"
    return measured, text
