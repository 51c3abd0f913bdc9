"""The CUDA path: a self-grouped ResNet-50 (Conv-60 / FC-60, g = 16) against cuDNN dense.

    python benchmarks/bench_cuda.py --out results/bench_cuda_h200
    python benchmarks/bench_cuda.py --device cpu --quick          # smoke test of every path

ResNet-50 (torchvision architecture, random weights, seed 0; speed depends on shapes and masks
only) is self-grouped at 60% conv / 60% fc sparsity with 16 groups per layer. For batch 1 and
64 at 224 px every variant below is timed on the same input: warm-up, then ``--runs`` timed
forward passes (CUDA events around each), median and p10-p90 reported.

- ``dense_fp32``: the dense network, eager, NCHW, fp32 (cuDNN; TF32 as PyTorch's defaults
  allow for convolutions);
- ``dense_cl_fp16`` / ``dense_cl_bf16``: dense, channels-last, half precision, with
  ``torch.backends.cudnn.benchmark = True``: the baseline a GPU user would deploy;
- ``dense_compile_fp16`` (``--compile``): ``torch.compile`` of the previous one, skipped when
  compiling takes longer than ``--compile-limit`` seconds;
- ``masked_fp32`` / ``masked_fp16``: the self-grouped model as trained (weight times mask);
- ``converted_fp32``: :func:`sgcnn.convert` on the GPU (tuned per layer at that batch size);
- ``converted_fp16`` / ``converted_bf16``: the conversion run in half precision (model and
  example cast first, sgcnn's own fp32-scale check off), and, if that fails, the fp32
  conversion cast with ``.half()`` / ``.to(bfloat16)``; either way its output is compared
  with the masked model in the same precision (``max_abs_diff`` and the relative difference
  ``max|a - b| / max|b|`` in the JSON);
- ``converted_cl_fp16`` / ``converted_cl_bf16``: the half-precision conversion from a
  channels-last example (every layer tuned in that layout), run with its weights and input in
  channels-last memory, end to end like ``dense_cl_*`` (on an H200 the NCHW conversion took
  1.4x the channels-last dense time at batch 64).

Every variant runs in its own ``try``: one failure is recorded (``error``) and the others
still run. Writes ``<out>.json`` (everything, with GPU, driver-side versions, date and
command) and ``<out>.md`` (the table) when ``--out`` is given; prints the table always.
onnxruntime is not used here (the CPU build cannot run on the GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch import nn

import sgcnn

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


def environment(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_model(fn, x: torch.Tensor, runs: int, warmup: int) -> dict:
    """Median / p10 / p90 milliseconds of ``fn(x)`` over ``runs`` timed calls after
    ``warmup`` untimed ones (CUDA events on a GPU, ``perf_counter`` on the CPU)."""
    for _ in range(warmup):
        fn(x)
    synchronize(x.device)
    times = []
    for _ in range(runs):
        if x.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    median = statistics.median(times)
    return {
        "median_ms": median,
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "runs": runs,
        "images_per_s": x.shape[0] / median * 1e3,
    }


class ChannelsLast(nn.Module):
    """``model`` in channels-last memory, fed a channels-last copy of the input."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last))


@torch.inference_mode()
def difference(got: torch.Tensor, ref: torch.Tensor) -> dict:
    err = float((got.float() - ref.float()).abs().max())
    scale = float(ref.float().abs().max())
    return {"max_abs_diff": err, "rel_diff": err / scale if scale else err}


def build(name: str, size: int, conv: float, fc: float) -> tuple[nn.Module, nn.Module, float]:
    """(dense, self-grouped) copies of ``name`` with the same random weights (seed 0)."""
    torch.manual_seed(0)
    dense = sgcnn.create_model(name).eval()
    grouped = sgcnn.create_model(name).eval()
    grouped.load_state_dict(dense.state_dict())
    t0 = time.perf_counter()
    sgcnn.self_group_(grouped, conv, fc, groups=16, seed=0, input_size=(3, size, size))
    return dense, grouped.eval(), time.perf_counter() - t0


