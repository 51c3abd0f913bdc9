"""Health checks of a training run: a non-finite loss or weight stops it at once.

Too high a learning rate makes SGD diverge: the loss grows until it overflows to ``inf`` and
turns ``nan``, and from then on every step, checkpoint and accuracy is garbage (the argmax of
``nan`` logits is a constant class: chance accuracy, reported as if it were a result). The
runner therefore checks

- the loss of every training step (one host-device synchronisation per step on a GPU, which
  distributed runs pay anyway to agree on Ctrl-C),
- every floating-point parameter and buffer, and the validation loss, before each save,

and the first failure raises :class:`TrainingDiverged` *before* anything is saved: the state
and the row checkpoints on disk are the last good ones. The run records a ``failed`` line in
``metrics.jsonl`` and its report shows the failure; ``--resume`` refuses such a run, since it
would replay the same steps from the same random state into the same failure.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sgcnn.errors import SgcnnError

FAILED = "failed"  # the event of the metrics.jsonl line that marks a failed run


class TrainingDiverged(SgcnnError):
    """Training produced a non-finite loss or weight; the run folder keeps its last good state."""


def finite(value: float | None) -> bool:
    """``None`` (nothing measured) counts as finite."""
    return value is None or math.isfinite(value)


@torch.no_grad()
def finite_weights(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite (one sync)."""
    flags = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def lr_key(kind: str) -> str:
    """The config key of the learning rate a phase of ``kind`` trains with."""
    return {"train": "optim.lr", "global": "finetune.lr"}.get(kind, "grouping.local_lr")


def failure_message(what: str, where: str, lr: float, kind: str, kept: str) -> str:
    """One line: what went wrong, where, what to try, and what is left on disk."""
    key = lr_key(kind)
    return (
        f"training diverged: {what} in {where} (learning rate {lr:g}). The learning rate is "
        f"most likely too high: start a new run with a lower one, e.g. --set {key}={lr / 10:g}. "
        f"The last good state ({kept}) is kept in the run folder."
    )
