"""``sgcnn eval PATH``: Top-1 / Top-5 of a model on a dataset split.

``PATH`` is an sgcnn checkpoint (also Params and FLOPs) or an exported program (``.pt2`` from
``sgcnn convert`` / ``sgcnn export``, or ``.onnx``, run in onnxruntime): the deployed artifact
itself is evaluated. The dataset
defaults to the one a checkpoint was trained on, when it comes from a run folder (its
``config``); otherwise ``--data`` names it. ``--set data.KEY=VALUE`` adjusts it.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import positive_int
from sgcnn.cli._pipeline import add_set_arg, quote, sets_key
from sgcnn.data.config import as_trained, class_names_text, ignored_normalize_note, same_classes
from sgcnn.deploy._programs import is_program
from sgcnn.engine.build import build_data, check_fits
from sgcnn.engine.checkpoint import FORMAT, load_checkpoint, model_from_payload, payload_record
from sgcnn.engine.config import Config, resolve_config
from sgcnn.engine.distributed import Dist, resolve_device
from sgcnn.engine.loaders import eval_loader
from sgcnn.engine.loop import Precision, evaluate
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help=COMMANDS["eval"])
    p.add_argument(
        "checkpoint",
        help="sgcnn checkpoint (e.g. runs/demo/conv95-fc95/model.pt) or exported program "
        "(.pt2 or .onnx)",
    )
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
    for item in args.sets:
        if not item.startswith("data."):
            raise SgcnnError(f"sgcnn eval only takes --set data.KEY=VALUE, got {item!r}")
    if is_program(args.checkpoint):
        return _run_program(args)
    payload = load_checkpoint(args.checkpoint)
    model, name, _ = model_from_payload(
        payload, args.checkpoint, args.model, args.num_classes, user_classes=True
    )
    saved = payload.get("config") if payload.get("format") == FORMAT else None
    if args.data is None and not saved:
        raise SgcnnError(
            f"{args.checkpoint!r} does not record its dataset: pass --data NAME (and --data-root)"
        )
    same_data = saved and args.data in (None, saved["data"].get("name"))
    record = payload_record(payload)
    # the run's whole data section (split seed, image size, classes), not just its name,
    # normalised as the weights were trained (an older sgcnn ignored some data.normalize)
    data = dict(saved["data"]) if same_data else {}
    recipe = {
        "model": {"name": name, "checkpoint": str(args.checkpoint)},
        "data": as_trained(data, record),
    }
    note = ignored_normalize_note(data, record, repr(args.checkpoint))
    if note and not sets_key(args.sets, "data.normalize"):
        print(note, file=sys.stderr)
    config = _config(args, recipe)
    splits = _recorded_splits(config, record, args.checkpoint)
    check_fits(model, config, splits)
    device = resolve_device(args.device)
    result = _evaluate(model.to(device), splits, config, args, device)
    return _print(args, name, config, result, count(model, splits.input_size))


def _run_program(args) -> int:
    """Evaluate an exported program as deployed (:mod:`sgcnn.deploy._programs`): a ``.pt2`` on its
    own device and kernels, an ``.onnx`` in onnxruntime on the CPU."""
    from sgcnn.deploy._programs import load_classifier

    path = args.checkpoint
    if args.model or args.num_classes:
        raise SgcnnError("--model / --num-classes describe a checkpoint; a program carries its own")
    program = load_classifier(path)  # a missing or unreadable file is said first
    if args.data is None:
        raise SgcnnError(
            f"{path!r} is an exported program, which does not record its dataset's name: pass "
            "--data NAME (and --data-root)"
        )
    if args.device != "auto" and resolve_device(args.device) != program.device:
        again = (
            "ONNX models are evaluated on the CPU"
            if program.kind == "onnx"
            else f"convert the checkpoint again with --device {args.device}"
        )
        raise SgcnnError(f"{path!r} runs on {program.device} only: {again}")
    config = _config(args, {"train": {"epochs": 1}})  # only its data section is used
    splits = _recorded_splits(config, program.data, path)
    _check_program_fits(program, splits, config, path)
    result = _evaluate(program.module, splits, config, args, program.device)
    return _print(args, "program", config, result, {"params": None, "flops": None})


def _check_program_fits(program, splits, config: Config, path: str) -> None:
    """The program takes the dataset's images and gives one score per class."""
    data, size, shape = config.data.name, list(splits.input_size), program.image_shape
    if shape is not None:
        fits = len(shape) == len(size) and all(
            w in (None, s) for w, s in zip(shape, size, strict=True)
        )
        if not fits:
            want = "x".join("?" if w is None else str(w) for w in shape)
            hint = (
                f"--set data.image_size={shape[-1]}"
                if len(shape) == 3 and shape[0] == size[0] and shape[-1] is not None
                else f"a dataset of {want} images"
            )
            raise SgcnnError(
                f"{path!r} was exported for {want} inputs but dataset {data!r} gives "
                f"{'x'.join(map(str, size))}: {hint}"
            )
    with torch.inference_mode():
        out = program.module(torch.zeros(1, *size, device=program.device))
    if out.dim() != 2 or out.shape[1] != splits.num_classes:
        got = out.shape[1] if out.dim() == 2 else tuple(out.shape[1:])
        raise SgcnnError(
            f"{path!r} gives {got} class scores but dataset {data!r} has "
            f"{splits.num_classes} classes"
        )


