"""A detection run and the measurements of its report.

:func:`run_detection` trains a detector (:mod:`sgcnn.detection.engine`) and writes, all at
once (staged in a temporary folder, then renamed), ``OUT/detector.pt``, ``config.yaml``,
``metrics.jsonl`` and ``report.md`` / ``report.json``: backbone and detector Params / FLOPs
(mask-aware, at ``min_size`` x ``min_size``), COCO mAP of the trained model and of the model
with its converted backbone, measured latency of both, and whether every mask survived.

The trained detector, its config and metrics are saved in the staging folder (``.OUT.tmp-*``
beside ``OUT``) as soon as training ends: when evaluation, conversion, measurement or the final
rename fails, that folder stays, and the error names it.

The *converted* detector is a copy whose body stages holding self-grouped layers went through
:func:`sgcnn.convert` (fast diverse-group modules, BatchNorm folded in); frozen BatchNorm is
turned back into eval-mode BatchNorm first so that it can be folded (the same arithmetic).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import yaml
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from sgcnn._io import check_output_dir, publish_dir, staging_dir
from sgcnn.detection.config import DetectConfig
from sgcnn.detection.dataset import load_coco
from sgcnn.detection.engine import (
    _pycocotools,
    build,
    evaluate_coco,
    save_detector,
    train_detector,
)
from sgcnn.engine.distributed import resolve_device
from sgcnn.engine.typed import to_dict
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count
from sgcnn.nn.masked import is_masked
from sgcnn.nn.swap import replace_modules_


def example_size(min_size: int) -> int:
    """Side of a square image after the detector's resize and padding to a multiple of 32."""
    return -(-min_size // 32) * 32


def _unfreeze_bn_(module: nn.Module) -> None:
    def plain(frozen: FrozenBatchNorm2d, _name: str) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(frozen.weight.numel(), eps=frozen.eps).eval()
        for key in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, key).data.copy_(getattr(frozen, key))
        return bn.to(frozen.weight.device)

    replace_modules_(module, lambda m, n: isinstance(m, FrozenBatchNorm2d), plain)


@torch.no_grad()
def convert_backbone(detector: nn.Module, size: int, device: torch.device, tune: bool = True):
    """A copy of ``detector`` with every body stage that holds self-grouped layers converted
    by :func:`sgcnn.convert` at a ``size`` x ``size`` image (exactness checked by it)."""
    from sgcnn.deploy.convert import convert

    fast = copy.deepcopy(detector).eval().to(device)
    body = fast.backbone.body
    _unfreeze_bn_(body)
    x = torch.zeros(1, 3, size, size, device=device)
    for name, stage in list(body.stages.items()):
        y = stage(x)
        if any(is_masked(m) for m in stage.modules()):
            body.stages[name] = convert(stage, x, device=device, tune=tune)
        x = y
    return fast


def measure(detector: nn.Module, fast: nn.Module | None, size: int, device, runs: int) -> dict:
    """Params / FLOPs of backbone body and detector; latency of dense-compute and converted."""
    from sgcnn.metrics.latency import compare_latency

    detector.eval()
    shape = (3, size, size)
    body = count(detector.backbone.body, shape)
    whole = count(detector, shape)
    out = {
        "input": f"{size}x{size}",
        "backbone_counts": {"params": body["params"], "flops": body["flops"]},
        "detector_counts": {"params": whole["params"], "flops": whole["flops"]},
    }
    x = torch.rand(1, *shape, device=device)
    models = {"backbone": detector.backbone.body, "detector": detector}
    if fast is not None:
        models |= {"backbone converted": fast.backbone.body, "detector converted": fast}
        reference, converted = detector.backbone(x), fast.backbone(x)
        out["converted_max_abs_diff"] = max(
            (reference[k] - converted[k]).abs().max().item() for k in reference
        )
    with torch.inference_mode():
        times = compare_latency(models, x, runs=runs, warmup=2)
    out["latency_ms"] = {k: round(v["median_ms"], 3) for k, v in times.items()}
    return out


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.sg_mask.detach().cpu().clone() for n, m in model.named_modules() if is_masked(m)}


