"""``cifar10_study.py collect``'s text: the markdown report of the study (summaries over
seeds, the setup and schedule, the verdicts and targets, where every run ran), from the rows
and records that :mod:`_study_collect` gathers."""

from __future__ import annotations

import statistics

from _study_rows import (
    FINETUNE_RECIPE,
    LG_STEP,
    LOCAL_EPOCHS,
    SPARSITIES,
    START_FILE,
    Row,
    budget_sets,
    study_rows,
)
from sgcnn.engine.config import resolve_config
from sgcnn.engine.recipes import load_recipe
from sgcnn.engine.schemes import plan

CHECKPOINTS = {  # committed: re-evaluate with `sgcnn eval`
    "baseline": "resnet20_baseline.pt",
    "sg-G-conv50-s0": "resnet20_sg_G_conv50_s0.pt",
}


def _device_of(record: dict, configured: str | None) -> str:
    """The device a launch trained on: its record's, else the run's configured one, else (an
    ``auto`` run) cuda where its record names a GPU."""
    if record.get("device"):
        return str(record["device"])
    if configured and configured != "auto":
        return str(configured)
    return "cuda" if record.get("gpu") else "cpu"


def _protocol_text(protocol) -> str:
    """How the reported epoch was chosen, from the baseline run's configuration."""
    if not protocol:
        return "(the epoch is chosen on validation images held out from train)"
    fraction, select = protocol
    if fraction == 0:
        return f"(trained on all training images; the {select} epoch is kept: no validation split)"
    held = round(50000 * fraction)
    return f"(the epoch is chosen by {select} on {held:,} validation images held out from train)"


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


