"""``sgcnn transfer``: reuse a trained (self-grouped) classifier on a new dataset.

The checkpoint's classifier is replaced by a fresh one for the new dataset's classes, every
other weight and every mask is kept (:mod:`sgcnn.engine.transfer`), and the model is
fine-tuned with one of the schemes the paper compares:

- ``dense``: a dense checkpoint, fine-tuned (the transfer baseline); a checkpoint whose only
  self-grouped layer is its classifier counts as dense (the transfer replaces the classifier);
- ``L``: a self-grouped checkpoint fine-tuned with its source grouping (masks kept, pruned
  weights stay exactly zero, no re-clustering); it needs self-grouped layers outside the
  classifier;
- ``G`` / ``LG``: after the transfer fine-tune, self-group the model again on the new data
  (to ``--conv``) and fine-tune it with the G or LG scheme.

Defaults are the paper's CUB-200 recipe (``transfer_cub200``: 21 epochs, lr 0.001 / 10 at
epochs 7 and 14, weight decay 5e-4, momentum 0.9).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sgcnn.cli import COMMANDS
from sgcnn.cli._pipeline import (
    SPARSITY_SHORTCUTS,
    add_run_args,
    add_sparsity_args,
    checkpoint_model,
    configure,
    execute_and_print,
    load_source,
    output_dir,
    quote,
    resumed_run,
    section,
    shortcut_sets,
)
from sgcnn.engine.checkpoint import FORMAT, plain_state_dict
from sgcnn.engine.recipes import load_recipe
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import model_entry

SCHEMES = ("dense", "L", "G", "LG")
DEFAULT_RECIPE = "transfer_cub200"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "transfer",
        help=COMMANDS["transfer"],
        description="Replace the checkpoint's classifier with a fresh one for the new dataset "
        "and fine-tune: dense (a dense checkpoint), L (a self-grouped checkpoint, masks kept), "
        "G / LG (self-group again on the new data). Defaults: the paper's CUB-200 recipe "
        f"({DEFAULT_RECIPE}).",
    )
    p.add_argument("--checkpoint", required=True, help="trained model (sgcnn checkpoint)")
    p.add_argument("--scheme", choices=SCHEMES, required=True, help="transfer scheme")
    p.add_argument("--model", help="model name (needed for a plain state_dict)")
    p.add_argument("--recipe", help=f"the new task's settings (default {DEFAULT_RECIPE})")
    p.add_argument("--classes", nargs="+", help="only these class folders (data.classes)")
    add_sparsity_args(p, "G / LG: ")
    p.add_argument("--epochs", type=int, help="transfer fine-tuning epochs (train.epochs)")
    p.add_argument("--global-epochs", type=int, help="G / LG: epochs after re-grouping")
    p.add_argument("--local-epochs", type=int, help="LG: epochs after each pruning step")
    p.add_argument("--lr", type=float, help="learning rate of every phase (optim / finetune)")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    _, recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    started = resumed_run(args)
    payload, grouped = None, []
    if started is not None:  # its state holds the model: the checkpoint is not read again
        model = args.model or section(started, "model").get("name")
        first = section(started, "report").get("baseline_name", "dense transfer")
    else:
        payload = load_source(args)
        model = checkpoint_model(args.checkpoint, payload, args.model)
        grouped = _kept_grouping(args.checkpoint, payload, model, args.scheme)
        if args.scheme == "dense" and grouped:
            raise SgcnnError(
                f"{args.checkpoint!r} has {len(grouped)} self-grouped layers: --scheme L "
                "fine-tunes it with its masks (dense needs a dense checkpoint)"
            )
        first = "L" if grouped else "dense transfer"
    sets = [
        f"model.name={model}",
        f"model.checkpoint={quote(str(args.checkpoint))}",
        "model.reset_classifier=true",
        f"report.baseline_name={quote(first)}",
    ]
    if args.scheme in ("dense", "L"):
        sets += ["grouping.scheme=baseline", "grouping.conv=[]"]
    else:
        sets.append(f"grouping.scheme={args.scheme}")
    sets += shortcut_sets(
        args,
        {
            "classes": "data.classes",
            **SPARSITY_SHORTCUTS,
            "epochs": "train.epochs",
            "global_epochs": "grouping.global_epochs",
            "local_epochs": "grouping.local_epochs",
            "lr": "optim.lr",
        },
    )
    if args.lr is not None:
        sets.append(f"finetune.lr={args.lr}")
    if args.scheme in ("dense", "L") and (args.conv or args.fc):
        raise SgcnnError(f"--conv / --fc self-group again: use --scheme G or LG, not {args.scheme}")
    if args.scheme in ("dense", "L") and args.global_epochs is not None:
        raise SgcnnError(
            f"--global-epochs is for G / LG (the epochs after re-grouping); --scheme "
            f"{args.scheme} trains --epochs only"
        )
    if args.scheme != "LG" and args.local_epochs is not None:
        raise SgcnnError(
            f"--local-epochs is for LG (the epochs after each pruning step); --scheme "
            f"{args.scheme} has no such steps"
        )
    config = configure(recipe, sets + args.sets, resume=args.resume)
    if not args.recipe and model != "resnet50":
        config.report.paper = []  # the default recipe's figures are ResNet-50's on CUB-200
    default = f"{model}-{config.data.name}-transfer-{args.scheme}"
    config.name = config.name or default
    if config.report.title is None:
        title = section(started, "report").get("title") if started is not None else None
        config.report.title = title or f"Transfer ({args.scheme}) of {args.checkpoint}"
    run_dir = output_dir(args, config, default)
    if payload is not None:
        _note_resizing(model, payload, config.data.image_size)

    def masks(rows: list[dict]) -> None:
        _report_masks_if_there(args.checkpoint, model, run_dir, rows, bool(grouped))

    return execute_and_print(config, run_dir, args, after=masks if grouped or started else None)


def _note_resizing(model: str, payload: dict, image_size: int | None) -> None:
    """Say when the new task's images are resized away from the size the checkpoint was
    trained at (recorded by its run), else the size its model is built for.

    The default recipe resizes to 224 px (ImageNet sources); a CIFAR source (32 px) would
    silently run on 49 times the pixels.
    """
    saved = payload.get("config") if payload.get("format") == FORMAT else None
    trained = saved.get("data", {}).get("image_size") if isinstance(saved, dict) else None
    if isinstance(trained, int):
        native, what = (trained, trained), "was trained at"
    else:
        native, what = model_entry(model).input_size[1:], "was built for"
    if image_size is None or (image_size, image_size) == tuple(native):
        return
    print(
        f"note: images are resized to {image_size}x{image_size} px (data.image_size); the "
        f"checkpoint's {model} {what} {native[0]}x{native[1]}: --set "
        f"data.image_size={native[0]} keeps that size (compute grows with the pixel count)",
        file=sys.stderr,
    )


def _kept_grouping(path: str, payload: dict, model: str, scheme: str) -> list[str]:
    """The self-grouped layers the transfer keeps (all but the classifier, which it replaces);
    ``--scheme L`` needs at least one."""
    from sgcnn.engine.transfer import grouping_kept, load_source

    grouped = _grouped_layers(path, payload)
    classifier = None
    if grouped:
        classifier, grouped = grouping_kept(path, model)
    else:  # it must load: its error now, before a run folder or a note on the image size
        load_source(path, model)
    if scheme == "L" and not grouped:
        where = f" outside its classifier ({classifier}, replaced by the transfer)"
        raise SgcnnError(
            f"{path!r} has no self-grouped layers{where if classifier else ''}: --scheme L "
            "would be a dense transfer; use --scheme dense, or G / LG to self-group it on the "
            "new data"
        )
    return grouped


def _grouped_layers(path: str, payload: dict) -> list[str]:
    """Names of the self-grouped layers of a checkpoint (sgcnn or plain state_dict)."""
    if payload.get("format") == FORMAT:
        return list(payload.get("masked", []))
    state = plain_state_dict(path, payload)  # else: which file it is, said as such
    return sorted({k.rsplit(".", 1)[0] for k in state if str(k).endswith(".sg_mask")})


def _report_masks_if_there(
    checkpoint: str, model: str, run_dir: Path, rows: list[dict], grouped: bool
) -> None:
    """After the run: :func:`_report_masks` against the source checkpoint as it is now, when
    it keeps self-grouped layers (a resumed run never read it: ``grouped`` is what a new run
    found). A note instead when it is gone or no longer loads (a resumed run holds its model
    in its own state), or when it was replaced since the run started (:func:`_replaced`)."""
    from sgcnn.engine.transfer import load_source, model_classifier

    unchecked = "the results are not checked against its masks"
    if not Path(checkpoint).is_file():
        print(
            f"note: {checkpoint!r} is not there any more: {unchecked} (the run holds its own "
            "copy of the model)",
            file=sys.stderr,
        )
        return
    try:
        source, _, kwargs = load_source(checkpoint, model)
        classifier = model_classifier(source, model, kwargs)
    except SgcnnError as err:  # replaced since by another file: the run did not need it
        print(f"note: the results are not checked against {checkpoint!r}: {err}", file=sys.stderr)
        return
    changed = f"note: {checkpoint!r} changed since the run started: {unchecked}"
    if not _kept_masks(source, classifier):
        if grouped:  # it was self-grouped when the run started
            print(changed, file=sys.stderr)
        return
    try:
        _report_masks(source, classifier, model, run_dir, rows)
    except SgcnnError:
        if not _replaced(checkpoint, source, classifier, model, run_dir, rows):
            raise  # the same source: a result really lost its masks
        print(changed, file=sys.stderr)


def _replaced(
    checkpoint: str, source, classifier: str, model: str, run_dir: Path, rows: list[dict]
) -> bool:
    """Whether ``checkpoint`` (loaded as ``source``) is no longer the file the run started
    from: written after the run folder was made (its config.yaml, written once), with other
    masks than the run's first row, the transfer fine-tune, which keeps its source's masks."""
    from sgcnn.engine.checkpoint import load_model
    from sgcnn.engine.state import CONFIG_FILE

    try:
        if Path(checkpoint).stat().st_mtime <= (run_dir / CONFIG_FILE).stat().st_mtime:
            return False
        first, _, _ = load_model(str(run_dir / rows[0]["checkpoint"]), model)
    except (OSError, SgcnnError, IndexError, KeyError):
        return False
    kept, started = _kept_masks(source, classifier), _kept_masks(first, classifier)
    return kept.keys() != started.keys() or any(
        not torch.equal(mask, started[name]) for name, mask in kept.items()
    )


def _kept_masks(model, classifier: str) -> dict:
    """``{layer: mask}`` of the self-grouped layers of ``model`` outside its ``classifier``."""
    from sgcnn.nn.masked import is_masked

    return {
        n: m.sg_mask.cpu()
        for n, m in model.named_modules()
        if is_masked(m) and n != classifier and not n.startswith(classifier + ".")
    }


def _report_masks(source, classifier: str, model: str, run_dir: Path, rows: list[dict]) -> None:
    """Check that every result kept the ``source``'s masks (pruned weights exactly zero)."""
    from sgcnn.engine.checkpoint import load_model
    from sgcnn.engine.transfer import check_masks_kept

    for row in rows:
        result, _, _ = load_model(str(run_dir / row["checkpoint"]), model)
        check_masks_kept(result, source, classifier)
    print("masks kept: every result keeps the source's masks; pruned weights are exactly zero")
