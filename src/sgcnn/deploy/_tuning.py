"""Choosing a realization per layer by measuring the candidates where the model will run.

The candidates of one layer are timed round-robin (one call of each per round) on inputs of
the layer's real shape, so that a burst of load from elsewhere on the machine hits all of them
alike. A candidate's score is its fastest round: on a shared machine the minimum is the least
disturbed estimate of what the code itself costs. A candidate more than ``cutoff`` times slower
than the best after its first timed call (``2 * cutoff`` times after its warm-up call) is
dropped early, to keep tuning short.

Measurements are cached (:func:`lookup`, :func:`store`) in sgcnn's cache folder
(``$SGCNN_CACHE``, else ``$XDG_CACHE_HOME/sgcnn``, else ``~/.cache/sgcnn``) by layer and
machine, so converting the same network again measures nothing; ``SGCNN_TUNING_CACHE=0``
turns the cache off.

The clock is wall time. ``SGCNN_TUNE_CLOCK=cpu`` uses the process's CPU time instead, which
a busy machine disturbs less (useful for development on a shared box, but it undercounts
code that leaves threads idle); it is ignored on CUDA devices.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from sgcnn._io import atomic_write, cache_dir
from sgcnn.errors import SgcnnError

try:
    import resource  # page-fault counts (POSIX)
except ImportError:  # Windows
    resource = None

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
    rounds: int = 10,
    warmup: int | None = None,
    budget_s: float = 0.2,
    cutoff: float = 1.5,
    min_rounds: int = 3,
    close: float = 1.2,
) -> dict[str, dict[str, float]]:
    """``{name: {"min_ms", "median_ms", "runs", "faults"}}`` for each callable in
    ``candidates`` (``runs`` 0: cut after its warm-up call, whose time is given; ``faults``:
    the fewest page faults the process took in one timed call, where the platform counts them).

    Candidates that raise are left out. Up to ``rounds`` timed calls each, fewer (but at least
    ``min_rounds``) when the total time passes ``budget_s``: small layers get many rounds for
    little time, and no candidate is judged on a single call, which one burst of load
    elsewhere on the machine can spoil. Clear losers stop early: after the warm-up those over
    ``2 * cutoff`` times the fastest, after the first round those over ``cutoff`` times, after
    the second those over ``close`` times the best so far.

    ``warmup`` (default :func:`warmup_calls`) untimed calls come first; the rough cut reads
    the last of them, so one-time work of a first call (cuDNN's algorithm search under
    ``torch.backends.cudnn.benchmark``, lazy initialisation) never decides a cut.
    """
    if warmup is None:
        warmup = warmup_calls(device)
    clock = time.perf_counter
    if device.type == "cpu" and os.environ.get("SGCNN_TUNE_CLOCK", _clock) == "cpu":
        clock = time.process_time
    alive: dict[str, Callable[[], object]] = {}
    first: dict[str, float] = {}  # the last warm-up call's time: a first, rough cut
    for name, fn in candidates.items():
        try:
            for _ in range(warmup):
                t0 = clock()
                fn()
                synchronize(device)
                first[name] = clock() - t0
        except (RuntimeError, ValueError, MemoryError):
            continue
        alive[name] = fn
    cut: dict[str, float] = {}
    if warmup and len(alive) > 2:
        fastest = min(first[name] for name in alive)
        for name in list(alive):
            if first[name] > 2 * cutoff * fastest:
                cut[name] = first.pop(name)
                del alive[name]
    times: dict[str, list[float]] = {name: [] for name in alive}
    faults: dict[str, list[int]] = {name: [] for name in alive}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in list(alive.items()):
            f0 = _page_faults()
            t0 = clock()
            fn()
            synchronize(device)
            times[name].append(clock() - t0)
            faults[name].append(_page_faults() - f0)
        if r <= 1 and len(alive) > 1:
            best = min(min(v) for v in times.values())
            for name in list(alive):
                if min(times[name]) > (cutoff if r == 0 else close) * best:
                    del alive[name]
        if time.perf_counter() - start > budget_s and r + 1 >= min_rounds:
            break
    results = {
        name: {
            "min_ms": min(v) * 1e3,
            "median_ms": statistics.median(v) * 1e3,
            "runs": len(v),
            "faults": min(faults[name]),
        }
        for name, v in times.items()
        if v
    }
    # cut after the warm-up: that one call is all that was measured (runs = 0)
    results.update(
        {
            name: {"min_ms": t * 1e3, "median_ms": t * 1e3, "runs": 0, "faults": 0}
            for name, t in cut.items()
        }
    )
    return results


def warmup_calls(device: torch.device) -> int:
    """Untimed calls per candidate before the first cut: 2 on CUDA, 1 on the CPU.

    On CUDA a layer's first call can take 100-5,000 times its steady time (measured on an H200:
    cuDNN searching algorithms for a new shape with ``cudnn.benchmark``, once per shape, 16
    times for a per-group loop), so it is judged on its second call. On the CPU the first
    call's extra cost (page faults of a new output) is small next to that, and is what the
    arena removes in the converted model."""
    return 2 if device.type == "cuda" else 1


def _page_faults() -> int:
    """Minor page faults this process has taken so far (0 where the platform does not say)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def charge_allocation(results: dict, allocating, out_bytes: int) -> None:
    """Add ``alloc_ms`` to the ``results`` of the ``allocating`` candidates (those that
    allocate their ``out_bytes`` output instead of writing it into the arena): the first-touch
    time (:func:`first_touch_ms`) of the part of the output their timed calls did not fault in."""
    page = resource.getpagesize() if resource else 4096
    for label in allocating:
        if label in results:
            unseen = max(0, out_bytes - results[label].get("faults", 0) * page)
            results[label]["alloc_ms"] = first_touch_ms(unseen)