TOP1_TARGET, GAP_TARGET = 88.0, 1.5  # the issue's targets: baseline Top-1, SG G Conv-50 gap
RUNTIMES = {  # how the latency text names each deployment
    "fused": "fused PyTorch (sgcnn fuse_dense)",
    "channels_last": "channels-last PyTorch",
    "jit": "TorchScript (jit.optimize_for_inference)",
    "onnxruntime": "onnxruntime",
    "compile": "torch.compile",
    "converted": "sgcnn.convert",
}


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
                "n": len(done),
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
                # a dense network (baseline, l1filter) also as sgcnn fuses it (secondary)
                "fused_ms": _mean([r.get("latency_ms") for r in done if r.get("latency_dense_ms")]),
                # as deployed: converted, or a dense network's fastest deployment
                "deployed_ms": _mean([r.get("latency_deployed_ms") for r in done]),
                "runtimes": sorted(
                    {r["latency_deployed_as"] for r in done if r.get("latency_deployed_as")}
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
            "Which weights the rows started from cannot be checked (a run folder lacks both "
            f"its baseline/model.pt and the {START_FILE} that `pack` writes in its place)"
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


def _schedule_text(settings: dict | None) -> str:
    """The fine-tuning schedule of the rows as the driver builds their commands
    (``budget_sets``, resolved on the fine-tune recipe and planned as a run plans it)."""
    settings = settings or {}
    if settings.get("quick"):
        return (
            "Fine-tuning: smoke test (`--quick`), one epoch of 4 batches per phase; not the "
            "study's schedule."
        )
    ft = settings.get("ft_epochs")
    if ft is None:
        return "Fine-tuning schedule: not recorded (no settings in study.json)."
    _, recipe = load_recipe(FINETUNE_RECIPE)

    def row_config(row: Row):  # as the driver sets the row (its baseline's path aside)
        sets = [
            "model.checkpoint=baseline/model.pt",
            f"grouping.scheme={row.scheme}",
            f"grouping.conv=[{row.conv}]",
            *budget_sets(row, ft),
        ]
        return resolve_config(recipe, sets)

    g = row_config(Row("sg", "G", SPARSITIES[0], 0))
    lr, schedule = g.finetune.lr, g.finetune.schedule
    phases, local_lr, totals = [], lr, set()
    for conv in SPARSITIES:
        config = row_config(Row("sg", "LG", conv, 0))
        local_lr = config.grouping.local_lr or config.finetune.lr
        stages = plan(config)
        steps = sum(1 for s in stages if s.kind == "prune")
        local = sum(s.epochs for s in stages if s.kind == "local")
        glob = sum(s.epochs for s in stages if s.kind == "global")
        totals.add(local + glob)
        phases.append(f"Conv-{round(conv * 100)}: {steps} steps, {local} local + {glob} global")
    total = f"{ft} epochs in all" if totals == {ft} else f"{sorted(totals)} epochs (NOT {ft})"
    return (
        f"Fine-tuning after pruning (`--ft-epochs {ft}`): a G row prunes once, then trains "
        f"{ft} epochs, {schedule} from lr {lr:g}. An LG row prunes in {LG_STEP:.0%} steps, "
        f"trains {LOCAL_EPOCHS} local epoch{'s' if LOCAL_EPOCHS != 1 else ''} at the constant "
        f"lr {local_lr:g} after each step, then a shorter {schedule} global phase from lr "
        f"{lr:g} ({'; '.join(phases)} epochs), so that it too trains {total}."
    )


def _n_seeds(s: dict) -> str:
    return f"{s['label']} ({s['n']} seed{'' if s['n'] == 1 else 's'})"


def _compare(a: dict, b: dict) -> str:
    """``a`` against ``b`` in plain words, on the Top-1 values as printed (2 decimals), with
    each side's finished seeds: "beats" only with two seeds or more on both sides and a gap of
    at least twice the larger of their spreads, else "ahead by"; a gap of 0.00 is a tie. Where
    their FLOPs differ by more than 1 %, by how much (a method that cannot hit the target
    exactly, such as groupconv's equal windows, gets or loses some cost)."""
    ta, tb = round(a["top1"], 2), round(b["top1"], 2)
    gap = round(ta - tb, 2)
    cost = _cost_gap(a, b)
    if gap == 0:
        return f"{_n_seeds(a)} and {_n_seeds(b)} tie at {ta:.2f}{cost}"
    winner, loser = (a, b) if gap > 0 else (b, a)
    gap = abs(gap)
    if winner["n"] >= 2 and loser["n"] >= 2:
        noise = round(max(winner["spread"] or 0.0, loser["spread"] or 0.0), 2)
        if gap >= 2 * noise:
            return (
                f"{_n_seeds(winner)} beats {_n_seeds(loser)} by {gap:.2f} points, at least "
                f"twice the larger seed spread ({noise:.2f}){cost}"
            )
        why = f"within twice the larger seed spread ({noise:.2f}): not a clear win"
    else:
        why = "one seed: no spread to judge it against"
    return f"{_n_seeds(winner)} is ahead of {_n_seeds(loser)} by {gap:.2f} points ({why}){cost}"


def _cost_gap(a: dict, b: dict) -> str:
    """``"; b at +2.6 % the FLOPs of a"`` where the two differ by more than 1 %, else ``""``."""
    if not a.get("flops") or not b.get("flops"):
        return ""
    gap = b["flops"] / a["flops"] - 1
    return f"; {b['label']} at {gap:+.1%} the FLOPs of {a['label']}" if abs(gap) > 0.01 else ""


def _targets(summaries: list[dict]) -> list[str]:
    """The issue's two targets, met or not, on the values as printed (2 decimals)."""
    base = next((s for s in summaries if s["method"] == "baseline" and s["top1"] is not None), None)
    sg = next(
        (
            s
            for s in summaries
            if (s["method"], s["scheme"], s["conv"]) == ("sg", "G", 0.5) and s["top1"] is not None
        ),
        None,
    )
    first = f"- Target: baseline Top-1 >= {TOP1_TARGET:g} %: "
    second = f"- Target: SG-CNN G at Conv-50 within {GAP_TARGET:g} points of the baseline: "
    if base is None:
        return [first + "not checked (no finished baseline yet).", second + "not checked."]
    b = round(base["top1"], 2)
    lines = [first + f"{'met' if b >= TOP1_TARGET else 'NOT met'} ({b:.2f})."]
    if sg is None:
        return [*lines, second + "not checked (no finished SG-CNN G Conv-50 row yet)."]
    gap = round(round(sg["top1"], 2) - b, 2) + 0.0
    lines.append(
        second + f"{'met' if gap >= -GAP_TARGET else 'NOT met'} ({round(sg['top1'], 2):.2f} "
        f"over {sg['n']} seed{'' if sg['n'] == 1 else 's'}, {gap:+.2f} points against the "
        f"baseline's {b:.2f})."
    )
    return lines


def _runtime_names(s: dict) -> str:
    return ", ".join(RUNTIMES.get(r, r) for r in s["runtimes"])


def _verdicts(summaries: list[dict]) -> list[str]:
    """What wins, computed from the table: the issue's targets; at each sparsity the best mean
    Top-1, self-grouping (G) against each alternative, each judged on both sides' finished
    seeds and spreads; latency against the dense baseline's fastest deployment."""
    base = next((s for s in summaries if s["method"] == "baseline" and s["top1"] is not None), None)
    pruned = [s for s in summaries if s["method"] != "baseline"]
    lines = _targets(summaries)
    empty = [f"{s['label']} Conv-{s['conv']:.0%}"[:-1] for s in pruned if s["top1"] is None]
    if empty:
        lines.append(f"- No finished result yet (left out below): {', '.join(empty)}.")
    for conv in sorted({s["conv"] for s in pruned}):
        here = sorted((s for s in pruned if s["conv"] == conv and s["top1"] is not None),
                      key=lambda s: (-s["top1"], s["label"]))  # fmt: skip
        if not here:
            continue
        order = "; ".join(f"{_n_seeds(s)} {s['top1']:.2f}" for s in here)
        lines.append(f"- **Conv-{round(conv * 100)}**, by mean Top-1: {order}.")
        if len(here) > 1:
            lines.append(f"  - Best: {_compare(here[0], here[1])}.")
        sg = next((s for s in here if s["label"] == "sg G"), None)
        if sg is not None:
            for other in here:
                if other is not sg and {id(sg), id(other)} != {id(here[0]), id(here[1])}:
                    lines.append(f"  - {_compare(sg, other)}.")  # (the best pair: said above)
        timed = sorted(
            (s for s in here if s["deployed_ms"] is not None), key=lambda s: s["deployed_ms"]
        )
        if timed and base is not None and base["deployed_ms"]:
            ref = base["deployed_ms"]
            order = "; ".join(
                f"{s['label']} {s['deployed_ms'] / ref:.2f}x"
                + (f" ({_runtime_names(s)})" if s["runtimes"] else "")
                for s in timed
            )
            how = _runtime_names(base) or RUNTIMES["fused"]
            lines.append(
                f"  - CPU latency against the fastest deployment of the dense baseline ({how}, "
                f"{ref:.3f} ms; below 1.00x is faster; self-grouped rows converted, a dense "
                f"row in its own fastest deployment; the table's latency column): {order}."
            )
    return lines


def _load_warning(doc: dict) -> str | None:
    """A warning when this machine was busy as the latency timing began."""
    load = doc.get("latency_load_before") or {}
    avg, cores = load.get("load_average"), load.get("cores")
    if not avg or not cores or avg[0] <= 0.5 * cores:
        return None
    return (
        f"**Warning: the load average was {avg[0]:.2f} when the latency timing began, above "
        f"half of the {cores} cores: other work was running, so the latency figures may be "
        "slow or uneven; time them again on a quiet machine.**"
    )


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
        _schedule_text(doc.get("settings")),
        "",
        "| method | scheme | conv | seeds | Top-1 | spread | vs base | Top-5 | Params | FLOPs "
        "| latency ms | deployed as | fused ms | epochs | wall s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        delta = s["top1"] - base if s["top1"] is not None and base is not None else None
        lines.append(
            f"| {s['method']} | {s['scheme']} | {s['conv']:.0%} | {s['seeds']} | "
            f"{_fmt(s['top1'], '.2f')} | {_fmt(s['spread'], '.2f', 'n/a')} | "
            f"{_fmt(delta, '+.2f')} | {_fmt(s['top5'], '.2f')} | {_fmt(s['params'], ',.0f')} | "
            f"{_fmt(s['flops'], ',.0f')} | {_fmt(s['deployed_ms'], '.3f')} | "
            f"{_runtime_names(s) or '-'} | {_fmt(s['fused_ms'], '.3f')} | "
            f"{_fmt(s['epochs'], '.0f')} | {_fmt(s['wall_s'], '.0f')} | {s['status']} |"
        )
    lines += [
        "",
        "Latency ms: CPU, as deployed: a self-grouped row converted (sgcnn.convert); a dense "
        "network (the baseline; l1filter as the smaller dense network it stands for) in its "
        "fastest deployment (deployed as), the figure the verdicts and the plot use. Fused ms: "
        "a dense network as sgcnn fuses it (BatchNorm / ReLU / residual), for reference.",
    ]
    warning = _load_warning(doc)
    if warning:
        lines += ["", warning]
    lines += ["", "## What wins", "", *_verdicts(summaries)]
    lines += ["", "## Per seed", "", "| run | seed | Top-1 | Top-5 | latency ms | status |"]
    lines.append("|---|---|---|---|---|---|")
    for e in entries:
        if e.get("top1") is not None:
            lines.append(
                f"| {e['run']} | {e['seed']} | {e['top1']:.2f} | {_fmt(e.get('top5'), '.2f')} | "
                f"{_fmt(e.get('latency_deployed_ms'), '.3f')} | {e['status']} |"
            )
    lines += ["", "## How it was made", ""]
    lines += _machines(entries, doc)
    lat = doc.get("latency_machine")
    if lat:
        b = next((e["latency_batch"] for e in entries), None)
        t = next((e["latency_threads"] for e in entries), None)
        load = (doc.get("latency_load_before") or {}).get("load_average")
        lines += [
            "",
            f"Latency: CPU, batch {b}, {t} threads, median of 100 interleaved rounds (all "
            "models in one process) after sgcnn.convert "
            f"({'thread CPU time' if t == 1 else 'wall clock'}) "
            f"on {lat.get('host_cpu')}, torch {lat.get('torch')}, {lat.get('date')}"
            + (f", load average {load[0]:.2f} when timing began" if load else "")
            + ". The dense networks (the baseline; l1filter, timed as the smaller dense network "
            "it stands for, removed filters sliced away) were timed in the same rounds as sgcnn "
            "fuses them and in the standard deployments a user could choose ("
            + ", ".join(
                RUNTIMES[k]
                for k in ("channels_last", "jit", "onnxruntime", "compile")
                if k != "compile" or doc.get("latency_compile", True)
            )
            + "); the table, the plot and the verdicts use each one's fastest:",
        ]
        for e in entries:
            if e.get("latency_dense_ms"):
                ways = {"fused": e.get("latency_ms"), **e["latency_dense_ms"]}
                best = e.get("latency_deployed_as")
                lines.append(
                    f"- {e['run']}: "
                    + "; ".join(
                        f"{RUNTIMES.get(k, k)} {v:.3f} ms" + (" (fastest)" if k == best else "")
                        if isinstance(v, float)
                        else f"{RUNTIMES.get(k, k)}: {v}"
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
        "Re-evaluate the committed checkpoints (Top-1 on the test split; each should give its "
        "run's own figure, after the #):",
        "",
        "```",
    ]
    by_run = {e["run"]: e for e in entries}
    for run, file in CHECKPOINTS.items():
        e = by_run.get(run, {})
        expect = (
            f"Top-1 {e['top1']:.2f} ({run})"
            if e.get("status") == "done" and e.get("top1") is not None
            else f"{run}: no finished result yet"
        )
        lines.append(
            f"sgcnn eval results/evidence/checkpoints/{file} --data imagefolder "
            f"--data-root cifar10-jpeg.tar.gz  # {expect}"
        )
    lines += ["```", ""]
    return "\n".join(lines)


def _launch_text(m: dict, configured: str | None) -> str:
    """``"resume 2026-11-29 05:01 UTC: cpu, 08e130b"``: one launch of a run."""
    device = _device_of(m, configured)
    if device.startswith("cuda") and m.get("gpu"):
        device = f"cuda ({m['gpu']})"
    commit = m.get("git") or "commit not recorded"
    return f"{m.get('event', 'launch')} {m.get('date') or '?'}: {device}, {commit}"


def _hardware(m: dict, configured: str | None) -> str:
    keys = ("cpu", "cores", "torch", "python")
    if _device_of(m, configured).startswith("cuda"):
        keys = ("cuda", *keys)
    return ", ".join(f"{k} {m[k]}" for k in keys if m.get(k) is not None)


def _machines(entries: list[dict], doc: dict) -> list[str]:
    """Where each run trained, one line per run: its launches in order (start, then each
    resume) with device and commit, from the driver's record of each launch (an older study
    recorded only a run's last launch), else the run's own start / resume records (which carry
    no commit); then whether the runs ran at different commits, and the driver's starts."""
    lines = [
        "Where each run trained (its launches in order: device, commit; `+changes`: the "
        "checkout had uncommitted edits of tracked files):",
        "",
    ]
    commits: dict[str, set] = {}
    for e in entries:
        launched = e.get("machines") or []
        if e["status"] == "missing" and not launched:
            continue
        if not launched:
            lines.append(f"- {e['run']}: not recorded")
            continue
        configured = e.get("device")
        hardware = sorted({_hardware(m, configured) for m in launched} - {""})
        lines.append(
            f"- {e['run']}: "
            + "; ".join(_launch_text(m, configured) for m in launched)
            + (f" ({' / '.join(hardware)})" if hardware else "")
        )
        for m in launched:
            commits.setdefault(m.get("git") or "", set()).add(e["run"])
    known = sorted(c for c in commits if c)
    if len(known) > 1:
        lines += [
            "",
            "**The runs did NOT all run the same code: they ran with different commits** ("
            + "; ".join(f"{c}: {', '.join(sorted(commits[c]))}" for c in known)
            + ").",
        ]
    elif known:
        lines += ["", f"Every recorded launch ran at commit {known[0]}."]
    if "" in commits:
        lines.append(f"No commit recorded for a launch of: {', '.join(sorted(commits['']))}.")
    drivers = doc.get("drivers") or []
    if drivers:
        lines += ["", f"The study driver was started {len(drivers)} time(s):"]
        for d in drivers:
            m, argv = d.get("machine") or {}, d.get("argv") or []
            asked = argv[argv.index("--device") + 1] if "--device" in argv[:-1] else None
            lines.append(
                f"- {m.get('date', '?')}, commit {m.get('git') or 'not recorded'}, device "
                f"{m.get('device') or asked or 'not recorded'}: `python {' '.join(argv)}`"
            )
    return lines
