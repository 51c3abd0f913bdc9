"""``sgcnn detect train|eval|synth``: Faster R-CNN with a self-grouped backbone.

``train`` builds the detector on the body of a classification model (a self-grouped checkpoint,
or a registered model, optionally self-grouped first), trains it on a COCO-format set, and
writes the detector, COCO mAP (masked and converted backbone), Params / FLOPs and latency.
``eval`` measures a saved detector on another set. ``synth`` writes the synthetic COCO-format
dataset (shapes on textured backgrounds) used by the tests and the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import parse_ratio, path_arg, seed_int
from sgcnn.cli._pipeline import command_line, shortcut_sets
from sgcnn.engine.recipes import find_recipe, recipe_dir
from sgcnn.errors import SgcnnError


def register(subparsers) -> None:
    p = subparsers.add_parser("detect", help=COMMANDS["detect"])
    sub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a detector and report mAP, FLOPs and latency")
    t.add_argument("--recipe", help="detection recipe: coco2014, synthetic, or a YAML file")
    t.add_argument("--backbone", help="registered classification model (backbone.name)")
    t.add_argument("--backbone-checkpoint", help="its (self-grouped) checkpoint")
    t.add_argument(
        "--group-conv",
        type=parse_ratio,
        help="self-group the backbone to this conv sparsity first, e.g. 0.6 or 60%% "
        "(default: as the recipe says; 0: no self-grouping)",
    )
    t.add_argument("--images", help="training image folder (data.train_images)")
    t.add_argument("--annotations", help="training COCO annotations (data.train_annotations)")
    t.add_argument("--val-images", help="evaluation image folder")
    t.add_argument("--val-annotations", help="evaluation COCO annotations")
    t.add_argument("--min-size", type=int, help="shorter image side in pixels (300 or 600)")
    t.add_argument("--epochs", type=int, help="training epochs")
    t.add_argument("--batch-size", type=int, help="images per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting of the recipe, e.g. --set train.latency_runs=5 (repeatable)",
    )
    t.add_argument("--output", type=path_arg, required=True, help="run folder (new)")
    t.add_argument("--quiet", action="store_true", help="no line per epoch")
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="COCO mAP, FLOPs and latency of a saved detector")
    e.add_argument("checkpoint", help="detector.pt of `sgcnn detect train`")
    e.add_argument("--images", required=True, help="image folder")
    e.add_argument("--annotations", required=True, help="COCO annotation file")
    e.add_argument("--device", default="auto")
    e.add_argument("--runs", type=int, default=20, help="timed rounds per model")
    e.add_argument("--json", type=path_arg, help="also write the report as JSON here")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    e.set_defaults(func=_eval)

    s = sub.add_parser("synth", help="write the synthetic COCO-format shapes dataset")
    s.add_argument("--output", type=path_arg, required=True, help="dataset folder (new)")
    s.add_argument("--train-images", type=int, default=200)
    s.add_argument("--val-images", type=int, default=50)
    s.add_argument("--image-size", type=int, default=128)
    s.add_argument("--seed", type=seed_int, default=0)
    s.set_defaults(func=_synth)


def _load_recipe(name: str | None) -> dict:
    import yaml

    if name is None:
        return {}
    folder = recipe_dir() / "detection"
    shipped = folder / f"{name}.yaml"
    if shipped.is_file():
        path = shipped
    elif Path(name).suffix in (".yaml", ".yml") or Path(name).parent != Path("."):
        path = find_recipe(name)  # a file of the user's
    else:
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SgcnnError(
            f"unknown detection recipe {name!r}: shipped ones are {', '.join(names)}; or give "
            "the path of a YAML file"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise SgcnnError(f"cannot read recipe {str(path)!r}: {err}") from err
    if not isinstance(data, dict):
        raise SgcnnError(f"recipe {str(path)!r} must be a mapping of sections")
    return data


def _checkpoint_model(path: str) -> str:
    from sgcnn.cli._pipeline import checkpoint_model
    from sgcnn.engine.checkpoint import load_checkpoint

    try:
        return checkpoint_model(path, load_checkpoint(path))
    except SgcnnError as err:  # the model is named by --backbone here, not --model
        raise SgcnnError(str(err).replace("--model", "--backbone")) from err


def _train(args) -> int:
    from sgcnn.detection.config import resolve_detect_config
    from sgcnn.detection.run import format_report, run_detection

    options = {
        "backbone": "backbone.name",
        "backbone_checkpoint": "backbone.checkpoint",
        "group_conv": "backbone.conv",
        "images": "data.train_images",
        "annotations": "data.train_annotations",
        "val_images": "data.val_images",
        "val_annotations": "data.val_annotations",
        "min_size": "data.min_size",
        "epochs": "train.epochs",
        "batch_size": "train.batch_size",
        "lr": "train.lr",
        "device": "train.device",
    }
    sets = shortcut_sets(args, options)
    if args.backbone_checkpoint and not args.backbone:  # the model the checkpoint names
        sets.insert(0, f"backbone.name={_checkpoint_model(args.backbone_checkpoint)}")
    config = resolve_detect_config(_load_recipe(args.recipe), sets + args.sets)
    report = run_detection(config, args.output, {"command": command_line()}, quiet=args.quiet)
    print(format_report(report))
    print(f"written {args.output}")
    return 0


def _eval(args) -> int:
    from sgcnn.detection.run import evaluate_checkpoint, format_report

    if args.runs < 1:
        raise SgcnnError(f"--runs must be >= 1, got {args.runs}")
    if args.json:
        from sgcnn._io import check_output_path

        check_output_path(args.json, args.overwrite, "--json")
    report = evaluate_checkpoint(
        args.checkpoint, args.images, args.annotations, args.device, args.runs
    )
    print(format_report(report))
    if args.json:
        from sgcnn._io import atomic_write

        text = json.dumps(report, indent=2) + "\n"
        atomic_write(args.json, lambda f: f.write(text.encode()))
    return 0


def _synth(args) -> int:
    from sgcnn.detection.synthetic import make_synthetic_coco

    out = make_synthetic_coco(
        args.output, args.train_images, args.val_images, args.image_size, seed=args.seed
    )
    print(f"written {out}: train/ + train.json, val/ + val.json")
    return 0
