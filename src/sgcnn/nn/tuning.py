"""Choosing a realization per layer by measuring the candidates where the model will run.

The candidates of one layer are timed round-robin (one call of each per round) on inputs of
the layer's real shape, so that a burst of load from elsewhere on the machine hits all of them
alike. A candidate's score is its fastest round: on a shared machine the minimum is the least
disturbed estimate of what the code itself costs. A candidate more than ``cutoff`` times slower
than the best after its first timed call is dropped early, to keep tuning short.

The clock is wall time. ``SGCNN_TUNE_CLOCK=cpu`` uses the process's CPU time instead, which
a busy machine disturbs less (useful for development on a shared box, but it undercounts
code that leaves threads idle); it is ignored on CUDA devices.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch

_clock = "wall"


@contextlib.contextmanager
def clock(name: str):
    """Within the block, tune with ``"wall"`` time or the process's ``"cpu"`` time."""
    global _clock
    if name not in ("wall", "cpu"):
        raise ValueError("clock must be 'wall' or 'cpu'")
    before, _clock = _clock, name
    try:
        yield
    finally:
        _clock = before


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_candidates(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int = 5,
    warmup: int = 1,
    budget_s: float = 0.6,
    cutoff: float = 2.0,
) -> dict[str, dict[str, float]]:
    """``{name: {"min_ms", "median_ms", "runs"}}`` for each callable in ``candidates``.

    Candidates that raise are left out. At most ``rounds`` timed calls each, fewer when the
    total time passes ``budget_s`` (every survivor gets at least one timed call).
    """
    clock = time.perf_counter
    if device.type == "cpu" and os.environ.get("SGCNN_TUNE_CLOCK", _clock) == "cpu":
        clock = time.process_time
    alive: dict[str, Callable[[], object]] = {}
    for name, fn in candidates.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
        except (RuntimeError, ValueError, MemoryError):
            continue
        alive[name] = fn
    times: dict[str, list[float]] = {name: [] for name in alive}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in list(alive.items()):
            t0 = clock()
            fn()
            synchronize(device)
            times[name].append(clock() - t0)
        if r == 0 and len(alive) > 1:
            best = min(min(v) for v in times.values())
            for name in list(alive):
                if min(times[name]) > cutoff * best:
                    del alive[name]
        if time.perf_counter() - start > budget_s:
            break
    return {
        name: {
            "min_ms": min(v) * 1e3,
            "median_ms": statistics.median(v) * 1e3,
            "runs": len(v),
        }
        for name, v in times.items()
        if v
    }


def best(results: dict[str, dict[str, float]]) -> str:
    """The candidate with the lowest ``min_ms``."""
    return min(results, key=lambda name: results[name]["min_ms"])
