"""Where ResNet-50's batch time goes: converted self-grouped model against onnxruntime's dense one.

    python benchmarks/deploy_breakdown.py --threads 1,2 --batch 16

torchvision ResNet-50 (random weights), self-grouped Conv-60/FC-60 with g = 16 and converted
with :func:`sgcnn.convert` at each thread count (tuned; cached in ``$SGCNN_CACHE``), against the
same network dense, exported to ONNX and run by onnxruntime (CPU provider, intra-op threads =
the thread count). All in one process; each round runs every thread count (the order
alternating), so the machine's drift does not fall on one thread count:

- the converted model's per-layer times inside its forward pass
  (:func:`sgcnn.metrics.latency.layer_times`);
- one onnxruntime run, whose node times come from onnxruntime's own profile
  (``enable_profiling``).

onnxruntime names a fused node after its last operator, so its nodes are mapped to ResNet
layers by name: ``relu`` (the stem's, then each block's first) -> ``conv1``, ``relu_1`` ->
``conv2``, ``conv3`` / ``relu_2`` -> ``conv3``, ``downsample`` -> the projection. Prints, per
thread count, the medians by part (stem, shortcut projections, 3x3, 1x1, the rest), then per
layer with the scaling from the first thread count to the last, and the machine; ``--out``
also writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sgcnn
from _env import describe
from sgcnn.metrics._timing import _OnnxRuntime
from sgcnn.metrics.latency import layer_times

CATEGORIES = ("stem", "shortcut", "3x3", "1x1", "rest")


def category(layer: str) -> str:
    """The ResNet category of a converted layer's name."""
    if "downsample" in layer:
        return "shortcut"
    if layer == "conv1":
        return "stem"
    if layer.endswith("conv2"):
        return "3x3"
    if layer.endswith(("conv1", "conv3")):
        return "1x1"
    return "rest"


def ort_layer(node: str) -> str:
    """The ResNet layer an onnxruntime node computes (its name when it is none of them)."""
    parts = node.replace("_output_0_nchwc", "").replace("_output_0", "").strip("/").split("/")
    if parts[0] == "relu":
        return "conv1"
    if len(parts) >= 3:
        block, op = parts[1], parts[2]
        named = {"relu": "conv1", "relu_1": "conv2", "conv3": "conv3", "relu_2": "conv3"}
        if op in named:
            return f"{block}.{named[op]}"
        if op == "downsample":
            return f"{block}.downsample.0"
    return node