def converted_half(grouped, x32, dtype, device, tune, fp32_converted, channels_last=False):
    """The conversion in ``dtype``: converted directly in that precision (from a channels-last
    example, so tuned in that layout, when ``channels_last``), else the fp32 conversion cast.
    Returns (module, how it was made)."""
    import copy

    layout = torch.channels_last if channels_last else torch.contiguous_format
    try:
        model = copy.deepcopy(grouped).to(device=device, dtype=dtype)
        example = x32.to(dtype).contiguous(memory_format=layout)
        conv = sgcnn.convert(model, example, device=device, tune=tune, check=False)
        return conv, f"converted in {dtype}" + (", channels-last example" if channels_last else "")
    except Exception as err:  # fall back to casting, and say why
        if fp32_converted is None:
            raise
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        return copy.deepcopy(fp32_converted).to(dtype), f"fp32 conversion cast ({reason})"


def run_batch(args, dense, grouped, device, batch: int, rows: dict, save) -> dict:
    """Fills ``rows`` (one entry per variant) and calls ``save()`` after each variant."""
    size = args.size
    torch.manual_seed(1)
    x32 = torch.randn(batch, 3, size, size, device=device)
    reference: dict[str, torch.Tensor] = {}

    def section(label: str, make, dtype=torch.float32, ref_key: str | None = None):
        """Build (timed: ``build_s``), check against ``reference[ref_key]``, time."""
        print(f"[batch {batch}] {label} ...", file=sys.stderr, flush=True)
        row: dict = {}
        try:
            t0 = time.perf_counter()
            fn, note = make()
            row["build_s"] = round(time.perf_counter() - t0, 2)
            if note:
                row["note"] = note
            x = x32.to(dtype)
            with torch.inference_mode():
                out = fn(x)
            if ref_key is not None and ref_key in reference:
                row.update(difference(out, reference[ref_key]))
            row.update(time_model(fn, x, args.runs, args.warmup))
            rows[label] = row
            add_speedups(rows)
            save()
            return out
        except Exception as err:  # record it, keep going with the others
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
            if args.verbose:
                traceback.print_exc()
            rows[label] = row
            save()
            return None

    import copy

    dense32 = copy.deepcopy(dense).to(device)
    out = section("dense_fp32", lambda: (dense32, None))
    if out is not None:
        reference["dense_fp32"] = out
    for tag, dtype in HALF.items():
        model = ChannelsLast(copy.deepcopy(dense).to(device=device, dtype=dtype))
        section(f"dense_cl_{tag}", lambda m=model: (m, None), dtype, "dense_fp32")
    if args.compile:

        def compiled():
            model = ChannelsLast(copy.deepcopy(dense).to(device=device, dtype=torch.float16))
            fn = torch.compile(model, mode="max-autotune-no-cudagraphs")
            t0 = time.perf_counter()
            with torch.inference_mode():
                fn(x32.half())
            if time.perf_counter() - t0 > args.compile_limit:
                raise RuntimeError(f"compiling took over {args.compile_limit} s")
            return fn, None

        section("dense_compile_fp16", compiled, torch.float16, "dense_fp32")

    masked32 = copy.deepcopy(grouped).to(device)
    out = section("masked_fp32", lambda: (masked32, None))
    if out is not None:
        reference["masked_fp32"] = out
    for tag, dtype in HALF.items():
        masked = copy.deepcopy(grouped).to(device=device, dtype=dtype)
        out = section(f"masked_{tag}", lambda m=masked: (m, None), dtype, "masked_fp32")
        if out is not None:
            reference[f"masked_{tag}"] = out

    conv32 = {}

    def make32():
        conv32["m"] = sgcnn.convert(grouped, x32, device=device, tune=not args.no_tune)
        counts = {}
        for layer in conv32["m"].sgcnn_conversion["layers"]:
            kind = layer["realization"].split("/")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return conv32["m"], f"realizations {counts}"

    section("converted_fp32", make32, torch.float32, "masked_fp32")
    for tag, dtype in HALF.items():
        made: dict = {}

        def make_half(d=dtype, made=made):
            made["m"], note = converted_half(
                grouped, x32, d, device, not args.no_tune, conv32.get("m")
            )
            return made["m"], note

        section(f"converted_{tag}", make_half, dtype, f"masked_{tag}")

        def make_cl(d=dtype):  # converted from a channels-last example, run channels-last
            m, note = converted_half(
                grouped, x32, d, device, not args.no_tune, conv32.get("m"), channels_last=True
            )
            return ChannelsLast(m), note

        section(f"converted_cl_{tag}", make_cl, dtype, f"masked_{tag}")
    return {"batch": batch, "models": rows}


