"""Build, train, evaluate and save a Faster R-CNN with a (self-grouped) backbone.

Training is SGD over the whole detector: ``lr`` with a linear warm-up over ``warmup_iters``
steps (from ``lr / 1000``), divided by 10 at each of ``milestones`` (epochs). After every step
the masks of self-grouped layers are re-applied (``W <- W * M``), as in classification
fine-tuning; since masked layers compute with ``W * M``, pruned weights get zero gradients and
stay exactly zero anyway. Evaluation is COCO's box mAP (pycocotools): AP@[.5:.95], AP50, AP75.

A detector checkpoint (``torch.load(weights_only=True)``) rebuilds it without the config::

    {"format": "sgcnn.detector", "version": 1,
     "backbone": {"name": "resnet50", "kwargs": {...}, "masked": [...]},
     "categories": [{"id": 1, "name": "person"}, ...],
     "settings": {"min_size": 600, "max_size": 1000, "fpn_channels": 256, "train_bn": False,
                  "rois_per_image": 512, "image_mean": [0.485, 0.456, 0.406],
                  "image_std": [0.229, 0.224, 0.225]},
     "state_dict": {...}}

``image_mean`` / ``image_std`` normalise the images (in ``[0, 1]``) before the body: the mean /
std the backbone checkpoint records it was trained with (its data record), else ImageNet's;
a checkpoint without them (older sgcnn) is loaded with ImageNet's.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from sgcnn.data.file_dataset import IMAGENET_MEAN, IMAGENET_STD
from sgcnn.detection.config import DetectConfig
from sgcnn.detection.dataset import CocoDetection, collate
from sgcnn.detection.model import build_detector
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.loop import enforce_masks_, masked_layers
from sgcnn.engine.transfer import load_source
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import create_model
from sgcnn.nn.masked import is_masked

FORMAT = "sgcnn.detector"
VERSION = 1


def backbone_classifier(config: DetectConfig) -> tuple[nn.Module, str, dict]:
    """The classification network of ``config.backbone``: loaded from its checkpoint (masks
    included; a plain state_dict is built for the class count its classifier holds, as a
    transfer's source) or freshly initialised, then self-grouped when ``backbone.conv > 0``."""
    b = config.backbone
    if b.checkpoint:
        try:
            model, name, kwargs = load_source(b.checkpoint, b.name)
        except SgcnnError as err:  # the model is named by --backbone here, not --model
            text = str(err).replace("--model and --num-classes match", "--backbone matches")
            text = text.replace("--model", "--backbone")
            raise SgcnnError(text) from err
    else:
        model, name, kwargs = create_model(b.name), b.name, {}
    if b.conv > 0:
        from sgcnn.core.grouper import self_group_

        self_group_(model, b.conv, 0.0, groups=b.groups, seed=config.train.seed)
    return model, name, kwargs


def build(config: DetectConfig, categories: list[dict]) -> tuple[nn.Module, dict]:
    """``(detector, checkpoint payload without the state_dict)`` for ``categories``."""
    classifier, name, kwargs = backbone_classifier(config)
    settings = {
        "min_size": config.data.min_size,
        "max_size": config.data.max_size,
        "fpn_channels": config.fpn_channels,
        "train_bn": config.backbone.train_bn,
        "rois_per_image": config.rois_per_image,
        **normalisation(config),
    }
    detector = _detector(classifier, len(categories), settings)
    masked = [n for n, m in classifier.named_modules() if is_masked(m)]
    spec = {"name": name, "kwargs": kwargs, "masked": masked}
    payload = {"format": FORMAT, "version": VERSION, "backbone": spec}
    return detector, {**payload, "categories": categories, "settings": settings}


def normalisation(config: DetectConfig) -> dict[str, list[float]]:
    """``{"image_mean", "image_std"}`` of the detector: those the backbone checkpoint records
    its classifier was trained with, else ImageNet's (torchvision's default)."""
    path = config.backbone.checkpoint
    record = (ckpt.recorded_data(path) if path else None) or {}
    mean, std = record.get("mean"), record.get("std")
    if _numbers(mean) and _numbers(std) and len(mean) == len(std):
        return {"image_mean": [float(m) for m in mean], "image_std": [float(v) for v in std]}
    return {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}


def _numbers(value) -> bool:
    """A non-empty list of (non-boolean) numbers."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _detector(classifier: nn.Module, num_categories: int, settings: dict) -> nn.Module:
    return build_detector(
        classifier,
        num_categories,
        min_size=settings["min_size"],
        max_size=settings["max_size"],
        fpn_channels=settings["fpn_channels"],
        train_bn=settings["train_bn"],
        rois_per_image=settings.get("rois_per_image", 512),
        image_mean=settings.get("image_mean"),
        image_std=settings.get("image_std"),
    )


def save_detector(path, detector: nn.Module, payload: dict) -> None:
    """Write the detector checkpoint atomically."""
    state = {k: v.detach().cpu() for k, v in detector.state_dict().items()}
    ckpt.save_checkpoint(path, {**payload, "state_dict": state})


def load_detector(path) -> tuple[nn.Module, dict]:
    """``(detector, payload)`` of a checkpoint written by :func:`save_detector`."""
    payload = ckpt.load_checkpoint(path)
    if payload.get("format") != FORMAT:
        raise SgcnnError(
            f"{str(path)!r} is not a detector checkpoint (no 'format: {FORMAT}'); train one "
            "with `sgcnn detect train`"
        )
    problem = _damage(payload)
    if problem:
        raise SgcnnError(
            f"{str(path)!r} is a damaged detector checkpoint ({problem}); train it again with "
            "`sgcnn detect train`"
        )
    spec = payload["backbone"]
    classifier = create_model(spec["name"], **spec.get("kwargs", {}))
    ckpt.attach_masks_(classifier, spec.get("masked", []))
    detector = _detector(classifier, len(payload["categories"]), payload["settings"])
    ckpt.load_state_dict_(detector, payload["state_dict"], str(path))
    return detector, payload


_INT_SETTINGS = ("min_size", "max_size", "fpn_channels")


def _damage(payload: dict) -> str | None:
    """What a detector checkpoint lacks to rebuild its detector; ``None`` when nothing."""
    spec, settings = payload.get("backbone"), payload.get("settings")
    categories = payload.get("categories")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)):
        return "no backbone name"
    masked = spec.get("masked", [])
    if not isinstance(spec.get("kwargs", {}), dict) or not isinstance(masked, list):
        return "backbone kwargs / masked layers of the wrong kind"
    if not (
        isinstance(categories, list)
        and categories
        and all(isinstance(c, dict) and _is_int(c.get("id")) for c in categories)
    ):
        return "no list of categories with ids"
    if not isinstance(settings, dict) or not all(_is_int(settings.get(k)) for k in _INT_SETTINGS):
        return f"no settings with integer {' / '.join(_INT_SETTINGS)}"
    if not isinstance(settings.get("train_bn"), bool):
        return "no train_bn setting"
    if any(k in settings and not _numbers(settings[k]) for k in ("image_mean", "image_std")):
        return "image_mean / image_std are not lists of numbers"
    if not isinstance(payload.get("state_dict"), dict):
        return "no state_dict"
    return None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _lr_factor(step: int, steps_per_epoch: int, warmup: int, milestones: list[int]) -> float:
    """Warm-up from 1/1000 over ``warmup`` steps, times 0.1 per milestone epoch passed."""
    epoch = step / steps_per_epoch
    factor = 0.1 ** sum(1 for m in milestones if epoch >= m)
    if step < warmup:
        alpha = step / warmup
        factor *= 0.001 * (1 - alpha) + alpha
    return factor


def train_detector(
    detector: nn.Module,
    dataset: CocoDetection,
    config: DetectConfig,
    device: torch.device,
    log: Callable[[dict], None],
) -> None:
    """Train ``detector`` in place on ``dataset`` (see the module docstring)."""
    t = config.train
    generator = torch.Generator().manual_seed(t.seed)
    loader = DataLoader(
        dataset,
        batch_size=t.batch_size,
        shuffle=True,
        num_workers=t.workers,
        collate_fn=collate,
        generator=generator,
        drop_last=len(dataset) > t.batch_size,
        persistent_workers=t.workers > 0,
    )
    steps = len(loader) if not t.limit_batches else min(len(loader), t.limit_batches)
    params = [p for p in detector.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    warmup = min(t.warmup_iters, steps * t.epochs // 3)
    masked = masked_layers(detector)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if t.amp == "bf16" and device.type == "cuda"
        else contextlib.nullcontext()
    )
    detector.to(device).train()
    step = 0
    for epoch in range(t.epochs):
        begin, total, parts, done = time.monotonic(), 0.0, {}, 0
        for images, targets in loader:
            if done >= steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = t.lr * _lr_factor(step, steps, warmup, t.milestones)
            images = [x.to(device, non_blocking=True) for x in images]
            targets = [{k: _to(v, device) for k, v in tgt.items()} for tgt in targets]
            with autocast:
                losses = detector(images, targets)
            loss = sum(losses.values())
            if not math.isfinite(loss.item()):
                raise SgcnnError(
                    f"detection loss is {loss.item()} at epoch {epoch + 1}, step {done + 1}: "
                    f"training diverged; lower train.lr (now {t.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            enforce_masks_(masked)
            total += loss.item()
            for k, v in losses.items():
                parts[k] = parts.get(k, 0.0) + v.item()
            step, done = step + 1, done + 1
        record = {
            "event": "epoch",
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            "loss": total / max(done, 1),
            **{k: v / max(done, 1) for k, v in parts.items()},
            "seconds": round(time.monotonic() - begin, 2),
        }
        log(record)


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


@torch.no_grad()
def evaluate_coco(
    detector: nn.Module, dataset: CocoDetection, device: torch.device, batch_size: int = 4
) -> dict:
    """COCO box mAP of ``detector`` on ``dataset``: ``{"ap", "ap50", "ap75", "detections",
    "images", "seconds"}`` (AP in percent)."""
    COCO, COCOeval = _pycocotools()
    detector.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    results = []
    begin = time.monotonic()
    for images, targets in loader:
        outputs = detector([x.to(device) for x in images])
        for out, target in zip(outputs, targets, strict=True):
            boxes, scores = out["boxes"].float().tolist(), out["scores"].tolist()
            for (x0, y0, x1, y1), score, label in zip(
                boxes, scores, out["labels"].tolist(), strict=True
            ):
                results.append(
                    {
                        "image_id": target["image_id"],
                        "category_id": dataset.category_ids[int(label) - 1],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(score),
                    }
                )
    seconds = time.monotonic() - begin
    stats = [0.0, 0.0, 0.0]
    if results:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            gt = COCO()
            gt.dataset = dataset.ground_truth
            gt.createIndex()
            evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
            evaluation.params.imgIds = [i["id"] for i in dataset.images]
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = [max(float(s), 0.0) for s in evaluation.stats[:3]]  # -1: no ground truth
    return {
        "ap": round(100 * stats[0], 2),
        "ap50": round(100 * stats[1], 2),
        "ap75": round(100 * stats[2], 2),
        "detections": len(results),
        "images": len(dataset),
        "seconds": round(seconds, 2),
    }


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise SgcnnError(
            "COCO mAP needs pycocotools: pip install 'sgcnn[detect]' (or pycocotools)"
        ) from err
    return COCO, COCOeval
