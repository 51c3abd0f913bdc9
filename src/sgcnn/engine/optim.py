"""SGD and its learning-rate schedules, stepped once per training step.

Every phase (baseline training, each local fine-tune, the global fine-tune) gets a fresh
optimizer: momentum buffers from before a pruning step would otherwise push pruned weights away
from zero. The schedule factor is a pure function of the (fractional) epoch of the phase, so
the scheduler's state is just its step count, which the training state saves.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from sgcnn.engine.config import OptimConfig


def build_optimizer(model: nn.Module, o: OptimConfig, lr: float | None = None) -> torch.optim.SGD:
    """SGD (momentum, weight decay on every parameter, optional Nesterov) at ``lr or o.lr``."""
    return torch.optim.SGD(
        model.parameters(),
        lr=o.lr if lr is None else lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov and o.momentum > 0,
    )


def lr_factor(o: OptimConfig, epoch: float, epochs: int) -> float:
    """The multiplier of the peak rate at fractional ``epoch`` of a phase of ``epochs``.

    Warm-up: ``epoch / warmup_epochs`` (at least 1 %) while ``epoch < warmup_epochs``. Then
    ``constant``: 1; ``step``: ``gamma ** (epoch // step_size)``; ``multistep``:
    ``gamma ** #{m in milestones: m <= epoch}``; ``cosine``:
    ``min_lr / lr + (1 - min_lr / lr) * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of the
    phase after warm-up.
    """
    if o.warmup_epochs > 0 and epoch < o.warmup_epochs:
        return max(epoch / o.warmup_epochs, 0.01)
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "step":
        return o.gamma ** int(epoch // o.step_size)
    if o.schedule == "multistep":
        return o.gamma ** sum(1 for m in o.milestones if m <= epoch)
    span = max(epochs - o.warmup_epochs, 1e-9)
    t = min(max((epoch - o.warmup_epochs) / span, 0.0), 1.0)
    floor = o.min_lr / o.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(
    optimizer: torch.optim.Optimizer, o: OptimConfig, epochs: int, steps_per_epoch: int
) -> LambdaLR:
    """A per-step scheduler following :func:`lr_factor`."""
    steps = max(steps_per_epoch, 1)
    return LambdaLR(optimizer, lambda step: lr_factor(o, step / steps, epochs))


def constant(o: OptimConfig) -> OptimConfig:
    """``o`` with a constant schedule and no warm-up (local fine-tuning)."""
    return OptimConfig(
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
        schedule="constant",
    )
