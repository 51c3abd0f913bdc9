"""Issue 4's speed table: dense vs channel-pruned vs self-grouped + converted, side by side.

    python benchmarks/bench_convert.py --threads 2 --runs 30 --out results/bench_convert

For each network (random weights: speed does not depend on training, only on shapes and
masks), self-grouped with g = 16 at the paper's ratios, and each batch size, every variant
runs interleaved on the same input in one process (:func:`sgcnn.metrics.latency.benchmark`):

- ``dense``: the network as torchvision / the zoo builds it (NCHW, eager) — the baseline the
  speed targets refer to;
- ``dense_channels_last``: the same in channels-last memory (a one-line user optimization);
- ``dense_jit``: ``torch.jit.optimize_for_inference`` on the traced model (PyTorch's own CPU
  inference pass: BatchNorm folding, oneDNN layouts, fused ReLU);
- ``dense_fused``: dense through sgcnn's own compiler (BatchNorm / ReLU / residual fusion, no
  grouping) — what grouping itself adds is ``converted`` over this;
- ``masked``: the self-grouped model as trained (weights times masks: no faster);
- ``converted``: :func:`sgcnn.convert`, tuned at that batch size;
- ``channel_pruned`` / ``channel_pruned_fused`` (ResNet-50 only): L1 channel pruning to the
  MAC budget of issue 4 (1.76 GMACs), see ``channel_pruning.py``, eager and fused.

Writes ``<out>.json`` (everything, with provenance) and ``<out>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sgcnn
from sgcnn.metrics.latency import benchmark, environment
from sgcnn.nn import _native
from sgcnn.nn.convert import fuse_dense

CONFIGS = {
    # name: (conv sparsity, fc sparsity, input size)
    "resnet50": (0.6, 0.6, (3, 224, 224)),
    "lenet5": (0.95, 0.95, (1, 28, 28)),
    "resnet56": (0.75, 0.75, (3, 32, 32)),
}
CHANNEL_PRUNED_MACS = 1_760_000_000  # issue 4: Torch-Pruning's L1 ResNet-50 at 1.76 GMACs


class ChannelsLast(nn.Module):
    """Runs ``model`` on a channels-last copy of the input (weights converted once)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


def jit_optimized(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        scripted = torch.jit.optimize_for_inference(torch.jit.trace(model.eval(), x))
        scripted(x)
    return scripted


def run_model(name: str, batch_sizes, runs: int, warmup: int, breakdown: bool, clock: str) -> dict:
    conv_p, fc_p, size = CONFIGS[name]
    torch.manual_seed(0)
    model = sgcnn.create_model(name).eval()
    dense_copy = sgcnn.create_model(name).eval()
    dense_copy.load_state_dict(model.state_dict())
    t0 = time.perf_counter()
    sgcnn.self_group_(model, conv_p, fc_p, groups=16, seed=0, input_size=size)
    grouping_s = time.perf_counter() - t0
    extra = {
        "dense_channels_last": ChannelsLast(dense_copy),
        "dense_jit": lambda x, m=dense_copy: jit_optimized(m, x),
    }
    info = {"conv_sparsity": conv_p, "fc_sparsity": fc_p, "groups": 16, "grouping_s": grouping_s}
    if name == "resnet50":
        from channel_pruning import prune_to_macs

        pruned, ratio = prune_to_macs(dense_copy, CHANNEL_PRUNED_MACS, size)
        extra["channel_pruned"] = pruned
        extra["channel_pruned_fused"] = lambda x, p=pruned: fuse_dense(p, x)
        info["channel_pruning"] = {
            "method": "own L1 channel pruning, uniform ratio over coupled groups "
            "(benchmarks/channel_pruning.py; equivalent to Torch-Pruning MagnitudePruner L1)",
            "ratio": ratio,
            "macs": sgcnn.count(pruned, size)["flops"],
            "params": sgcnn.count(pruned, size)["params"],
        }
    result = benchmark(
        model,
        size,
        batch_sizes,
        runs=runs,
        warmup=warmup,
        extra=extra,
        breakdown=breakdown,
        progress=lambda msg: print(f"[{name}] {msg}", flush=True),
        clock=clock,
    )
    result.update(model=name, **info)
    return result


def markdown(results: list[dict], command: str, env: dict, native: str, clock: str) -> str:
    lines = [
        "# Converted self-grouped models: latency (issue 4)",
        "",
        f"- command: `{command}`",
        f"- date: {env['date']}; CPU: {env['host_cpu']} ({env['cpu_count']} cores); "
        f"threads: {env['threads']}",
        f"- torch {env['torch']}, torchvision {env.get('torchvision')}, numpy {env['numpy']}, "
        f"python {env['python']}; native kernel: {native}",
        f"- load average at start: {env.get('load_average')}; at end: "
        f"{[round(v, 2) for v in os.getloadavg()]}",
        "- fp32, random weights, self-grouped with g = 16; median over interleaved runs after "
        "warm-up; speedup = dense median / model median",
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
            "| batch | model | MMACs/img | median ms | p10-p90 ms | img/s | speedup vs dense |"
            " vs dense_fused |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in res["batches"]:
            for name, row in entry["models"].items():
                macs = row["macs_per_image"]
                macs = f"{macs / 1e6:.1f}" if macs is not None else "?"
                lines.append(
                    f"| {entry['batch']} | {name} | {macs} | {row['median_ms']:.2f} | "
                    f"{row['p10_ms']:.2f}-{row['p90_ms']:.2f} | {row['images_per_s']:.1f} | "
                    f"{row['speedup_vs_dense']:.2f}x | {row['speedup_vs_dense_fused']:.2f}x |"
                )
        lines.append("")
        for entry in res["batches"]:
            lines.append(
                f"- batch {entry['batch']}: MACs dense / self-grouped "
                f"{entry['macs_ratio']:.2f}x; converted realises "
                f"{entry['realised_fraction']:.0%} of the MAC reduction; padding "
                f"{entry['converted_padding_macs_per_image'] / 1e6:.1f} MMACs/img; "
                f"realizations {entry['realizations']}"
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
    parser.add_argument("--out", type=Path, default=Path("results/bench_convert"))
    args = parser.parse_args()
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
