"""The resumable state of a run: ``state.pt`` and ``metrics.jsonl`` in the run folder.

``state.pt`` (written atomically with :func:`~sgcnn.engine.checkpoint.save_checkpoint`, read
with ``weights_only=True``) holds everything a resumed run needs to continue exactly::

    {"format": "sgcnn.state", "version": 1,
     "config": {...},                      # the resolved config (checked on resume)
     "stage": 4, "epoch": 2, "batch": 0,   # plan position: stage index, epochs done in its
                                           # phase, batches done in the current epoch
     "sums": [...],                        # running train loss / accuracy of that epoch
     "best": {"val_top1": 97.1, "epoch": 2} | None,   # best validation of the phase
     "model": {...},                       # model_payload(): name, kwargs, masked, state_dict
     "optimizer": {...}, "scheduler": {...}, "scaler": {...} | None,
     "rng": [per-rank RNG states],         # torch (CPU, CUDA), numpy, python
     "metrics_offset": 1234,               # bytes of metrics.jsonl this state accounts for
     "rows": [...], "elapsed": 12.3, "done": False}

``metrics.jsonl`` is appended line by line (flushed and fsynced); a line written after the last
``state.pt`` describes work a resumed run will redo, so :meth:`MetricsLog.open` truncates the
file back to ``metrics_offset``: lines are never duplicated, and a torn last line disappears.
A file shorter than ``metrics_offset`` (cut short outside sgcnn) is an error, not padded.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgcnn._io import read_text
from sgcnn.engine.checkpoint import load_checkpoint, save_checkpoint
from sgcnn.errors import SgcnnError

FORMAT = "sgcnn.state"
VERSION = 1
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


def rng_state() -> dict[str, Any]:
    """This process's random generators, as tensors and plain values (``weights_only`` safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        # As many GPUs as both runs see (a resume may see fewer: CUDA_VISIBLE_DEVICES).
        for index, saved in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(saved, index)


def save_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state.pt`` atomically."""
    save_checkpoint(run_dir / STATE_FILE, {"format": FORMAT, "version": VERSION, **state})


def load_state(run_dir: Path) -> dict[str, Any]:
    """Read ``state.pt``; an error that says what to do when it is missing or foreign."""
    path = run_dir / STATE_FILE
    if not path.is_file():
        raise SgcnnError(
            f"{run_dir} holds no {STATE_FILE}: nothing to resume (the run never finished its "
            "first checkpoint). Start it again without --resume, after removing the folder."
        )
    state = load_checkpoint(path)
    if state.get("format") != FORMAT:
        raise SgcnnError(f"{path} is not an sgcnn run state (format {state.get('format')!r})")
    if state.get("version") != VERSION:
        raise SgcnnError(
            f"{path} has state version {state.get('version')}, this sgcnn reads {VERSION}"
        )
    return state


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (before a rename publishes it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_metrics_length(path: Path, offset: int) -> None:
    """``path`` must hold at least the ``offset`` bytes a saved state accounts for: truncating
    a shorter file to ``offset`` would pad it with NUL bytes, which no reader can parse."""
    size = path.stat().st_size if path.is_file() else 0
    if size < offset:
        raise SgcnnError(
            f"{path} holds {size} bytes but the run's state accounts for {offset}: the metrics "
            "file was cut short (restored from an older copy, or edited), so the run cannot "
            "continue from it; restore the run folder's files together, or start a new run in "
            "another folder"
        )


class MetricsLog:
    """Append-only JSON-lines log, durable line by line (rank 0 only)."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        if path.exists() or offset:
            check_metrics_length(path, offset)
            with open(path, "r+b") as f:
                f.truncate(offset)
        self._file = open(path, "ab")  # noqa: SIM115  (kept open for the run's lifetime)

    @property
    def offset(self) -> int:
        """Bytes written so far (what a state saved now accounts for)."""
        return self._file.tell()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=False) + "\n"
        self._file.write(line.encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def read_metrics(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line, from a crash, is skipped); with
    ``limit``, of its first ``limit`` bytes only (what a saved state accounts for)."""
    if not path.is_file():
        raise SgcnnError(f"{path} does not exist: is this a run folder?")
    records = []
    text = read_text(path, "metrics file")
    if limit is not None:
        text = text.encode()[:limit].decode("utf-8", errors="replace")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise SgcnnError(f"{path} line {i + 1} is not JSON: {err}") from err
        if not isinstance(records[-1], dict):
            raise SgcnnError(f"{path} line {i + 1} is not a JSON object; the file is damaged")
    return records
