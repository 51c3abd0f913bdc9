"""Device resolution shared by training, evaluation and conversion: one set of checks, so a
device that is not here is one clear error wherever it is asked for."""

from __future__ import annotations

import torch

from sgcnn.errors import SgcnnError


def checked_device(spec: str | torch.device, how: str = "--device") -> torch.device:
    """``spec`` as a ``torch.device`` that exists here: ``cpu``, ``cuda`` or ``cuda:N`` with
    CUDA available and ``N`` below the number of visible GPUs; otherwise :class:`SgcnnError`
    (``how`` says where the device was asked for)."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SgcnnError(f"{spec!r} is not a device ({how}); use 'cpu' or 'cuda'") from None
    if dev.type not in ("cpu", "cuda"):
        raise SgcnnError(f"device {str(dev)!r} is not supported ({how}); use 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SgcnnError(
                f"device {str(dev)!r} asked for ({how}) but CUDA is not available here "
                "(torch.cuda.is_available() is False); use cpu, or run on a machine with a "
                "CUDA GPU"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SgcnnError(
                f"device {str(dev)!r} asked for ({how}) but this machine shows {count} GPU(s) "
                f"(cuda:0 to cuda:{count - 1}); use one of those"
            )
    return dev
