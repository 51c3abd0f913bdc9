"""The paper's structural figures (Params / FLOPs) next to ours, as a markdown table.

    python benchmarks/paper_structure.py [--out results/paper_structure.md]

Each row builds the model with ``torch.manual_seed(0)``, self-groups it with g = 16 and k-means
seed 0 (one thread), and counts it with ``sgcnn.count`` (the counting convention of the
README). Params / FLOPs depend only on the method and the ratios, so no training is needed;
``tests/test_paper_structure.py`` checks the same rows against the paper within its
tolerances. The paper's figures are those of its tables (docs/method.md section 2).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import sgcnn


@dataclass(frozen=True)
class PaperRow:
    label: str
    model: str
    conv: float | None  # None: the dense baseline
    fc: float | None
    input_size: int
    params: float  # the paper's figures
    flops: float
    kwargs: dict = field(default_factory=dict)


def _lenet(ratio, params, flops):
    name = "baseline" if ratio is None else f"Conv-{ratio:.0%}/FC-{ratio:.0%}".replace("%", "")
    return PaperRow(f"LeNet-5 {name}", "lenet5", ratio, ratio, 28, params, flops)


def _densenet121(classes, ratio, params, flops):
    name = "baseline" if ratio is None else f"Conv-{ratio:.0%}/FC-{ratio:.0%}".replace("%", "")
    label = f"DenseNet-121-CIFAR-{classes} {name}"
    kwargs = {"num_classes": classes}
    return PaperRow(label, "densenet121_cifar", ratio, ratio, 32, params, flops, kwargs)


def _imagenet(label, model, conv, fc, params, flops):
    return PaperRow(label, model, conv, fc, 224, params, flops)


ROWS = [
    _lenet(None, 431e3, 2294e3), _lenet(0.95, 22e3, 388e3), _lenet(0.96, 18e3, 367e3),
    _lenet(0.97, 14e3, 348e3), _lenet(0.98, 9e3, 328e3), _lenet(0.99, 5e3, 307e3),
    _densenet121(10, None, 6.89e6, 888.36e6), _densenet121(100, None, 6.99e6, 888.45e6),
    _densenet121(10, 0.75, 1.71e6, 221.90e6), _densenet121(10, 0.80, 1.37e6, 177.72e6),
    _densenet121(10, 0.85, 1.03e6, 134.10e6), _densenet121(10, 0.90, 0.68e6, 89.77e6),
    _densenet121(10, 0.95, 0.34e6, 45.76e6), _densenet121(100, 0.70, 2.10e6, 266.60e6),
    _densenet121(100, 0.75, 1.75e6, 222.14e6), _densenet121(100, 0.80, 1.40e6, 176.46e6),
    _densenet121(100, 0.85, 1.06e6, 133.46e6), _densenet121(100, 0.90, 0.71e6, 89.86e6),
    _densenet121(100, 0.95, 0.36e6, 45.67e6),
    _imagenet("ResNet-50 baseline", "resnet50", None, None, 25.55e6, 4.09e9),
    _imagenet("ResNet-50 G Conv-60/FC-60", "resnet50", 0.6, 0.6, 11.88e6, 1.91e9),
    _imagenet("ResNet-50 G Conv-70/FC-60", "resnet50", 0.7, 0.6, 9.83e6, 1.55e9),
    _imagenet("ResNet-50 G Conv-80/FC-60", "resnet50", 0.8, 0.6, 7.76e6, 1.20e9),
    _imagenet("DenseNet-201 baseline", "densenet201", None, None, 19.82e6, 4.29e9),
    _imagenet("DenseNet-201 Conv-70/FC-60", "densenet201", 0.7, 0.6, 6.00e6, 1.34e9),
    _imagenet("DenseNet-201 Conv-80/FC-60", "densenet201", 0.8, 0.6, 4.32e6, 0.99e9),
]  # fmt: skip


def measure(row: PaperRow) -> dict:
    """``sgcnn.count`` of ``row``'s model, self-grouped as the paper's row (seed 0, g = 16)."""
    torch.manual_seed(0)
    model = sgcnn.create_model(row.model, **row.kwargs)
    if row.conv is not None:
        sgcnn.self_group_(model, row.conv, row.fc, groups=16, seed=0)
    return sgcnn.count(model, row.input_size)


def _human(n: float, row: PaperRow, paper: float) -> str:
    """``n`` in the paper's unit: K for LeNet-5, else M, or G from 0.95G (``paper``'s size)."""
    if row.model == "lenet5":
        return f"{n / 1e3:.1f}K"
    return f"{n / 1e9:.2f}G" if paper >= 0.95e9 else f"{n / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--only", help="rows whose label contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = [
        "| model | paper Params / FLOPs | sgcnn Params / FLOPs | sgcnn exact |",
        "|---|---|---|---|",
    ]
    for row in ROWS:
        if args.only and args.only not in row.label:
            continue
        c = measure(row)
        lines.append(
            f"| {row.label} | {_human(row.params, row, row.params)} / "
            f"{_human(row.flops, row, row.flops)} | {_human(c['params'], row, row.params)} / "
            f"{_human(c['flops'], row, row.flops)} | "
            f"{c['params']:,} / {c['flops']:,} |"
        )
        print(lines[-1], flush=True)
    env = (
        f"torch {torch.__version__}, scikit-learn {_version('sklearn')}, "
        f"numpy {_version('numpy')}, python {sys.version.split()[0]}"
    )
    if args.out:
        text = "\n".join(["# Paper structure: Params / FLOPs", "", *lines, "", env, ""])
        args.out.write_text(text)
    print(env)
    return 0


def _version(module: str) -> str:
    import importlib

    return importlib.import_module(module).__version__


if __name__ == "__main__":
    raise SystemExit(main())
