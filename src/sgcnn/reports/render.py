"""Render results as the paper shows them.

A *row* is one model: ``{"name": "baseline" | "Conv-95/FC-95", "params": int, "flops": int,
"top1": float, "top5": float | None}`` (accuracies in percent; no Top-5 for 5 classes or
fewer, shown as "-"), optionally ``"latency_ms"`` (a measured latency: a column and a plot of
its own). *Paper rows* carry the paper's ``params`` / ``flops`` / ``top1`` for the same names
and are shown beside ours.
All files are written atomically. Figures are drawn with matplotlib's object API
(:class:`matplotlib.figure.Figure` on its own Agg canvas), imported on first use: neither pyplot
nor the user's chosen backend is touched.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sgcnn._io import atomic_write


def _human(n: float | None) -> str:
    """431080 -> '431.1K', 888360000 -> '888.36M' (paper style)."""
    if n is None:
        return "-"
    for scale, suffix, digits in ((1e9, "G", 2), (1e6, "M", 2), (1e3, "K", 1)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f}{suffix}"
    return str(int(n))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_table(rows: Sequence[dict], paper_rows: Sequence[dict] | None = None) -> str:
    """A markdown table of ``rows`` (and the paper's figures beside them, when given)."""
    paper = {r["name"]: r for r in paper_rows or ()}
    timed = any("latency_ms" in r for r in rows)
    head = ["model", "Params", "FLOPs", "Top-1 %", "Top-5 %"] + (["latency ms"] if timed else [])
    if paper:
        head += ["paper Params", "paper FLOPs", "paper Top-1 %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["name"],
            _human(r.get("params")),
            _human(r.get("flops")),
            _pct(r.get("top1")),
            _pct(r.get("top5")),
        ]
        if timed:
            cells.append("-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3f}")
        if paper:
            p = paper.get(r["name"], {})
            cells += [_human(p.get("params")), _human(p.get("flops")), _pct(p.get("top1"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _figure(figsize: tuple[float, float]):
    """A new figure and its axes, rendered by Agg, independent of pyplot's global state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.add_subplot()


def _save_png(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _points(rows: Sequence[dict], key: str) -> list[tuple]:
    """``(row[key], top1, name)`` of the rows that have both (a zero ``key`` has no point on a
    log scale), sorted by ``key``."""
    have = [r for r in rows if r.get(key) and r.get("top1") is not None]
    return sorted((r[key], r["top1"], r["name"]) for r in have)


def _label(ax, points: list[tuple]) -> None:
    for xi, yi, name in points:
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=7)


def plot_accuracy_vs_flops(
    rows: Sequence[dict], path: Path, paper_rows: Sequence[dict] | None = None, title: str = ""
) -> None:
    """Top-1 against FLOPs (log scale), ours and, when given, the paper's."""
    fig, ax = _figure((6, 4))
    for series, style, label in ((rows, "o-", "sgcnn"), (paper_rows or [], "s--", "paper")):
        points = _points(series, "flops")
        if not points:
            continue
        x, y, _ = zip(*points, strict=True)
        ax.plot(x, y, style, label=label)
        if label == "sgcnn":
            _label(ax, points)
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs (multiply-accumulates, log scale)")
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.set_title(title or "Accuracy against FLOPs")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to label before the first result row
        ax.legend()
    _save_png(fig, path)


def plot_accuracy_vs_latency(rows: Sequence[dict], path: Path, title: str = "") -> None:
    """Top-1 against measured latency (ms), one labelled point per timed row."""
    fig, ax = _figure((6, 4))
    points = _points(rows, "latency_ms")
    if points:
        x, y, _ = zip(*points, strict=True)
        ax.plot(x, y, "o")
        _label(ax, points)
    ax.set_xlabel("latency (ms, measured)")
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.set_title(title or "Accuracy against latency")
    ax.grid(True, alpha=0.3)
    _save_png(fig, path)


def plot_group_structure(name: str, labels, mask, path: Path) -> None:
    """Filters sorted by self-group (rows) against input channels (columns): kept / pruned.

    ``labels`` [N] and ``mask`` [N, C] as in :class:`sgcnn.LayerGroups`; kept kernels are dark
    blue, pruned ones white, and lines separate the groups, whose unequal sizes and
    overlapping channel sets are the point of SG-CNN. A legend says so on the picture.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    order = np.argsort(labels, kind="stable")
    image = mask[order]
    n, c = image.shape
    fig, ax = _figure((min(12, 2 + c / 24), min(10, 2 + n / 24)))
    ax.imshow(image, aspect="auto", interpolation="nearest", cmap="Blues", vmin=0, vmax=1)
    bounds = np.flatnonzero(np.diff(labels[order])) + 0.5
    line = "white" if image.mean() > 0.5 else "red"
    for b in bounds:
        ax.axhline(b, color=line, linewidth=0.8)
    from matplotlib import colormaps
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cmap = colormaps["Blues"]
    legend = [
        Patch(facecolor=cmap(1.0), edgecolor="grey", label="kept kernel"),
        Patch(facecolor=cmap(0.0), edgecolor="grey", label="pruned kernel"),
        Line2D([], [], color=line, linewidth=0.8, label="group boundary"),
    ]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    kept = image.mean()
    ax.set_title(f"{name}: {len(bounds) + 1} groups, {kept:.1%} of kernels kept", fontsize=9)
    ax.set_xlabel(f"input channel ({c})")
    ax.set_ylabel(f"filter, sorted by group ({n})")
    _save_png(fig, path)


def _safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_report(
    out_dir: Path,
    title: str,
    rows: Sequence[dict],
    paper_rows: Sequence[dict] | None = None,
    structures: dict | None = None,
    meta: dict | None = None,
) -> None:
    """Write ``report.md``, ``report.json``, ``accuracy_vs_flops.png`` (and
    ``accuracy_vs_latency.png`` when rows carry a latency) and, for each layer of
    ``structures`` (``{name: LayerGroups}``), ``structure/<name>.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name, groups in (structures or {}).items():
        file = f"structure/{_safe_filename(name)}.png"
        plot_group_structure(name, groups.labels, groups.mask, out_dir / file)
        pictures.append((name, file))
    plot_accuracy_vs_flops(rows, out_dir / "accuracy_vs_flops.png", paper_rows, title)
    timed = any(r.get("latency_ms") is not None for r in rows)
    if timed:
        plot_accuracy_vs_latency(rows, out_dir / "accuracy_vs_latency.png", title)

    data = {
        "title": title,
        "rows": list(rows),
        "paper": list(paper_rows or []),
        "meta": dict(meta or {}),
    }
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(out_dir / "report.json", lambda f: f.write(text.encode()))

    md = [f"# {title}", "", format_table(rows, paper_rows), ""]
    if meta:
        md += ["", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in meta.items()] + [""]
    md += ["![Top-1 against FLOPs](accuracy_vs_flops.png)", ""]
    if timed:
        md += ["![Top-1 against latency](accuracy_vs_latency.png)", ""]
    if pictures:
        md += ["## Self-group structure", ""]
        md += [f"### {name}\n\n![{name}]({file})\n" for name, file in pictures]
    atomic_write(out_dir / "report.md", lambda f: f.write("\n".join(md).encode()))
