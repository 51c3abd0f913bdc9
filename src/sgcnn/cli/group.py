"""``sgcnn group``: self-group a model and write ``model.pt`` + ``summary.json``."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

from sgcnn._io import publish_dir, staging_dir
from sgcnn.cli import COMMANDS
from sgcnn.cli._common import (
    add_model_args,
    check_output_free,
    input_size_for,
    load_model_from_args,
    parse_ratio,
    path_arg,
    positive_int,
    seed_int,
    write_json,
)
from sgcnn.core.grouper import SPARSER_MARGIN, SelfGrouper
from sgcnn.engine.checkpoint import model_payload, save_checkpoint
from sgcnn.metrics.counting import count


def register(subparsers) -> None:
    p = subparsers.add_parser("group", help=COMMANDS["group"])
    add_model_args(p)
    p.add_argument("--conv-sparsity", type=parse_ratio, required=True, help="e.g. 0.7")
    p.add_argument("--fc-sparsity", type=parse_ratio, help="default: the conv sparsity")
    p.add_argument(
        "--groups", type=positive_int, default=16, help="self-groups per layer (default 16)"
    )
    p.add_argument("--seed", type=seed_int, default=0, help="k-means seed (default 0)")
    p.add_argument("--include", action="append", help="only layers matching (fnmatch); repeat")
    p.add_argument("--exclude", action="append", help="skip layers matching (fnmatch); repeat")
    p.add_argument(
        "--output", type=path_arg, required=True, help="folder for model.pt, summary.json"
    )
    p.add_argument("--overwrite", action="store_true", help="replace files in --output")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.set_defaults(func=run)


def run(args) -> int:
    check_output_free(args.output, args.overwrite)
    model, name, kwargs, record = load_model_from_args(args)
    size = input_size_for(args, name, record)
    baseline = count(model, size)
    start = time.perf_counter()
    grouper = SelfGrouper(
        model,
        groups=args.groups,
        seed=args.seed,
        include=args.include,
        exclude=args.exclude,
        input_size=size,
    )
    with warnings.catch_warnings():  # said below as a note, after the report
        warnings.filterwarnings("ignore", message=".* already sparser than this step")
        report = grouper.step(args.conv_sparsity, args.fc_sparsity)
    seconds = time.perf_counter() - start
    grouped = count(model, size)

    summary = {
        "model": name,
        "model_kwargs": kwargs,
        "input_size": list(size),
        "conv_sparsity": args.conv_sparsity,
        "fc_sparsity": args.conv_sparsity if args.fc_sparsity is None else args.fc_sparsity,
        "groups": args.groups,
        "seed": args.seed,
        "seconds": round(seconds, 3),
        "baseline": {k: baseline[k] for k in ("params", "flops", "params_with_bn")},
        "grouped": {k: grouped[k] for k in ("params", "flops", "params_with_bn")},
        "left_dense": {
            "stems": report.stems,
            "shortcuts": report.shortcuts,
            "depthwise": report.depthwise,
            "skipped": report.skipped,
        },
        "layers": [vars(r) for r in report.layers],
    }
    payload = model_payload(model, name, kwargs)
    payload["grouping"] = {
        k: summary[k] for k in ("conv_sparsity", "fc_sparsity", "groups", "seed")
    }
    if record is not None:
        payload["data"] = record  # what the model was trained on travels with it

    staging = staging_dir(args.output)
    try:
        save_checkpoint(staging / "model.pt", payload)
        write_json(staging / "summary.json", summary)
        publish_dir(staging, args.output, args.overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)

    if not args.quiet:
        print(report)
    above = [r.name for r in report.layers if r.sparsity > r.target_sparsity + SPARSER_MARGIN]
    if above:  # masks only grow: a sparser checkpoint stays as sparse as it was
        print(
            f"note: {len(above)} of {len(report.layers)} layers were already sparser than the "
            f"target (e.g. {above[0]}) and stay so; self-grouping is cumulative, so start from "
            "a less sparse checkpoint to reach a lower sparsity"
        )
    b, g = baseline, grouped
    print(
        f"{name}: params {b['params']:,} -> {g['params']:,} ({b['params'] / g['params']:.2f}x), "
        f"FLOPs {b['flops']:,} -> {g['flops']:,} ({b['flops'] / g['flops']:.2f}x); "
        f"self-grouped {len(report.layers)} layers in {seconds:.1f} s; wrote "
        f"{Path(args.output) / 'model.pt'} and summary.json"
    )
    return 0
