"""Wall-clock latency of models, measured side by side, with the machine it was measured on.

:func:`compare_latency` runs several models on the same input in rounds — one forward pass of
each model per round, in a new random order every round — so that a slow drift of the machine
(another process, thermal state) reaches all of them alike, and no model always runs right
after the same other one (in a rotating order, the model that always followed onnxruntime
took longer than its own per-layer times add up to); it reports the median over the rounds after
warm-up, and the spread. :func:`deploy` gives the standard ways to run a plain model that a
fair comparison takes the best of (channels-last, ``torch.jit.optimize_for_inference``,
onnxruntime), :func:`layer_times` the per-layer breakdown of one model, :func:`environment`
the hardware, threads and library versions that belong next to any published number.

The measuring itself (:func:`compare_latency`, :func:`deploy`, :func:`environment`) lives in
:mod:`sgcnn.metrics._timing` and is imported from here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch import nn

from sgcnn.deploy import _tuning as tuning
from sgcnn.deploy._tuning import synchronize
from sgcnn.metrics._timing import (
    COMPILE,
    DEPLOYMENTS,
    _ChannelsLast,
    _clock,
    compare_latency,
    deploy,
    environment,
)

__all__ = [
    "COMPILE",
    "DEPLOYMENTS",
    "benchmark",
    "compare_latency",
    "deploy",
    "environment",
    "layer_times",
]


@torch.inference_mode()
def layer_times(
    model: nn.Module,
    x: torch.Tensor,
    layers: Iterable[str] | None = None,
    runs: int = 5,
    warmup: int = 1,
    clock: str = "wall",
) -> dict[str, float]:
    """Median wall time (ms) of each named submodule's forward inside ``model(x)``.

    ``layers`` defaults to every leaf that computes (convolutions, linear layers, fast
    modules); the entry ``"(total)"`` is the whole forward pass and ``"(other)"`` the rest.
    """
    now = _clock(clock)
    modules = dict(model.named_modules())
    if layers is None:
        layers = [
            n
            for n, m in modules.items()
            if n and (isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "realization"))
        ]
    layers = list(layers)
    device = x.device
    samples: dict[str, list[float]] = {n: [] for n in layers}
    current: dict[str, float] = {}
    handles = []
    for name in layers:
        m = modules[name]

        def pre(mod, args, name=name):
            synchronize(device)
            current[name] = now()

        def post(mod, args, out, name=name):
            synchronize(device)
            current[name] = now() - current[name]

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    totals = []
    try:
        for i in range(warmup + runs):
            t0 = now()
            model(x)
            synchronize(device)
            if i >= warmup:
                totals.append(now() - t0)
                for name in layers:
                    samples[name].append(current.get(name, 0.0))
    finally:
        for h in handles:
            h.remove()
    out = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    out["(total)"] = statistics.median(totals) * 1e3
    out["(other)"] = out["(total)"] - sum(out[n] for n in layers)
    return out


def _macs_executed(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates ``FlopCounterMode`` sees in ``model(x)`` (what really runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def benchmark(
    masked: nn.Module,
    input_size: tuple[int, int, int],
    batch_sizes: Iterable[int] = (1, 16),
    device: torch.device | str = "cpu",
    runs: int = 20,
    warmup: int = 3,
    tune: bool = True,
    extra: dict[str, nn.Module | Callable[[torch.Tensor], nn.Module]] | None = None,
    breakdown: bool = False,
    progress: Callable[[str], None] | None = None,
    clock: str = "wall",
    deployments: Iterable[str] = DEPLOYMENTS,
) -> dict:
    """Latency of a self-grouped model against its dense version, side by side.

    For each batch size these models run interleaved on the same input: ``dense`` (the same
    network with masks removed: what the user had, eager NCHW), ``dense_<way>`` for each of
    ``deployments`` (:func:`deploy`: channels-last, ``torch.jit.optimize_for_inference``,
    onnxruntime; a way that is unavailable is listed under ``skipped``), ``dense_fused``
    (dense, compiled with the same BatchNorm/ReLU/residual fusion as the converted model: what
    grouping itself buys is measured against it), ``masked`` (the self-grouped model as
    trained) and ``converted`` (:func:`sgcnn.convert`, tuned at that batch size), plus any
    ``extra`` models (e.g. a channel-pruned network; a callable instead of a module is called
    with the batch's input and returns the model to time, for models compiled per batch size).
    ``best_dense`` names the fastest of ``dense`` and ``dense_<way>``: the fair baseline.

    Per model: median / p10 / p90 / min latency over ``runs`` rounds after ``warmup``,
    images/s, MACs per image (``sgcnn.count`` for plain models, ``FlopCounterMode`` for
    compiled ones: what really runs, padding included), speedup over ``dense`` and over the
    best dense deployment; for
    ``converted`` the fraction of the MAC reduction the speedup realises:
    ``(1 - t_conv / t_dense) / (1 - macs_grouped / macs_dense)``, and per batch size
    ``convert_s``, the seconds :func:`sgcnn.convert` took (tuning, or reading its cache, and
    the equivalence check). ``clock="cpu"`` (one thread) measures CPU time, for tuning and
    timing alike (see :func:`compare_latency`).
    """

    import copy

    from sgcnn.deploy._convert_checks import resolve_device
    from sgcnn.deploy.convert import convert, fuse_dense
    from sgcnn.metrics.counting import count
    from sgcnn.nn.masked import is_masked, to_dense
    from sgcnn.nn.swap import replace_modules_

    say = progress or (lambda msg: None)
    dev = resolve_device(device, masked)
    masked = copy.deepcopy(masked).eval().to(dev)
    dense = copy.deepcopy(masked)
    replace_modules_(dense, lambda m, n: is_masked(m), lambda m, n: to_dense(m))
    macs = {
        "dense": count(dense, input_size)["flops"],
        "masked_counted": count(masked, input_size)["flops"],
    }
    extra = dict(extra or {})
    _clock(clock)  # fail early on a bad clock / thread combination
    out = {
        "environment": environment(dev),
        "clock": clock,
        "input_size": list(input_size),
        "batches": [],
    }
    for bs in batch_sizes:
        x = torch.randn(bs, *input_size, device=dev)
        say(f"batch {bs}: converting (tune={tune})")
        with tuning.clock("cpu" if clock == "cpu" else "wall"):
            began = time.perf_counter()
            converted = convert(masked, x, device=dev, tune=tune)
            convert_s = time.perf_counter() - began  # tuning (or its cache) and check included
            say(f"batch {bs}: compiling the dense baseline")
            fused = fuse_dense(dense, x, device=dev, tune=tune)
            makers = {
                f"dense_{how}": (lambda x, how=how: deploy(dense, x, how)) for how in deployments
            }
            extras, skipped = {}, {}
            for name, item in {**makers, **extra}.items():
                try:
                    made = item if isinstance(item, nn.Module) else item(x)
                except Exception as err:  # an unavailable way is reported, not fatal
                    skipped[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    say(f"batch {bs}: {name} skipped ({skipped[name]})")
                    continue
                extras[name] = made.eval().to(dev) if isinstance(made, nn.Module) else made
        models = {
            "dense": dense,
            **{k: v for k, v in extras.items() if k in makers},
            "dense_fused": fused,
            "masked": masked,
            "converted": converted,
            **{k: v for k, v in extras.items() if k not in makers},
        }
        say(f"batch {bs}: timing {', '.join(models)} ({runs} interleaved rounds)")
        lat = compare_latency(models, x, runs=runs, warmup=warmup, clock=clock)
        executed = _macs_executed(converted, x) // bs
        padding = sum(r["padding_macs"] for r in converted.sgcnn_conversion["layers"]) // bs
        per_model_macs = {
            "dense": macs["dense"],
            "dense_fused": _macs_executed(fused, x) // bs,
            "masked": macs["dense"],  # the masked model still runs every dense MAC
            "converted": executed,
            **{k: _macs_of(m, x, input_size) for k, m in extras.items()},
            **{k: macs["dense"] for k in extras if k in makers},
        }
        t_dense = lat["dense"]["median_ms"]
        best_dense = min(
            ["dense", *(k for k in makers if k in lat)], key=lambda k: lat[k]["median_ms"]
        )
        rows = {}
        for name, stats in lat.items():
            rows[name] = {
                **stats,
                "macs_per_image": per_model_macs[name],
                "speedup_vs_dense": t_dense / stats["median_ms"],
                "speedup_vs_best_dense": lat[best_dense]["median_ms"] / stats["median_ms"],
                "speedup_vs_dense_fused": lat["dense_fused"]["median_ms"] / stats["median_ms"],
            }
        mac_cut = 1 - macs["masked_counted"] / macs["dense"]
        time_cut = 1 - lat["converted"]["median_ms"] / t_dense
        entry = {
            "batch": bs,
            "models": rows,
            "best_dense": best_dense,
            "skipped": skipped,
            "grouped_macs_per_image": macs["masked_counted"],
            "converted_padding_macs_per_image": padding,
            "macs_ratio": macs["dense"] / macs["masked_counted"],
            "realised_fraction": time_cut / mac_cut if mac_cut > 0 else None,
            "realizations": _realization_counts(converted),
            "convert_s": round(convert_s, 2),
        }
        if breakdown:
            say(f"batch {bs}: per-layer breakdown")
            conv_t = layer_times(converted, x, runs=max(3, runs // 4), clock=clock)
            fused_t = layer_times(fused, x, runs=max(3, runs // 4), clock=clock)
            records = {r["name"]: r for r in converted.sgcnn_conversion["layers"]}
            entry["layers"] = [
                {
                    "name": name,
                    "realization": records[name]["realization"] if name in records else None,
                    "converted_ms": conv_t.get(name),
                    "dense_fused_ms": fused_t.get(name),
                    "useful_macs": records[name]["useful_macs"] if name in records else None,
                }
                for name in dict.fromkeys([*records, *(n for n in fused_t if n[0] != "(")])
            ]
            entry["layers_other_ms"] = {
                "converted": conv_t["(other)"],
                "dense_fused": fused_t["(other)"],
            }
        out["batches"].append(entry)
    out["macs_per_image"] = macs
    return out


def _macs_of(model: nn.Module, x: torch.Tensor, input_size) -> int | None:
    """MACs per image: ``FlopCounterMode`` for compiled models, ``sgcnn.count`` otherwise."""
    from sgcnn.metrics.counting import count

    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return None  # onnxruntime sessions, scripted modules: opaque to both counters
    if isinstance(model, _ChannelsLast):
        model = model.model
    try:
        if any(hasattr(m, "realization") for m in model.modules()):
            return _macs_executed(model, x) // x.shape[0]
        return count(model, input_size)["flops"]
    except Exception:
        return None


def _realization_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in getattr(model, "sgcnn_conversion", {}).get("layers", []):
        counts[record["realization"]] = counts.get(record["realization"], 0) + 1
    return counts
