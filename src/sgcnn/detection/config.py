"""Typed configuration of a detection run (``sgcnn detect train``), YAML-overridable.

::

    backbone: {name: resnet50, checkpoint: runs/r50-g/conv60-fc60/model.pt}
    data:     {train_images: coco/train2014, train_annotations: ..., min_size: 600}
    train:    {epochs: 12, batch_size: 16, lr: 0.02, milestones: [8, 11]}

Unknown keys are errors listing the valid ones (as for classification configs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sgcnn.engine.config import apply_set_, deep_merge, parse_set
from sgcnn.engine.typed import from_dict, to_dict, unknown_key_error
from sgcnn.errors import SgcnnError


@dataclass
class BackboneConfig:
    """The classification network whose body carries the detector."""

    name: str = "resnet50"  # registered model (ResNet, DenseNet, MobileNet, ... `sgcnn models`)
    checkpoint: str | None = None  # its (self-grouped) classification checkpoint; None: random
    conv: float = 0.0  # self-group the body to this conv sparsity first (0: keep as loaded)
    groups: int = 16  # self-groups per layer when `conv` > 0
    train_bn: bool = False  # train BatchNorm (default: frozen, as torchvision's detectors)


@dataclass
class DetectDataConfig:
    """COCO-format images and annotation files; the input resolution."""

    train_images: str | None = None  # folder of the training images
    train_annotations: str | None = None  # their COCO annotation file
    val_images: str | None = None  # folder of the evaluation images
    val_annotations: str | None = None  # their COCO annotation file
    min_size: int = 600  # pixels of the shorter image side (the paper: 300 or 600)
    max_size: int = 1000  # pixels of the longer side at most
    flip: bool = True  # random horizontal flips in training


@dataclass
class DetectTrainConfig:
    """SGD over the whole detector; lr warm-up then steps at `milestones` (epochs)."""

    epochs: int = 12  # passes over the training images
    batch_size: int = 4  # images per step
    lr: float = 0.02  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [8, 11])  # epochs where lr /= 10
    warmup_iters: int = 500  # steps of linear warm-up from lr / 1000
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 (CUDA only)
    workers: int = 2  # DataLoader worker processes
    seed: int = 0
    threads: int = 0  # torch.set_num_threads; 0: PyTorch's default
    limit_batches: int = 0  # steps per epoch at most (0: the whole epoch)
    latency_runs: int = 20  # timed rounds per model in the latency comparison


@dataclass
class DetectConfig:
    name: str | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    train: DetectTrainConfig = field(default_factory=DetectTrainConfig)
    fpn_channels: int = 256  # channels of every pyramid level
    rois_per_image: int = 512  # proposals sampled per image to train the box head


def resolve_detect_config(recipe: dict | None, sets: list[str]) -> DetectConfig:
    """Defaults < ``recipe`` < ``sets`` (``key.sub=value``), checked."""
    tree = to_dict(DetectConfig())
    for key in recipe or {}:
        if key not in tree:
            raise unknown_key_error(str(key), "", list(tree))
    tree = deep_merge(tree, recipe or {})
    for text in sets:
        key, value = parse_set(text)
        apply_set_(tree, key, value, root=DetectConfig)
    config = from_dict(DetectConfig, tree)
    _validate(config)
    return config


def _validate(c: DetectConfig) -> None:
    t, d = c.train, c.data
    if not 0 <= c.backbone.conv < 1:
        raise SgcnnError(f"backbone.conv must be a sparsity in [0, 1), got {c.backbone.conv}")
    if c.backbone.groups < 1:
        raise SgcnnError(f"backbone.groups must be >= 1, got {c.backbone.groups}")
    if c.backbone.checkpoint is None and not c.backbone.train_bn:
        raise SgcnnError(
            "backbone.checkpoint is not set and backbone.train_bn is false: a random backbone "
            "with frozen BatchNorm (mean 0, variance 1) does not learn; pass "
            "--backbone-checkpoint PATH (a trained classifier), or --set backbone.train_bn=true "
            "to train from random weights"
        )
    for name in ("epochs", "batch_size", "latency_runs"):
        if getattr(t, name) < 1:
            raise SgcnnError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("warmup_iters", "workers", "threads", "limit_batches"):
        if getattr(t, name) < 0:
            raise SgcnnError(f"train.{name} must be >= 0, got {getattr(t, name)}")
    if not t.lr > 0 or t.momentum < 0 or t.weight_decay < 0:
        raise SgcnnError("train.lr must be > 0, train.momentum and train.weight_decay >= 0")
    if t.amp not in ("none", "bf16"):
        raise SgcnnError(f"train.amp must be none or bf16, got {t.amp!r}")
    if not 32 <= d.min_size <= d.max_size:
        raise SgcnnError(
            f"data.min_size must be >= 32 and <= data.max_size, got {d.min_size} / {d.max_size}"
        )
    if c.rois_per_image < 1:
        raise SgcnnError(f"rois_per_image must be >= 1, got {c.rois_per_image}")
    if c.fpn_channels < 1:
        raise SgcnnError(f"fpn_channels must be >= 1, got {c.fpn_channels}")
