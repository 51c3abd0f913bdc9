"""Wall time of self-grouping every eligible layer of ResNet-50 and DenseNet-201.

Paper settings: g = 16, k-means with init="random", n_init=10, max_iter=300; ResNet-50 at
Conv-60/FC-60 (49 layers) and DenseNet-201 at Conv-70/FC-60 (200 layers), random weights.
The time covers everything ``sgcnn.self_group_`` does: tracing the model to find stems and
shortcuts, swapping in masked layers, importance vectors, k-means, centroid pruning. The
paper's reference code takes minutes per step, writing masks element by element.

    python benchmarks/bench_grouping.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sgcnn
from _env import describe
from sgcnn.core import grouper as grouper_module

CASES = [("resnet50", 0.6, 0.6), ("densenet201", 0.7, 0.6)]


def _timed(fn, bucket: dict, key: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[key] = bucket.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def run_case(name: str, conv: float, fc: float) -> dict:
    torch.manual_seed(0)
    model = sgcnn.create_model(name)
    parts: dict[str, float] = {}
    originals = (grouper_module.select_layers, grouper_module.centroid_prune)
    grouper_module.select_layers = _timed(originals[0], parts, "trace+select")
    grouper_module.centroid_prune = _timed(originals[1], parts, "prune (summed over threads)")
    try:
        start = time.perf_counter()
        report = sgcnn.self_group_(model, conv, fc, groups=16, seed=0)
        total = time.perf_counter() - start
    finally:
        grouper_module.select_layers, grouper_module.centroid_prune = originals
    parts["rest: k-means, importance, swap (wall)"] = total - parts["trace+select"]
    return {"model": name, "layers": len(report.layers), "seconds": total, "parts": parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = describe()
    print(json.dumps(env))
    for name, conv, fc in CASES:
        runs = [run_case(name, conv, fc) for _ in range(args.repeats)]
        median = statistics.median(r["seconds"] for r in runs)
        parts = {k: statistics.median(r["parts"][k] for r in runs) for k in runs[0]["parts"]}
        detail = ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
        print(
            f"{name:12s} Conv-{conv * 100:.0f}/FC-{fc * 100:.0f}: {runs[0]['layers']} layers, "
            f"median {median:.2f} s over {args.repeats} runs ({detail}); "
            f"all: {[round(r['seconds'], 2) for r in runs]}"
        )


if __name__ == "__main__":
    main()
