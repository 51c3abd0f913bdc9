"""Timing for :mod:`sgcnn.metrics.latency`: the clock, the side-by-side latency of several
models (:func:`compare_latency`), the dense deployments a fair comparison takes the best of
(:func:`deploy`), and the machine it runs on (:func:`environment`)."""

from __future__ import annotations

import datetime
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
from torch import nn

from sgcnn.deploy._tuning import synchronize


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_commit(root: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout holding ``root`` (default: the sgcnn source being run),
    with ``+changes`` when tracked files below ``root`` differ from it; None outside a git
    checkout."""
    root = str(root or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
        changes = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changes else "") if head else None


def environment(device: torch.device | str = "cpu") -> dict:
    """Hardware, thread count, library versions, load and date, for provenance."""
    import numpy

    device = torch.device(device)
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    commit = source_commit()
    if commit:
        info["sgcnn_commit"] = commit
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# The ways to deploy a plain model besides eager NCHW PyTorch; the fair dense baseline is the
# fastest of all of them on the same machine and threads. "compile" (torch.compile, Inductor,
# frozen weights) takes a minute or more per network and shape, so it is asked for by name.
DEPLOYMENTS = ("channels_last", "jit", "onnxruntime")
COMPILE = "compile"


class _ChannelsLast(nn.Module):
    """``model`` in channels-last memory, fed a channels-last copy of the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


class _OnnxRuntime:
    """A model exported to ONNX (fixed shape) run by onnxruntime's CPU provider with as many
    intra-op threads as torch uses; with ``profile_prefix``, onnxruntime also profiles every
    node (``session.end_profiling()`` writes the JSON there)."""

    def __init__(
        self, model: nn.Module, x: torch.Tensor, profile_prefix: str | None = None
    ) -> None:
        import io
        import warnings

        import onnxruntime as ort

        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if profile_prefix:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: torch.Tensor):
        return self.session.run(None, {"input": x.numpy()})[0]


class _Compiled:
    """``torch.compile(model)`` (Inductor) with frozen weights (``freezing``: constants folded
    and, on the CPU, convolution weights prepacked for oneDNN), the setting PyTorch recommends
    for CPU inference; compiled for ``x``'s shape in inference mode, as it is timed."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        import torch._inductor.config as inductor

        self._patch = lambda: inductor.patch(freezing=True)
        self.compiled = torch.compile(model, dynamic=False)
        self(x)  # compile now, not in the first timed round

    def __call__(self, x: torch.Tensor):
        with self._patch(), torch.inference_mode():
            return self.compiled(x)


def deploy(model: nn.Module, x: torch.Tensor, how: str):
    """``model`` (plain PyTorch, eval mode) prepared to run on inputs shaped like ``x`` in one
    of the :data:`DEPLOYMENTS`: ``"channels_last"`` (eager, channels-last memory), ``"jit"``
    (``torch.jit.optimize_for_inference`` of the traced, frozen model: BatchNorm folding and
    oneDNN layouts on the CPU), ``"onnxruntime"`` (CPU only) or, asked for by name,
    ``"compile"`` (``torch.compile`` with frozen weights, :class:`_Compiled`). Returns a
    callable; raises ``RuntimeError`` where that way is unavailable (no onnxruntime, a GPU for
    onnxruntime)."""
    import copy
    import warnings

    model = copy.deepcopy(model).eval()
    if how == "channels_last":
        return _ChannelsLast(model)
    if how == "jit":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            scripted = torch.jit.optimize_for_inference(torch.jit.trace(model, x))
            scripted(x)
        return scripted
    if how == "onnxruntime":
        if x.device.type != "cpu":
            raise RuntimeError("onnxruntime is measured on the CPU only")
        try:
            return _OnnxRuntime(model, x)
        except ImportError as err:
            raise RuntimeError("onnxruntime is not installed") from err
    if how == COMPILE:
        return _Compiled(model, x)
    raise ValueError(f"unknown deployment {how!r}; choose from {(*DEPLOYMENTS, COMPILE)}")


def _clock(name: str):
    if name == "wall":
        return time.perf_counter
    if name == "cpu":
        if torch.get_num_threads() != 1:
            raise ValueError("clock='cpu' measures one thread: call torch.set_num_threads(1)")
        return time.thread_time
    raise ValueError("clock must be 'wall' or 'cpu'")


@torch.inference_mode()
def compare_latency(
    models: dict[str, Callable[[torch.Tensor], object]],
    x: torch.Tensor,
    runs: int = 20,
    warmup: int = 3,
    clock: str = "wall",
) -> dict[str, dict[str, float]]:
    """Median latency of each model on ``x`` over ``runs`` interleaved rounds, each round in
    a new (seeded) random order.

    Returns ``{name: {"median_ms", "min_ms", "p10_ms", "p90_ms", "images_per_s", "runs"}}``;
    images/s is the batch size over the median latency. ``clock="cpu"`` measures the calling
    thread's CPU time instead of wall time: with one torch thread that is the compute time
    itself, which other processes on a shared machine cannot inflate by preempting it.
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    if not models:
        raise ValueError("no models to time")
    now = _clock(clock)
    device = x.device
    names = list(models)
    for _ in range(warmup):
        for name in names:
            models[name](x)
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    shuffle = random.Random(0).shuffle
    for _ in range(runs):
        order = list(names)
        shuffle(order)  # a new order every round: no model always follows the same one
        for name in order:
            t0 = now()
            models[name](x)
            synchronize(device)
            times[name].append(now() - t0)
    out = {}
    for name, v in times.items():
        v = sorted(v)
        median = statistics.median(v)
        out[name] = {
            "median_ms": median * 1e3,
            "min_ms": v[0] * 1e3,
            "p10_ms": v[int(0.1 * (len(v) - 1))] * 1e3,
            "p90_ms": v[int(0.9 * (len(v) - 1))] * 1e3,
            "images_per_s": x.shape[0] / median,
            "runs": len(v),
        }
    return out
