"""Training step and evaluation time of a model in NCHW against channels-last memory, side by
side in one process (alternating rounds), the way the run engine trains (SGD with momentum,
cross-entropy, fp32).

    python benchmarks/bench_train_layout.py --model resnet20 --batch 256 --threads 2
    python benchmarks/bench_train_layout.py --model resnet20 --sparsity 0.5   # self-grouped

Prints the median seconds per training step and per evaluation batch (4x the training batch)
of each layout, and the ratio, with the machine and versions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import sgcnn
from _env import describe
from sgcnn.models.registry import model_entry


def _model(name: str, sparsity: float | None, channels_last: bool):
    torch.manual_seed(0)
    model = sgcnn.create_model(name)
    if sparsity is not None:
        sgcnn.self_group_(model, sparsity, groups=16, seed=0)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--sparsity", type=float, help="self-group first (masked training)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = model_entry(args.model).input_size
    x = torch.randn(args.batch, *size)
    y = torch.randint(0, 10, (args.batch,))
    layouts = {"nchw": False, "channels_last": True}
    models = {k: _model(args.model, args.sparsity, cl) for k, cl in layouts.items()}
    inputs = {
        k: x.contiguous(memory_format=torch.channels_last) if cl else x for k, cl in layouts.items()
    }
    evals = {k: torch.cat([v] * 4) for k, v in inputs.items()}

    def step(k: str) -> None:
        model, opt = models[k]
        opt.zero_grad()
        nn.functional.cross_entropy(model(inputs[k]), y).backward()
        opt.step()

    def evaluate(k: str) -> None:
        with torch.no_grad():
            models[k][0].eval()(evals[k])
        models[k][0].train()

    times: dict[tuple[str, str], list[float]] = {}
    for what, fn in (("train step", step), ("eval batch", evaluate)):
        for k in layouts:
            fn(k)  # warm-up
        for _ in range(args.rounds):
            for k in layouts:
                t0 = time.perf_counter()
                fn(k)
                times.setdefault((what, k), []).append(time.perf_counter() - t0)
    print(", ".join(f"{k} {v}" for k, v in describe().items()))
    grouped = f", self-grouped conv {args.sparsity}" if args.sparsity is not None else ""
    print(
        f"{args.model}{grouped}, batch {args.batch}, {args.threads} threads, {args.rounds} rounds"
    )
    for what in ("train step", "eval batch"):
        med = {k: statistics.median(times[(what, k)]) for k in layouts}
        print(
            f"{what:10s}: nchw {med['nchw']:.3f} s, channels_last {med['channels_last']:.3f} s "
            f"({med['nchw'] / med['channels_last']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
