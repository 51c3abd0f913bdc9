"""``sgcnn eval CHECKPOINT``: Top-1 / Top-5, Params and FLOPs of a model on a dataset split.

The dataset defaults to the one the checkpoint was trained on, when it comes from a run folder
(its ``config``); otherwise ``--data`` names it. ``--set data.KEY=VALUE`` adjusts it.
"""

from __future__ import annotations

import json

import torch

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import positive_int
from sgcnn.cli._pipeline import add_set_arg, quote
from sgcnn.engine.build import build_data, check_fits
from sgcnn.engine.checkpoint import FORMAT, load_checkpoint, load_model
from sgcnn.engine.config import resolve_config
from sgcnn.engine.distributed import Dist, resolve_device
from sgcnn.engine.loaders import eval_loader
from sgcnn.engine.loop import Precision, evaluate
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help=COMMANDS["eval"])
    p.add_argument("checkpoint", help="sgcnn checkpoint (e.g. runs/demo/conv95-fc95/model.pt)")
    p.add_argument("--model", help="model name (needed for a plain state_dict)")
    p.add_argument("--num-classes", type=positive_int, help="classes of a plain state_dict's model")
    p.add_argument("--data", help="dataset name (default: the checkpoint's run's)")
    p.add_argument("--data-root", help="data folder or archive (data.root)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_set_arg(p, "data.KEY=VALUE", help="override a dataset key, e.g. --set data.image_size=32")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    payload = load_checkpoint(args.checkpoint)
    model, name, _ = load_model(args.checkpoint, args.model, args.num_classes, user_classes=True)
    saved = payload.get("config") if payload.get("format") == FORMAT else None
    if args.data is None and not saved:
        raise SgcnnError(
            f"{args.checkpoint!r} does not record its dataset: pass --data NAME (and --data-root)"
        )
    for item in args.sets:
        if not item.startswith("data."):
            raise SgcnnError(f"sgcnn eval only takes --set data.KEY=VALUE, got {item!r}")
    recipe = {
        "model": {"name": name, "checkpoint": str(args.checkpoint)},
        "data": dict(saved["data"]) if saved and args.data is None else {},
        "train": {"epochs": 0},
    }
    sets = [f"data.name={quote(args.data)}"] if args.data else []
    sets += [f"data.root={quote(args.data_root)}"] if args.data_root else []
    config = resolve_config(recipe, sets + args.sets)
    config.data.augment = False
    splits = build_data(config)
    check_fits(model, config, splits)
    device = resolve_device(args.device)
    model = model.to(device)
    dataset = getattr(splits, args.split)
    if len(dataset) == 0:
        raise SgcnnError(f"the {args.split} split of {config.data.name!r} is empty")
    loader = eval_loader(dataset, Dist(), args.batch_size, 0, device.type == "cuda")
    with torch.inference_mode():
        result = evaluate(model, loader, Precision(device), Dist())
    counts = count(model, splits.input_size)
    out = {
        "checkpoint": str(args.checkpoint),
        "model": name,
        "data": config.data.name,
        "split": args.split,
        "images": result["n"],
        "top1": round(result["top1"], 4),
        "top5": None if result["top5"] is None else round(result["top5"], 4),
        "loss": round(result["loss"], 6),
        "params": counts["params"],
        "flops": counts["flops"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{name} on {config.data.name} {args.split} ({result['n']} images)")
    print(f"top1    {out['top1']:.2f} %")
    if out["top5"] is not None:  # None for 5 classes or fewer (always 100 %)
        print(f"top5    {out['top5']:.2f} %")
    print(f"params  {out['params']:,}")
    print(f"flops   {out['flops']:,}")
    return 0