def add_speedups(rows: dict) -> None:
    """Each timed row's speed-up over dense fp32 and over the fastest dense row so far."""
    base = rows.get("dense_fp32", {}).get("median_ms")
    best_dense = min(
        (r["median_ms"] for k, r in rows.items() if k.startswith("dense_") and "median_ms" in r),
        default=None,
    )
    for row in rows.values():
        if "median_ms" in row:
            row["speedup_vs_dense_fp32"] = base / row["median_ms"] if base else float("nan")
            row["speedup_vs_best_dense"] = (
                best_dense / row["median_ms"] if best_dense else float("nan")
            )


def markdown(result: dict) -> str:
    env = result["environment"]
    gpu = env.get("gpu", env["device"])
    lines = [
        f"# {result['model']} Conv-{round(result['conv'] * 100)}/FC-{round(result['fc'] * 100)} "
        f"g=16 on {gpu}",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; torch {env['torch']}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}; cudnn.benchmark = True",
        f"- input {result['size']} px, random weights (seed 0); median of {result['runs']} "
        f"timed runs after {result['warmup']} warm-up; self-grouping took "
        f"{result['grouping_s']:.1f} s on the CPU",
        "- best dense = fastest of the dense_* rows at that batch; diff = max |out - reference| "
        "/ max |reference| against the dense (dense rows) or masked (other rows) fp32 / same-"
        "precision model",
        "",
        "| batch | variant | median ms | p10-p90 ms | img/s | vs dense fp32 | vs best dense |"
        " rel. diff | note |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for entry in result["batches"]:
        for label, row in entry["models"].items():
            if "error" in row:
                lines.append(
                    f"| {entry['batch']} | {label} | - | - | - | - | - | - | "
                    f"failed: {row['error'][:120]} |"
                )
                continue
            diff = f"{row['rel_diff']:.1e}" if "rel_diff" in row else ""
            lines.append(
                f"| {entry['batch']} | {label} | {row['median_ms']:.3f} | "
                f"{row['p10_ms']:.3f}-{row['p90_ms']:.3f} | {row['images_per_s']:.0f} | "
                f"{row['speedup_vs_dense_fp32']:.2f}x | {row['speedup_vs_best_dense']:.2f}x | "
                f"{diff} | {row.get('note', '')[:100]} (built in {row['build_s']} s) |"
            )
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict, md: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=1)), (".md", md)):
        path = out.with_suffix(suffix)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="input height and width")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--conv", type=float, default=0.6, help="conv sparsity")
    p.add_argument("--fc", type=float, default=0.6, help="fc sparsity")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--no-tune", action="store_true", help="convert without timing candidates")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (dense fp16)")
    p.add_argument("--compile-limit", type=float, default=60.0, help="seconds, at most")
    p.add_argument("--quick", action="store_true", help="tiny model and sizes (smoke test)")
    p.add_argument("--out", type=Path, help="write <out>.json and <out>.md")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = p.parse_args()
    if args.quick:
        args.model, args.size, args.batches = "test_resnet", 32, [1, 4]
        args.runs, args.warmup = 5, 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device here (torch.cuda.is_available() is False); "
            "use --device cpu for a smoke test",
            file=sys.stderr,
        )
        return 2
    torch.backends.cudnn.benchmark = True
    warnings.filterwarnings("ignore", category=UserWarning)
    t_start = time.perf_counter()
    dense, grouped, grouping_s = build(args.model, args.size, args.conv, args.fc)
    result = {
        "model": args.model,
        "size": args.size,
        "conv": args.conv,
        "fc": args.fc,
        "groups": 16,
        "runs": args.runs,
        "warmup": args.warmup,
        "grouping_s": grouping_s,
        "environment": environment(device),
        "batches": [],
    }
    result["complete"] = False

    def save() -> None:  # after every variant: a run cut short keeps what it measured
        result["total_s"] = time.perf_counter() - t_start
        if args.out:
            write(args.out, result, markdown(result))

    for batch in args.batches:
        entry = {"batch": batch, "models": {}}
        result["batches"].append(entry)
        entry.update(run_batch(args, dense, grouped, device, batch, entry["models"], save))
    result["complete"] = True
    save()
    print(markdown(result))
    if args.out:
        print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
