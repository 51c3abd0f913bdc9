"""``sgcnn convert``: compile a self-grouped checkpoint into fast modules, saved as ``.pt2``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from sgcnn import exporting
from sgcnn.cli._common import add_model_args, input_size_for, load_model_from_args, write_json
from sgcnn.errors import SgcnnError
from sgcnn.nn.convert import convert


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="compile a self-grouped model into exact, fast diverse-group modules (.pt2)",
    )
    add_model_args(p)
    p.add_argument("--batch-size", type=int, default=1, help="batch size to tune for (default 1)")
    p.add_argument("--threads", type=int, help="torch threads to tune with")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--no-tune", action="store_true", help="pick realizations without timing")
    p.add_argument("--output", type=Path, required=True, help="file to write (.pt2)")
    p.add_argument("--report", type=Path, help="also write the per-layer choices as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    if not args.checkpoint:
        raise SgcnnError("give --checkpoint: a self-grouped model (from `sgcnn group`)")
    if args.batch_size < 1:
        raise SgcnnError("--batch-size must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    model, name, _ = load_model_from_args(args)
    size = input_size_for(args, name)
    x = torch.randn(args.batch_size, *size)
    converted = convert(
        model.eval(), x, device=args.device, tune=not args.no_tune, progress=not args.quiet
    )
    exporting.save(converted, args.output, x.to(args.device), progress=not args.quiet)
    layers = converted.sgcnn_conversion["layers"]
    counts = Counter(r["realization"] for r in layers)
    print(
        f"converted {len(layers)} layers of {name}: "
        + ", ".join(f"{k} {v}" for k, v in counts.most_common())
    )
    print(f"wrote {args.output}")
    if args.report:
        write_json(args.report, converted.sgcnn_conversion)
    return 0
