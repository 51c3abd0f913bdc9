"""Running a model in eval mode for a moment without changing any module's own mode.

``model.eval(); ...; model.train(was_training)`` sets every submodule back to the root's flag,
which unfreezes a BatchNorm the user froze (``bn.eval()`` in a model in train mode, as
detection and fine-tuning do): its running statistics would then move at the next training
step. :func:`eval_mode` restores each module's own ``training`` flag instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; afterwards every module has its own
    ``training`` flag back (not the root's), whether the block returned or raised."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training
