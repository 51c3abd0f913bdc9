"""Speed table: dense (deployed every standard way) vs channel-pruned vs self-grouped + converted.

    python benchmarks/bench_convert.py --threads 2 --runs 30 --out results/bench_convert
    python benchmarks/bench_convert.py --quick --out /tmp/bench_quick   # smoke test, < 2 min

For each network (random weights: speed does not depend on training, only on shapes and
masks), self-grouped with g = 16 at the paper's ratios, and each batch size, every variant
runs interleaved on the same input in one process (:func:`sgcnn.metrics.latency.benchmark`):

- ``dense``: the network as torchvision / the zoo builds it (NCHW, eager) — the baseline the
  speed targets refer to;
- ``dense_channels_last``: the same in channels-last memory (a one-line user optimization);
- ``dense_jit``: ``torch.jit.optimize_for_inference`` on the traced model (PyTorch's own CPU
  inference pass: BatchNorm folding, oneDNN layouts, fused ReLU);
- ``dense_onnxruntime``: the dense model exported to ONNX and run by onnxruntime (CPU
  provider, intra-op threads = ``--threads``);
- ``dense_compile`` (unless ``--no-compile``): ``torch.compile`` (Inductor) with frozen
  weights, compiled for each batch size; the *best dense* is the fastest of these five, and
  every speedup is also given against it;
- ``dense_fused``: dense through sgcnn's own compiler (BatchNorm / ReLU / residual fusion, no
  grouping) — what grouping itself adds is ``converted`` over this;
- ``masked``: the self-grouped model as trained (weights times masks: no faster);
- ``converted``: :func:`sgcnn.convert`, tuned at that batch size;
- ``channel_pruned`` (ResNet-50 only): L1 channel pruning to 1.76 GMACs at 224 px (the budget
  scales with the input area), see ``sgcnn/metrics/_channel_peer.py``, deployed the same ways
  (eager, ``_channels_last``, ``_jit``, ``_onnxruntime``, ``_compile``, and ``_fused`` through
  sgcnn's fusion); the table names its best.

Writes ``<out>.json`` (everything, with provenance) and ``<out>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sgcnn
from sgcnn.deploy import _native
from sgcnn.metrics.latency import COMPILE, DEPLOYMENTS, benchmark, environment

CONFIGS = {
    # name: (conv sparsity, fc sparsity, input size)
    "resnet50": (0.6, 0.6, (3, 224, 224)),
    "lenet5": (0.95, 0.95, (1, 28, 28)),
    "resnet56": (0.75, 0.75, (3, 32, 32)),
}
CHANNEL_PRUNED_MACS = 1_760_000_000  # Torch-Pruning's L1 ResNet-50 at 1.76 GMACs (224 px)


def run_model(
    name: str,
    batch_sizes,
    runs: int,
    warmup: int,
    breakdown: bool,
    clock: str,
    tune: bool,
    size=None,
    deployments=DEPLOYMENTS,
) -> dict:
    conv_p, fc_p, default_size = CONFIGS[name]
    size = size or default_size
    torch.manual_seed(0)
    model = sgcnn.create_model(name).eval()
    dense_copy = sgcnn.create_model(name).eval()
    dense_copy.load_state_dict(model.state_dict())
    t0 = time.perf_counter()
    sgcnn.self_group_(model, conv_p, fc_p, groups=16, seed=0, input_size=size)
    grouping_s = time.perf_counter() - t0
    extra = {}
    info = {"conv_sparsity": conv_p, "fc_sparsity": fc_p, "groups": 16, "grouping_s": grouping_s}
    if name == "resnet50":
        from sgcnn.metrics._channel_peer import build_peer

        budget = int(CHANNEL_PRUNED_MACS * size[1] * size[2] / 224**2)
        info["channel_pruning"], peer = build_peer(dense_copy, budget, size, tune, deployments)
        extra.update(peer)
    result = benchmark(
        model,
        size,
        batch_sizes,
        runs=runs,
        warmup=warmup,
        tune=tune,
        extra=extra,
        breakdown=breakdown,
        progress=lambda msg: print(f"[{name}] {msg}", flush=True),
        clock=clock,
        deployments=deployments,
    )
    for entry in result["batches"]:  # the same conversion again: its tuning is cached now
        x = torch.randn(entry["batch"], *size)
        began = time.perf_counter()
        sgcnn.convert(model, x, tune=tune)
        entry["convert_again_s"] = round(time.perf_counter() - began, 2)
    result.update(model=name, **info)
    return result


def markdown(results: list[dict], command: str, env: dict, native: str, clock: str) -> str:
    lines = [
        "# Converted self-grouped models: latency against every dense deployment",
        "",
        f"- command: `{command}`",
        f"- date: {env['date']}; CPU: {env['host_cpu']} ({env['cpu_count']} cores); "
        f"threads: {env['threads']}; sgcnn commit: {env.get('sgcnn_commit', 'unknown')}",
        f"- torch {env['torch']}, torchvision {env.get('torchvision')}, numpy {env['numpy']}, "
        f"python {env['python']}; native kernel: {native}",
        f"- load average at start: {env.get('load_average')}; at end: "
        f"{[round(v, 2) for v in os.getloadavg()]}",
        "- fp32, random weights, self-grouped with g = 16; median over interleaved runs after "
        "warm-up; speedup = dense median / model median; *vs best dense* = the fastest of dense "
        "eager, channels-last, torch.jit.optimize_for_inference, onnxruntime and (unless "
        "--no-compile) torch.compile (named below each table) / model median",
        "- clock: "
        + (
            "CPU time of the single compute thread (immune to preemption by other processes)"
            if clock == "cpu"
            else "wall time (other processes on the machine show up in the spread)"
        ),
        "",
    ]
    for res in results:
        size = "x".join(map(str, res["input_size"]))
        lines += [
            f"## {res['model']} Conv-{round(res['conv_sparsity'] * 100)}/"
            f"FC-{round(res['fc_sparsity'] * 100)} ({size})",
            "",
        ]
        if "channel_pruning" in res:
            cp = res["channel_pruning"]
            lines += [
                f"Channel-pruned baseline: {cp['method']}; ratio {cp['ratio']:.3f}, "
                f"{cp['macs'] / 1e9:.2f} GMACs, {cp['params'] / 1e6:.2f} M params.",
                "",
            ]
        lines += [
            "| batch | model | MMACs/img | median ms | p10-p90 ms | img/s | vs dense |"
            " vs best dense | vs dense_fused |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in res["batches"]:
            for name, row in entry["models"].items():
                macs = row["macs_per_image"]
                macs = f"{macs / 1e6:.1f}" if macs is not None else "?"
                lines.append(
                    f"| {entry['batch']} | {name} | {macs} | {row['median_ms']:.2f} | "
                    f"{row['p10_ms']:.2f}-{row['p90_ms']:.2f} | {row['images_per_s']:.1f} | "
                    f"{row['speedup_vs_dense']:.2f}x | {row['speedup_vs_best_dense']:.2f}x | "
                    f"{row['speedup_vs_dense_fused']:.2f}x |"
                )
        lines.append("")
        for entry in res["batches"]:
            models = entry["models"]
            pruned = [k for k in models if k.startswith("channel_pruned")]
            best_pruned = min(pruned, key=lambda k: models[k]["median_ms"]) if pruned else None
            line = f"- batch {entry['batch']}: best dense = `{entry['best_dense']}`"
            if best_pruned:
                line += f"; best channel-pruned = `{best_pruned}`"
                line += (
                    f"; converted / best channel-pruned: "
                    f"{models[best_pruned]['median_ms'] / models['converted']['median_ms']:.2f}x"
                )
            lines.append(line)
            for name, why in entry.get("skipped", {}).items():
                lines.append(f"  - {name} not measured: {why}")
        lines.append("")
        for entry in res["batches"]:
            lines.append(
                f"- batch {entry['batch']}: MACs dense / self-grouped "
                f"{entry['macs_ratio']:.2f}x; converted realises "
                f"{entry['realised_fraction']:.0%} of the MAC reduction; padding "
                f"{entry['converted_padding_macs_per_image'] / 1e6:.1f} MMACs/img; "
                f"realizations {entry['realizations']}; sgcnn.convert took "
                f"{entry['convert_s']:.1f} s (again, tuning cached: "
                f"{entry.get('convert_again_s', float('nan')):.1f} s)"
            )
        lines.append("")
        for entry in res["batches"]:
            if "layers" not in entry:
                continue
            lines += [
                f"### {res['model']} per layer, batch {entry['batch']} "
                "(median ms inside the whole forward pass)",
                "",
                "| layer | realization | useful MMACs | converted ms | dense_fused ms | ratio |",
                "|---|---|---:|---:|---:|---:|",
            ]
            for layer in entry["layers"]:
                c, d = layer["converted_ms"], layer["dense_fused_ms"]
                ratio = f"{d / c:.2f}x" if c and d else ""
                macs = layer["useful_macs"]
                lines.append(
                    f"| {layer['name']} | {layer['realization'] or '-'} | "
                    f"{macs / 1e6 if macs else 0:.1f} | {c or 0:.2f} | {d or 0:.2f} | {ratio} |"
                )
            other = entry["layers_other_ms"]
            lines += [
                f"| (everything else: pooling, ...) | | | {other['converted']:.2f} | "
                f"{other['dense_fused']:.2f} | |",
                "",
            ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or (with --threads 1) the thread's CPU time, which other processes "
        "on a shared machine cannot inflate",
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--models", default="resnet50,resnet56,lenet5")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--no-tune", action="store_true", help="convert without timing")
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="leave torch.compile (Inductor, frozen weights) out of the dense deployments "
        "(it compiles each network and batch size for a minute or more)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test of every code path: resnet50 at 64 px and lenet5, batches 1 and 2, "
        "3 runs, no tuning (the numbers mean nothing)",
    )
    parser.add_argument("--out", type=Path, default=Path("results/bench_convert"))
    args = parser.parse_args()
    size = None
    if args.quick:
        args.models, args.batch_sizes, args.runs, args.warmup = "resnet50,lenet5", "1,2", 3, 1
        args.no_breakdown = args.no_tune = args.no_compile = True
        size = (3, 64, 64)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: use --threads 1")
    torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    env = environment("cpu")
    native = "available" if _native.available() else f"unavailable ({_native.unavailable_reason()})"
    command = " ".join(["python", *sys.argv])
    results = []
    for name in args.models.split(","):
        results.append(
            run_model(
                name,
                batch_sizes,
                args.runs,
                args.warmup,
                breakdown=not args.no_breakdown and name == "resnet50",
                clock=args.clock,
                tune=not args.no_tune,
                size=size if name == "resnet50" else None,
                deployments=DEPLOYMENTS if args.no_compile else (*DEPLOYMENTS, COMPILE),
            )
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": command,
        "environment": env,
        "clock": args.clock,
        "native_kernel": native,
        "results": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results, command, env, native, args.clock))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
