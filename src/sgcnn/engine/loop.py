"""One training step and one evaluation pass: cross-entropy, Top-1 / Top-5, masks enforced.

:class:`Precision` carries what a step needs to know about the device: mixed precision (bf16 or
fp16 autocast on CUDA; fp16 with a gradient scaler) and the channels-last memory format.
After every optimizer step :func:`enforce_masks_` zeroes the pruned weights again. With plain
SGD their gradients are exactly zero and they stay zero anyway; the explicit step keeps the
guarantee for any optimizer or scaler behaviour (a skipped fp16 step, say) at the cost of one
multiply per masked weight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sgcnn.engine.distributed import Dist, all_reduce_sums
from sgcnn.nn._modes import eval_mode
from sgcnn.nn.masked import is_masked

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """Device, autocast dtype (``None``: full precision), memory format, fp16 grad scaler."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None

    @classmethod
    def create(cls, device: torch.device, amp: str, channels_last: bool) -> Precision:
        """Mixed precision only on CUDA (ignored on CPU); channels-last on any device (faster
        on the CPU too: ``results/train_layout_epyc.md``). Without mixed precision a CUDA
        device computes in full fp32 (:func:`full_fp32`), as the CPU does."""
        if device.type != "cuda":
            return cls(device, None, channels_last)
        dtype = AMP_DTYPES.get(amp)
        if dtype is None:
            full_fp32()
        scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        return cls(device, dtype, channels_last, scaler)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def inputs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move a batch to the device (in the memory format)."""
        non_blocking = self.device.type == "cuda"
        x = x.to(self.device, non_blocking=non_blocking)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=non_blocking)


def full_fp32() -> None:
    """Turn TF32 off for this process: PyTorch lets cuDNN convolutions use TF32 (10-bit
    mantissa) by default, so a run asked for without mixed precision would train and be
    evaluated otherwise than ``sgcnn eval`` on a CPU reproduces its checkpoint."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def masked_layers(model: nn.Module) -> list[nn.Module]:
    """The self-grouped layers of ``model``."""
    return [m for m in model.modules() if is_masked(m)]


def enforce_masks_(layers: Iterable[nn.Module]) -> None:
    """``W <- W * M`` for every masked layer."""
    for layer in layers:
        layer.apply_mask_()


def train_step(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler,
    precision: Precision,
    masked: list[nn.Module],
) -> torch.Tensor:
    """One SGD step on ``batch``; returns ``[loss sum, correct, count]`` (a device tensor,
    so the caller decides when to synchronise)."""
    x, y = precision.inputs(*batch)
    with precision.autocast():
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()
    enforce_masks_(masked)
    n = torch.tensor(float(y.numel()), dtype=torch.float64, device=y.device)
    correct = (logits.detach().argmax(1) == y).sum().double()
    return torch.stack([loss.detach().double() * n, correct, n])


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, precision: Precision, d: Dist, progress=None
) -> dict[str, float | None]:
    """Loss, Top-1 and Top-5 (percent) of ``model`` over ``loader``'s whole dataset.

    Under DDP each rank evaluates its shard and the sums are added up, so every rank gets the
    numbers of the full split. ``top5`` is None for 5 classes or fewer, where every
    prediction's top five contain its label (it would always be 100).
    """
    with eval_mode(model):  # each module's own mode back afterwards (frozen BN stays)
        sums = torch.zeros(4, dtype=torch.float64, device=precision.device)
        classes = 0
        for batch in loader:
            x, y = precision.inputs(*batch)
            with precision.autocast():
                logits = model(x)
            logits = logits.float()
            classes = logits.shape[1]
            k = min(5, classes)
            top = logits.topk(k, dim=1).indices
            hits = top == y[:, None]
            sums += torch.stack(
                [
                    F.cross_entropy(logits, y, reduction="sum").double(),
                    hits[:, 0].sum().double(),
                    hits.any(1).sum().double(),
                    torch.tensor(float(y.numel()), dtype=torch.float64, device=sums.device),
                ]
            )
            if progress is not None:
                progress.update(1)
    # Ranks agree on the class count even where a shard is empty: the largest any rank saw
    # (as a sum over ranks of "more than 5 classes seen").
    many = 1.0 if classes > 5 else 0.0
    loss, top1, top5, n, many = all_reduce_sums(d, [*sums.tolist(), many], precision.device)
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": None, "n": 0}
    top5 = 100 * top5 / n if many > 0 else None
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": top5, "n": int(n)}
