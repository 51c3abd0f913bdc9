"""``sgcnn count``: Params and FLOPs of a model, mask-aware (paper convention)."""

from __future__ import annotations

import json

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import (
    add_model_args,
    input_size_for,
    load_model_from_args,
)
from sgcnn.metrics.counting import count


def register(subparsers) -> None:
    p = subparsers.add_parser("count", help=COMMANDS["count"])
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON (with per-layer counts)")
    p.set_defaults(func=run)


def run(args) -> int:
    model, name, _, record = load_model_from_args(args)
    size = input_size_for(args, name, record)
    result = count(model, size)
    if args.json:
        print(json.dumps({"model": name, "input_size": list(size), **result}, indent=2))
        return 0
    print(f"model           {name}  (input {'x'.join(map(str, size))})")
    print(f"params          {result['params']:,}  (conv + linear, masked weights removed)")
    print(f"flops (MACs)    {result['flops']:,}")
    print(f"params with BN  {result['params_with_bn']:,}")
    print(f"params, all     {result['params_total']:,}")
    return 0
