"""``sgcnn convert``: compile a self-grouped checkpoint into fast modules, saved as ``.pt2``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from sgcnn._io import check_output_paths
from sgcnn.cli import COMMANDS
from sgcnn.cli._common import (
    add_model_args,
    add_overwrite_arg,
    data_record_line,
    model_for_example,
    path_arg,
    positive_int,
    require_grouped_checkpoint,
    set_timing_threads,
    write_json,
)
from sgcnn.deploy import export as exporting
from sgcnn.deploy.convert import convert
from sgcnn.errors import SgcnnError


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help=COMMANDS["convert"])
    add_model_args(p)
    p.add_argument(
        "--batch-size", type=positive_int, default=1, help="batch size to tune for (default 1)"
    )
    p.add_argument("--threads", type=positive_int, help="torch threads to tune with (>= 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-tune", action="store_true", help="pick realizations without timing")
    p.add_argument("--output", type=path_arg, required=True, help="file to write (.pt2)")
    p.add_argument("--report", type=path_arg, help="also write the per-layer choices as JSON")
    add_overwrite_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    require_grouped_checkpoint(args)
    check_output_paths(args.overwrite, {"--output": args.output, "--report": args.report})
    check_pt2_name(args.output)
    if args.batch_size > exporting.MAX_BATCH:
        raise SgcnnError(
            f"--batch-size {args.batch_size} is above {exporting.MAX_BATCH}, the largest batch "
            "a saved program takes"
        )
    model, name, size, record = model_for_example(args, args.batch_size)
    set_timing_threads(args.threads)
    x = torch.randn(args.batch_size, *size)
    converted = convert(
        model.eval(), x, device=args.device, tune=not args.no_tune, progress=not args.quiet
    )
    exporting.save(
        converted,
        args.output,
        x.to(args.device),
        progress=not args.quiet,
        overwrite=args.overwrite,
        data=record,
    )
    layers = converted.sgcnn_conversion["layers"]
    counts = Counter(r["realization"] for r in layers)
    print(
        f"converted {len(layers)} layers of {name}: "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
    )
    print(f"wrote {args.output}")
    print(data_record_line(record))
    if args.report:
        write_json(args.report, converted.sgcnn_conversion, args.overwrite)
    return 0


def check_pt2_name(path: Path) -> None:
    """A ``.pt2`` program must carry that suffix (an ``.onnx`` name would mislead)."""
    if path.suffix != ".pt2":
        raise SgcnnError(f"--output {str(path)!r} must end in .pt2 (a torch.export program)")