def node_medians(session, runs: int) -> dict[str, float]:
    """``{ResNet layer: median ms}`` over the last ``runs`` runs of ``session``'s profile."""
    with open(session.end_profiling()) as f:
        events = json.load(f)
    per_node: dict[str, list[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            per_node.setdefault(name, []).append(event["dur"] / 1e3)
    out: dict[str, float] = {}
    for node, times in per_node.items():
        layer = ort_layer(node)
        out[layer] = out.get(layer, 0.0) + statistics.median(times[-runs:])
    return out


def categories(ours: dict[str, float], theirs: dict[str, float]) -> dict[str, list[float]]:
    """``{category: [converted ms, onnxruntime ms]}``."""
    by_cat = {c: [0.0, 0.0] for c in CATEGORIES}
    for name, ms in ours.items():
        if not name.startswith("("):
            by_cat[category(name)][0] += ms
    by_cat["rest"][0] += ours["(other)"]
    for name, ms in theirs.items():
        by_cat[category(name) if name in ours else "rest"][1] += ms
    return by_cat


def measure(threads: list[int], batch: int, runs: int) -> dict:
    """Convert and export once per thread count, then alternate the thread counts round by
    round (per-layer times of the converted model, one onnxruntime run), in one process."""
    size = (3, 224, 224)
    torch.manual_seed(0)
    model = sgcnn.create_model("resnet50").eval()
    dense = sgcnn.create_model("resnet50").eval()
    dense.load_state_dict(model.state_dict())
    sgcnn.self_group_(model, 0.6, 0.6, groups=16, seed=0, input_size=size)
    x = torch.randn(batch, *size)
    converted, sessions, convert_s = {}, {}, {}
    samples = {t: {"layers": [], "onnxruntime": []} for t in threads}
    with tempfile.TemporaryDirectory() as folder:
        for t in threads:
            torch.set_num_threads(t)
            began = time.perf_counter()
            converted[t] = sgcnn.convert(model, x)
            convert_s[t] = time.perf_counter() - began
            # the deployment bench_convert.py times, profiling its nodes
            sessions[t] = _OnnxRuntime(dense, x, os.path.join(folder, f"profile_{t}"))
            sessions[t](x)  # warm-up (its profile entry is dropped below)
        for r in range(runs):
            for t in threads if r % 2 == 0 else threads[::-1]:
                torch.set_num_threads(t)
                samples[t]["layers"].append(layer_times(converted[t], x, runs=1))
                began = time.perf_counter()
                sessions[t](x)
                samples[t]["onnxruntime"].append((time.perf_counter() - began) * 1e3)
                time.sleep(0.05)  # onnxruntime's threads spin a while after a run
        out = {}
        for t in threads:
            layers = samples[t]["layers"]
            ours = {k: statistics.median(s[k] for s in layers) for k in layers[0]}
            theirs = node_medians(sessions[t].session, runs)
            out[t] = {
                "convert_s": convert_s[t],
                "converted_ms": ours,
                "onnxruntime_ms": theirs,
                "onnxruntime_total_ms": statistics.median(samples[t]["onnxruntime"]),
                "categories": categories(ours, theirs),
                "realizations": {
                    n: getattr(m, "realization", "") for n, m in converted[t].named_modules()
                },
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, alternated round by round")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write everything here as JSON")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    result = measure(threads, args.batch, args.runs)
    env = describe()
    env["torch_threads"] = threads
    print(f"# ResNet-50 Conv-60 (g = 16), batch {args.batch}: converted against onnxruntime\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- {json.dumps(env)}")
    print(f"- medians of {args.runs} rounds; thread counts alternated round by round\n")
    print("| threads | part | converted ms | onnxruntime dense ms | onnxruntime / converted |")
    print("|---:|---|---:|---:|---:|")
    for t, r in result.items():
        for c, (a, b) in r["categories"].items():
            print(f"| {t} | {c} | {a:.1f} | {b:.1f} | {b / a if a else float('nan'):.2f}x |")
        total = r["converted_ms"]["(total)"]
        ort_total = r["onnxruntime_total_ms"]
        print(
            f"| {t} | **whole pass** | {total:.1f} | {ort_total:.1f} | {ort_total / total:.2f}x |"
        )
    print(
        "\n(the converted whole pass includes the per-layer hooks; sgcnn.convert took "
        + ", ".join(f"{r['convert_s']:.1f} s at {t} thread(s)" for t, r in result.items())
        + ")"
    )
    first, last = threads[0], threads[-1]
    a, b = result[first], result[last]
    print(
        f"\n| layer | realization | converted ms ({first} / {last} threads, scaling) | "
        f"onnxruntime ms ({first} / {last}, scaling) |"
    )
    print("|---|---|---:|---:|")
    for name, ms in b["converted_ms"].items():
        if name.startswith("("):
            continue
        ours = f"{a['converted_ms'][name]:.2f} / {ms:.2f} ({a['converted_ms'][name] / ms:.2f}x)"
        o1, o2 = a["onnxruntime_ms"].get(name), b["onnxruntime_ms"].get(name)
        theirs = f"{o1:.2f} / {o2:.2f} ({o1 / o2:.2f}x)" if o1 and o2 else "-"
        print(f"| {name} | {b['realizations'].get(name, '')} | {ours} | {theirs} |")
    if args.out:
        args.out.write_text(
            json.dumps({"environment": env, "batch": args.batch, "threads": result}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
