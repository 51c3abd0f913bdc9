"""``sgcnn eval PATH``: Top-1 / Top-5 of a model on a dataset split.

``PATH`` is an sgcnn checkpoint (also Params and FLOPs) or an exported program (``.pt2`` from
``sgcnn convert`` / ``sgcnn export``, or ``.onnx``, run in onnxruntime): the deployed artifact
itself is evaluated. The dataset
defaults to the one a checkpoint was trained on, when it comes from a run folder (its
``config``); otherwise ``--data`` names it. ``--set data.KEY=VALUE`` adjusts it.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from sgcnn._pt2_check import looks_like_pt2
from sgcnn.cli import COMMANDS
from sgcnn.cli._common import positive_int
from sgcnn.cli._pipeline import add_set_arg, quote
from sgcnn.engine.build import build_data, check_fits
from sgcnn.engine.checkpoint import FORMAT, load_checkpoint, load_model
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
    if looks_like_pt2(args.checkpoint) or _is_onnx(args.checkpoint):
        return _run_program(args)
    payload = load_checkpoint(args.checkpoint)
    model, name, _ = load_model(args.checkpoint, args.model, args.num_classes, user_classes=True)
    saved = payload.get("config") if payload.get("format") == FORMAT else None
    if args.data is None and not saved:
        raise SgcnnError(
            f"{args.checkpoint!r} does not record its dataset: pass --data NAME (and --data-root)"
        )
    recipe = {
        "model": {"name": name, "checkpoint": str(args.checkpoint)},
        "data": dict(saved["data"]) if saved and args.data is None else {},
    }
    config = _config(args, recipe)
    splits = build_data(config)
    check_fits(model, config, splits)
    device = resolve_device(args.device)
    result = _evaluate(model.to(device), splits, config, args, device)
    return _print(args, name, config, result, count(model, splits.input_size))


def _run_program(args) -> int:
    """Evaluate a saved program as deployed: a ``.pt2`` (``sgcnn.load``) on its own device and
    kernels, an ``.onnx`` in onnxruntime on the CPU."""
    path = args.checkpoint
    if args.model or args.num_classes:
        raise SgcnnError("--model / --num-classes describe a checkpoint; a program carries its own")
    if args.data is None:
        raise SgcnnError(
            f"{path!r} is an exported program, which does not record its dataset: pass --data "
            "NAME (and --data-root)"
        )
    config = _config(args, {"train": {"epochs": 1}})  # only its data section is used
    splits = build_data(config)
    program, device, shape = _load_onnx(path) if _is_onnx(path) else _load_pt2(path)
    if args.device != "auto" and resolve_device(args.device) != device:
        raise SgcnnError(
            f"{path!r} runs on {device} only: convert the checkpoint again with --device "
            f"{args.device}"
        )
    _check_program_fits(program, shape, splits, config, path)
    result = _evaluate(program, splits, config, args, device)
    return _print(args, "program", config, result, {"params": None, "flops": None})


def _is_onnx(path: str) -> bool:
    return str(path).lower().endswith(".onnx")


def _load_pt2(path: str) -> tuple[nn.Module, torch.device, list]:
    """``(program, device, input shape)``; the batch entry is None when it is dynamic."""
    from sgcnn.exporting import load

    program = load(path)
    param = next(program.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    shape = program.sgcnn_example_shape
    if shape is not None and program.dynamic_batch:
        shape = [None, *shape[1:]]
    return program, device, shape


class _OnnxProgram(nn.Module):
    """An onnxruntime session as a module: float32 CPU tensors in, the first output out."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self.input = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.float().cpu().numpy()})[0]
        return torch.from_numpy(out)


def _load_onnx(path: str) -> tuple[nn.Module, torch.device, list]:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise SgcnnError(
            "evaluating an ONNX model needs onnxruntime: pip install 'sgcnn[onnx]'"
        ) from err
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise SgcnnError(
            f"onnxruntime cannot load {path!r}: {type(err).__name__}: {first}"
        ) from err
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise SgcnnError(f"{path!r} takes {len(inputs)} inputs; an image classifier takes one")
    shape = [d if isinstance(d, int) else None for d in inputs[0].shape]
    return _OnnxProgram(session), torch.device("cpu"), shape


def _check_program_fits(program: nn.Module, shape, splits, config: Config, path: str) -> None:
    """The program takes the dataset's images in batches of any size and gives one score per
    class; ``shape`` is its input shape (None for a dynamic entry, or None when unknown)."""
    data, size = config.data.name, list(splits.input_size)
    if shape is not None:
        fixed = shape[1:]
        fits = len(fixed) == len(size) and all(
            w in (None, s) for w, s in zip(fixed, size, strict=True)
        )
        if not fits:
            want = "x".join("?" if w is None else str(w) for w in fixed)
            hint = (
                f"--set data.image_size={fixed[-1]}"
                if len(fixed) == 3 and fixed[0] == size[0] and fixed[-1] is not None
                else f"a dataset of {want} images"
            )
            raise SgcnnError(
                f"{path!r} was exported for {want} inputs but dataset {data!r} gives "
                f"{'x'.join(map(str, size))}: {hint}"
            )
        if shape[0] is not None:
            raise SgcnnError(
                f"{path!r} has a fixed batch of {shape[0]}: a split cannot be cut into such "
                "batches without a remainder; export it with a dynamic batch (the default)"
            )
    param = next(program.parameters(), None)
    with torch.inference_mode():
        out = program(torch.zeros(1, *size, device=param.device if param is not None else "cpu"))
    if out.dim() != 2 or out.shape[1] != splits.num_classes:
        got = out.shape[1] if out.dim() == 2 else tuple(out.shape[1:])
        raise SgcnnError(
            f"{path!r} gives {got} class scores but dataset {data!r} has "
            f"{splits.num_classes} classes"
        )


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
        return evaluate(model, loader, Precision(device), Dist())


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