def best(results: dict[str, dict[str, float]]) -> str:
    """The candidate with the lowest ``min_ms`` plus ``alloc_ms`` (see :func:`first_touch_ms`)."""
    return min(results, key=lambda name: results[name]["min_ms"] + results[name].get("alloc_ms", 0))


_TOUCH_MIB = 32
_touch_ms_per_mib: float | None = None


def first_touch_ms(nbytes: int) -> float:
    """Milliseconds to fault in ``nbytes`` of fresh memory (the cost per MiB is measured once
    per process on a new anonymous mapping, written with torch's threads).

    A realization that allocates its output (instead of writing it into the arena the
    converted model plans) pays this on every call in the model, where the allocator hands out
    freshly mapped pages for large tensors; an isolated timing sees it only sometimes (it
    depends on the allocator's state: ResNet-50's stem at batch 16 timed 25 ms in one process
    and 60 ms in another, with 25,000 page faults per call). For such a candidate the tuner
    adds the first-touch time of the part of the output its timed calls did not fault in, so
    the choice holds in the model.
    """
    global _touch_ms_per_mib
    if _touch_ms_per_mib is None:
        import mmap

        size = _TOUCH_MIB << 20
        with mmap.mmap(-1, size) as mapping:
            fresh = torch.frombuffer(mapping, dtype=torch.float32)
            t0 = time.perf_counter()
            fresh.fill_(1.0)  # faults every page in
            t1 = time.perf_counter()
            fresh.fill_(2.0)  # the same writes, pages present
            t2 = time.perf_counter()
            del fresh
        _touch_ms_per_mib = max(0.0, (t1 - t0) - (t2 - t1)) * 1e3 / _TOUCH_MIB
    return _touch_ms_per_mib * nbytes / (1 << 20)


# ------------------------------------------------------------------------ the cache
#
# Measurements are kept as JSON in $SGCNN_CACHE/tuning/<context>.json, one file per context
# (realization set, torch version, threads, CPU model and features, native kernel build,
# device), holding one entry per layer key (geometry, group sizes, input shape, dtype) and
# set of candidates. An entry is reused only when it names exactly the candidates offered now
# and every time is a finite non-negative number; anything else is re-measured.

REALIZATION_SET = 8  # bump when realizations change in a way that invalidates timings
_CACHE_FORMAT = "sgcnn.tuning"