def masks_kept(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    """Every mask unchanged and every pruned weight exactly zero."""
    layers = dict(model.named_modules())
    for name, mask in before.items():
        layer = layers[name]
        if not torch.equal(layer.sg_mask.cpu(), mask):
            return False
        if (layer.weight.detach() * (1 - layer.weight_mask())).abs().max().item() != 0:
            return False
    return True


def run_detection(
    config: DetectConfig, out_dir: str | os.PathLike, meta: dict, quiet: bool = False
) -> dict:
    """Train, evaluate, convert and measure; write the run folder (see the module docstring).

    One line per epoch goes to stdout unless ``quiet``."""
    d, t = config.data, config.train
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SgcnnError(f"output folder {out} exists and is not empty: choose another --output")
    check_output_dir(out)  # its parent must take the folder: now, not after training
    for key in ("train_images", "train_annotations", "val_images", "val_annotations"):
        if not getattr(d, key):
            raise SgcnnError(f"data.{key} is not set (--{key.replace('_', '-')} PATH)")
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    _pycocotools()  # the mAP at the end needs it: say so before training, not after
    train = load_coco(d.train_images, d.train_annotations, flip=d.flip)
    val = load_coco(
        d.val_images,
        d.val_annotations,
        category_ids=train.category_ids,
        category_names=_category_names(train.categories),
    )
    if not any(len(x["category_ids"]) for x in train.targets):
        raise SgcnnError(f"{d.train_annotations} has no (non-crowd) boxes to train on")
    _require_boxes(val)
    if train.dropped and not quiet:
        print(
            f"note: {train.dropped} boxes of {d.train_annotations} have no area once clipped to "
            "their image: left out of training (as torchvision's references do)",
            file=sys.stderr,
        )
    torch.manual_seed(t.seed)
    detector, payload = build(config, train.categories)
    before = masks_of(detector)
    records: list[dict] = []

    def log(record: dict) -> None:
        records.append(record)
        if quiet:
            return
        print(
            f"  epoch {record['epoch']}/{t.epochs}: loss {record['loss']:.4f}, "
            f"lr {record['lr']:.2e} ({record['seconds']:.1f} s)",
            flush=True,
        )

    train_detector(detector, train, config, device, log)
    staging = _stage_trained(out, config, detector, payload, records)
    try:
        report = _measure_run(config, detector, before, train, val, device)
        report["meta"] = {**meta, "device": str(device), "torch": torch.__version__}
        _publish_run(staging, out, report)
    except SgcnnError as err:
        raise SgcnnError(f"{str(err).rstrip('.')}; {_kept(staging)}") from err
    except BaseException:  # a bug or an interrupt: its traceback, and where the detector is
        print(f"note: {_kept(staging)}", file=sys.stderr)
        raise
    return report


def _measure_run(config, detector, before, train, val, device) -> dict:
    """The report of a trained detector: mAP (masked and converted backbone), masks kept,
    counts and latency."""
    t = config.train
    report = {
        "title": config.name or "detection",
        "backbone": config.backbone.name,
        "self_grouped_layers": len(before),
        "train_boxes_dropped": train.dropped,
        "masks_kept": masks_kept(detector, before),
        "map": evaluate_coco(detector, val, device, t.batch_size),
    }
    size = example_size(config.data.min_size)
    fast = convert_backbone(detector, size, device) if before else None
    if fast is not None:
        report["map_converted"] = evaluate_coco(fast, val, device, t.batch_size)
    report.update(measure(detector, fast, size, device, t.latency_runs))
    return report


def _kept(staging: Path) -> str:
    return (
        f"the trained detector is kept in {staging / 'detector.pt'}, with its config.yaml and "
        "metrics.jsonl: `sgcnn detect eval` measures it"
    )


def _require_boxes(data) -> None:
    """COCO evaluation of a set without (non-crowd) boxes has nothing to score: refuse it
    rather than report an AP of 0."""
    if not any(a["iscrowd"] == 0 for a in data.ground_truth["annotations"]):
        raise SgcnnError(
            f"{data.annotation_file} has no (non-crowd) boxes: there is nothing to evaluate "
            "against; give an annotated validation set"
        )


def _stage_trained(out: Path, config, detector, payload, records) -> Path:
    """A staging folder beside ``out`` holding ``detector.pt``, ``config.yaml`` and
    ``metrics.jsonl`` of the trained detector (removed again if writing them fails)."""
    staging = staging_dir(out.resolve())
    try:
        save_detector(staging / "detector.pt", detector, payload)
        (staging / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        (staging / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _publish_run(staging: Path, out: Path, report: dict) -> None:
    """Add the report to ``staging`` and rename it to ``out`` (which must not hold files)."""
    out = out.resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SgcnnError(f"output folder {out} was created and filled by something else meanwhile")
    (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (staging / "report.md").write_text(format_report(report))
    publish_dir(staging, out, overwrite=False)


def format_report(report: dict) -> str:
    """The report as markdown: one table of structure, accuracy and latency."""
    from sgcnn.reports.render import _human

    lat = report.get("latency_ms", {})
    rows = [("masked (dense compute)", report.get("map"), "")]
    if "map_converted" in report:
        rows.append(("converted backbone", report["map_converted"], " converted"))
    lines = [
        f"# {report['title']}",
        "",
        f"Backbone {report['backbone']} ({report['self_grouped_layers']} self-grouped layers; "
        + (
            f"masks kept through training: {report['masks_kept']}"
            if "masks_kept" in report
            else f"pruned weights all zero: {report['pruned_weights_zero']}"
        )
        + f"), input {report.get('input')}; "
        "FLOPs are multiply-accumulates of unmasked weights, latency the median of "
        "interleaved runs at batch 1.",
        "",
        "| model | backbone Params | backbone FLOPs | detector Params | detector FLOPs | AP | "
        "AP50 | AP75 | backbone ms | detector ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m, suffix in rows:
        lines.append(
            f"| {label} | {_human(report['backbone_counts']['params'])} | "
            f"{_human(report['backbone_counts']['flops'])} | "
            f"{_human(report['detector_counts']['params'])} | "
            f"{_human(report['detector_counts']['flops'])} | "
            f"{m['ap']:.2f} | {m['ap50']:.2f} | {m['ap75']:.2f} | "
            f"{lat.get('backbone' + suffix, '-')} | {lat.get('detector' + suffix, '-')} |"
        )
    lines += ["", "```json", json.dumps(report.get("meta", {}), indent=2), "```", ""]
    return "\n".join(lines)


def _category_names(categories: list[dict]) -> dict[int, str]:
    """``{id: name}`` of a model's categories; a checkpoint that recorded no name for an id
    (hand-made or older) leaves that id out, so its name is not checked."""
    return {c["id"]: c["name"] for c in categories if isinstance(c.get("name"), str)}


def evaluate_checkpoint(
    path: str, images: str, annotations: str, device: str = "auto", runs: int = 20
) -> dict:
    """mAP, counts and latency of a saved detector (and of its converted backbone) on a
    COCO-format set; the set's category ids must be among the detector's, with the names the
    detector recorded for them."""
    from sgcnn.detection.engine import load_detector

    dev = resolve_device(device)
    _pycocotools()
    detector, payload = load_detector(path)
    categories = payload["categories"]
    data = load_coco(
        images,
        annotations,
        category_ids=[c["id"] for c in categories],
        category_names=_category_names(categories),
    )
    _require_boxes(data)
    masked = masks_of(detector)
    report = {
        "title": f"{path} on {annotations}",
        "backbone": payload["backbone"]["name"],
        "self_grouped_layers": len(masked),
        "pruned_weights_zero": masks_kept(detector, masked),  # its masks are the saved ones
        "map": evaluate_coco(detector, data, dev),
    }
    size = example_size(payload["settings"]["min_size"])
    fast = convert_backbone(detector, size, dev) if masked else None
    if fast is not None:
        report["map_converted"] = evaluate_coco(fast, data, dev)
    report.update(measure(detector, fast, size, dev, runs))
    report["meta"] = {"device": str(dev), "torch": torch.__version__}
    return report
