"""``sgcnn bench``: latency of dense, self-grouped and converted models, side by side."""

from __future__ import annotations

import csv
import io
import sys

import torch

from sgcnn._io import check_output_paths, write_text
from sgcnn.cli import COMMANDS
from sgcnn.cli._common import (
    add_model_args,
    add_overwrite_arg,
    model_for_example,
    non_negative_int,
    parse_ratio,
    path_arg,
    positive_int,
    set_timing_threads,
    write_json,
)
from sgcnn.core.grouper import self_group_
from sgcnn.deploy._convert_checks import resolve_device
from sgcnn.errors import SgcnnError
from sgcnn.metrics.latency import COMPILE, DEPLOYMENTS, benchmark
from sgcnn.nn.masked import is_masked


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise SgcnnError(f"--batch-sizes {text!r}: give integers like 1,16") from None
    if not sizes or min(sizes) < 1:
        raise SgcnnError(f"--batch-sizes {text!r}: give positive integers like 1,16")
    if len(set(sizes)) != len(sizes):
        raise SgcnnError(f"--batch-sizes {text!r} names a batch size twice; give each once")
    return sizes


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help=COMMANDS["bench"])
    add_model_args(p)
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated (default 1,16)")
    p.add_argument(
        "--threads", type=positive_int, help="torch threads (default: torch's own choice)"
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runs", type=positive_int, default=20, help="timed rounds (default 20)")
    p.add_argument(
        "--warmup", type=non_negative_int, default=3, help="untimed rounds first (default 3)"
    )
    p.add_argument(
        "--sparsity",
        type=parse_ratio,
        help="without --checkpoint: self-group the fresh model to this conv sparsity (default 0.6)",
    )
    p.add_argument("--fc-sparsity", type=parse_ratio, help="default: --sparsity")
    p.add_argument(
        "--groups", type=positive_int, help="without --checkpoint: self-groups (default 16)"
    )
    p.add_argument("--no-tune", action="store_true", help="pick realizations without timing")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also deploy the dense model (and the channel-pruned peer) with torch.compile "
        "(Inductor, frozen weights; a minute or more per network and batch size)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--breakdown", action="store_true", help="add per-layer times")
    p.add_argument("--output", type=path_arg, help="write the results as JSON here")
    p.add_argument("--csv", type=path_arg, help="write one row per (batch, model) as CSV here")
    add_overwrite_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    options = (("--sparsity", args.sparsity), ("--fc-sparsity", args.fc_sparsity),
               ("--groups", args.groups))  # fmt: skip
    given = [flag for flag, value in options if value is not None]
    if args.checkpoint and given:
        raise SgcnnError(
            f"{' and '.join(given)} self-group a fresh model; a --checkpoint is benchmarked as "
            "it is (self-group it first with `sgcnn group`)"
        )
    set_timing_threads(args.threads)
    check_output_paths(args.overwrite, {"--output": args.output, "--csv": args.csv})
    resolve_device(args.device, torch.nn.Module())  # fail before any work
    model, name, size, _ = model_for_example(args, max(batch_sizes))
    grouping = "checkpoint"
    if not any(is_masked(m) for m in model.modules()):
        if args.checkpoint:
            raise SgcnnError(
                f"{args.checkpoint!r} is not self-grouped; self-group it first (`sgcnn group "
                "--checkpoint ...`), or bench a fresh --model with --sparsity"
            )
        conv = 0.6 if args.sparsity is None else args.sparsity
        fc = conv if args.fc_sparsity is None else args.fc_sparsity
        groups = 16 if args.groups is None else args.groups
        self_group_(model, conv, fc, groups=groups, input_size=size)
        grouping = f"fresh model self-grouped: conv {conv}, fc {fc}, g={groups}"

    def say(msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    def note(msg: str) -> None:
        if not args.quiet:
            say(msg)

    deployments = (*DEPLOYMENTS, COMPILE) if args.compile else DEPLOYMENTS
    peer, extra = _channel_pruned_peer(model.eval(), size, not args.no_tune, note, deployments)
    result = benchmark(
        model,
        size,
        batch_sizes,
        device=args.device,
        runs=args.runs,
        warmup=args.warmup,
        tune=not args.no_tune,
        extra=extra,
        breakdown=args.breakdown,
        progress=None if args.quiet else say,
        deployments=deployments,
    )
    result.update(model=name, grouping=grouping, command=" ".join(["sgcnn", *sys.argv[1:]]))
    result["channel_pruning"] = peer
    for entry in result["batches"]:  # compiled peers cannot be counted: they run its MACs
        for variant, row in entry["models"].items():
            if variant.startswith("channel_pruned") and row["macs_per_image"] is None:
                row["macs_per_image"] = peer["macs"]
    print(format_table(result))
    if args.output:
        write_json(args.output, result, args.overwrite)
    if args.csv:
        write_text(args.csv, to_csv(result), args.overwrite)
    return 0


def _channel_pruned_peer(masked, size, tune: bool, say, deployments) -> tuple[dict, dict]:
    """``(description, extra models)``: the model's dense version L1 channel-pruned to the
    self-grouped model's MACs, deployed every way the dense model is; none (and why) for
    models other than torchvision ResNets."""
    import copy

    from sgcnn.metrics._channel_peer import build_peer, peer_unavailable
    from sgcnn.metrics.counting import count
    from sgcnn.nn.masked import to_dense
    from sgcnn.nn.swap import replace_modules_

    dense = copy.deepcopy(masked)
    replace_modules_(dense, lambda m, n: is_masked(m), lambda m, n: to_dense(m))
    why = peer_unavailable(dense)
    if why is not None:
        say(f"no channel-pruned peer: {why}")
        return {"skipped": why}, {}
    target = count(masked, size)["flops"]
    say(f"channel-pruning the dense model to {target / 1e6:.1f} MMACs (the self-grouped MACs)")
    return build_peer(dense, target, size, tune, deployments)


def format_table(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"{result.get('model', '')}  input {'x'.join(map(str, result['input_size']))}  "
        f"{env['device']} ({env['host_cpu']}), {env['threads']} threads, torch {env['torch']}",
        f"{'batch':>5s} {'model':30s} {'median ms':>10s} {'p10-p90 ms':>15s} {'img/s':>9s} "
        f"{'MMACs/img':>10s} {'vs dense':>9s} {'vs best dense':>14s}",
    ]
    for entry in result["batches"]:
        for name, row in entry["models"].items():
            macs = row["macs_per_image"]
            macs = f"{macs / 1e6:10.1f}" if macs is not None else f"{'?':>10s}"
            lines.append(
                f"{entry['batch']:5d} {name:30s} {row['median_ms']:10.2f} "
                f"{row['p10_ms']:7.2f}-{row['p90_ms']:<7.2f} {row['images_per_s']:9.1f} "
                f"{macs} {row['speedup_vs_dense']:8.2f}x {row['speedup_vs_best_dense']:13.2f}x"
            )
        lines.append(f"{'':5s} best dense deployment: {entry['best_dense']}")
        peers = {k: v for k, v in entry["models"].items() if k.startswith("channel_pruned")}
        if peers:
            best = min(peers, key=lambda k: peers[k]["median_ms"])
            lines.append(f"{'':5s} best channel-pruned deployment: {best}")
        for name, why in entry.get("skipped", {}).items():
            lines.append(f"{'':5s} {name} not measured: {why}")
        realised = entry["realised_fraction"]
        lines.append(
            f"{'':5s} MACs dense/grouped {entry['macs_ratio']:.2f}x; converted realises "
            f"{realised:.0%} of the MAC reduction; padding "
            f"{entry['converted_padding_macs_per_image'] / 1e6:.1f} MMACs/img"
            if realised is not None
            else ""
        )
    peer = result.get("channel_pruning") or {}
    if "skipped" in peer:
        lines.append(f"channel-pruned peer: none ({peer['skipped']})")
    elif peer:
        lines.append(
            f"channel-pruned peer: ratio {peer['ratio']:.3f}, {peer['macs'] / 1e6:.1f} MMACs, "
            f"{peer['params']:,} params"
        )
    return "\n".join(lines)


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    env = result["environment"]
    writer.writerow(
        [
            "model",
            "batch",
            "variant",
            "median_ms",
            "p10_ms",
            "p90_ms",
            "images_per_s",
            "macs_per_image",
            "speedup_vs_dense",
            "speedup_vs_best_dense",
            "speedup_vs_dense_fused",
            "threads",
            "device",
            "cpu",
            "torch",
            "date",
        ]
    )
    for entry in result["batches"]:
        for name, row in entry["models"].items():
            writer.writerow(
                [
                    result.get("model"),
                    entry["batch"],
                    name,
                    f"{row['median_ms']:.3f}",
                    f"{row['p10_ms']:.3f}",
                    f"{row['p90_ms']:.3f}",
                    f"{row['images_per_s']:.2f}",
                    row["macs_per_image"],
                    f"{row['speedup_vs_dense']:.3f}",
                    f"{row['speedup_vs_best_dense']:.3f}",
                    f"{row['speedup_vs_dense_fused']:.3f}",
                    env["threads"],
                    env["device"],
                    env["host_cpu"],
                    env["torch"],
                    env["date"],
                ]
            )
    return buf.getvalue()