def _cache_file(device: torch.device) -> Path:
    from sgcnn.deploy import _native

    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else _native.cpu_id()
    kernels = _native.build_key() if device.type == "cpu" and _native.available() else "none"
    context = json.dumps(
        [REALIZATION_SET, torch.__version__, torch.get_num_threads(), machine, kernels,
         device.type, platform.node() if device.type == "cpu" else ""]
    )  # fmt: skip
    name = hashlib.sha256(context.encode()).hexdigest()[:24]
    return cache_dir() / "tuning" / f"{name}.json"


def layer_key(spec, input_shape, residual_shape, dtype, channels_last: bool = False) -> str:
    """What a layer's timings depend on: kind, weight shape, stride / padding / dilation,
    convolution groups, fused epilogue, input shape (batch included), dtype, the sizes of
    its self-groups (filters, kept input channels) and the input's memory layout."""
    sizes = sorted((len(f), len(c)) for f, c in spec.groups)
    parts = [
        spec.kind, list(spec.weight.shape), list(spec.stride), list(spec.padding),
        list(spec.dilation), spec.conv_groups, spec.relu, residual_shape is not None,
        list(input_shape), str(dtype), sizes,
    ]  # fmt: skip
    if channels_last:  # NCHW keys stay as they were, so existing caches remain valid
        parts.append("channels_last")
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _read(path: Path) -> dict:
    """The file's entries; ``{}`` (with a warning) when it is unreadable or malformed."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
            raise ValueError("not an sgcnn tuning cache")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise ValueError("no entries")
        return entries
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:  # (nested too deep)
        warnings.warn(
            f"ignoring the tuning cache {path} ({err}); its layers are measured again "
            "and the file rewritten",
            stacklevel=3,
        )
        return {}


def _candidates(entry) -> list[str] | None:
    """An entry's sorted candidate labels; ``None`` when they are not a list of strings."""
    labels = entry.get("candidates", []) if isinstance(entry, dict) else None
    if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels):
        return None
    return sorted(labels)


def _valid(entry, labels) -> bool:
    if not isinstance(entry, dict) or not isinstance(entry.get("times_ms"), dict):
        return False
    times = entry["times_ms"]
    if _candidates(entry) != sorted(labels) or not times:
        return False
    for name, t in times.items():
        if name not in labels or not isinstance(t, dict):
            return False
        values = [t.get("min_ms"), t.get("median_ms"), t.get("runs")]
        values += [t[k] for k in ("faults", "alloc_ms") if k in t]  # optional fields
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values):
            return False
    return True


def _entry_key(key: str, labels) -> str:
    """One entry per layer *and* candidate set: converting the same layer with other
    candidates (e.g. ``fuse_dense``, which offers only the dense forms) keeps both results."""
    return key + ":" + hashlib.sha256(json.dumps(sorted(labels)).encode()).hexdigest()[:8]


def lookup(key: str, labels, device: torch.device) -> dict[str, dict[str, float]] | None:
    """The cached timings of layer ``key`` if they are for exactly these candidate
    ``labels``; ``None`` when absent, stale or malformed (a malformed entry also warns)."""
    if os.environ.get("SGCNN_TUNING_CACHE", "1") == "0":
        return None
    path = _cache_file(device)
    entry = _read(path).get(_entry_key(key, labels))
    if entry is None:
        return None
    if not _valid(entry, list(labels)):
        known = _candidates(entry)
        if known is not None and known != sorted(labels):
            return None  # stale: the candidates changed; measured again silently
        warnings.warn(f"ignoring a malformed entry of the tuning cache {path}", stacklevel=2)
        return None
    return {name: dict(t) for name, t in entry["times_ms"].items()}


def store(key: str, labels, results: dict, device: torch.device) -> None:
    """Record layer ``key``'s timings (atomic rewrite of the context's file)."""
    if os.environ.get("SGCNN_TUNING_CACHE", "1") == "0" or not results:
        return
    path = _cache_file(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entries = _read(path)
        entries[_entry_key(key, labels)] = {"candidates": sorted(labels), "times_ms": results}
        data = {"format": _CACHE_FORMAT, "version": 1, "entries": entries}
        text = json.dumps(data).encode("utf-8")
        atomic_write(path, lambda f: f.write(text))
    except (OSError, SgcnnError) as err:
        warnings.warn(f"could not write the tuning cache {path}: {err}", stacklevel=2)