def _recorded_splits(config: Config, record: dict | None, path: str):
    """The data, normalised as the model was trained (its data ``record``), and refused if
    its class names differ from the recorded ones (the labels would mean other classes)."""
    if record and config.data.normalize is None and "mean" in record and "std" in record:
        config.data.normalize = [list(record["mean"]), list(record["std"])]
    splits = build_data(config)
    if record and "classes" in record and not same_classes(record["classes"], splits.classes):
        subset = " (or data.classes in that order)" if config.data.name == "imagefolder" else ""
        raise SgcnnError(
            f"{path!r} was trained on classes {class_names_text(record['classes'])}, this "
            f"data has {class_names_text(splits.classes)}: its labels would not mean the "
            f"same; give that data{subset}"
        )
    return splits


def _config(args, recipe: dict) -> Config:
    sets = [f"data.name={quote(args.data)}"] if args.data else []
    sets += [f"data.root={quote(args.data_root)}"] if args.data_root else []
    config = resolve_config({"train": {"epochs": 0}, **recipe}, sets + args.sets)
    config.data.augment = False
    return config


def _evaluate(model: nn.Module, splits, config: Config, args, device: torch.device) -> dict:
    dataset = getattr(splits, args.split)
    if len(dataset) == 0:
        raise SgcnnError(f"the {args.split} split of {config.data.name!r} is empty")
    loader = eval_loader(dataset, Dist(), args.batch_size, 0, device.type == "cuda")
    with torch.inference_mode():
        return evaluate(model, loader, Precision.create(device, "none", False), Dist())


def _print(args, name: str, config: Config, result: dict, counts: dict) -> int:
    out = {
        "checkpoint": str(args.checkpoint),
        "model": name,
        "data": config.data.name,
        "split": args.split,
        "images": result["n"],
        "top1": round(result["top1"], 4),
        "top5": None if result["top5"] is None else round(result["top5"], 4),
        "loss": round(result["loss"], 6),
        "params": counts["params"],  # None for a program: count the checkpoint it came from
        "flops": counts["flops"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{name} on {config.data.name} {args.split} ({result['n']} images)")
    print(f"top1    {out['top1']:.2f} %")
    if out["top5"] is not None:  # None for 5 classes or fewer (always 100 %)
        print(f"top5    {out['top5']:.2f} %")
    if out["params"] is not None:
        print(f"params  {out['params']:,}")
        print(f"flops   {out['flops']:,}")
    return 0
