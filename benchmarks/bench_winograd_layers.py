"""Single 3x3 layers of a self-grouped ResNet-50: the direct native kernel against Winograd.

    python benchmarks/bench_winograd_layers.py --threads 2 --batch 16

ResNet-50 (random weights) self-grouped at Conv-60 with g = 16; for one 3x3 stride-1 layer per
stage, the input is given with its zero border (as the converted model hands it over) and each
realization is timed alone: the direct native kernel (best of its block settings), F(2x2, 3x3)
and F(4x4, 3x3) (best of theirs). Prints the median of ``--runs`` calls per setting and the
largest difference to the direct convolution.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sgcnn
from _env import describe
from sgcnn.deploy import fast

LAYERS = {"layer1.1.conv2": 56, "layer2.1.conv2": 28, "layer3.1.conv2": 14, "layer4.1.conv2": 7}


def _median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _padded(x: torch.Tensor) -> torch.Tensor:
    """``x`` with a zero border of 1, and readable slack behind it, as a producer writes it."""
    b, c, h, w = x.shape
    numel = b * c * (h + 2) * (w + 2)
    flat = torch.zeros(numel + 128)
    out = flat[:numel].view(b, c, h + 2, w + 2)
    out.copy_(F.pad(x, (1, 1, 1, 1)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = describe()
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# {env}")
    torch.manual_seed(0)
    model = sgcnn.create_model("resnet50").eval()
    sgcnn.self_group_(model, 0.6, 0.6, groups=16, seed=0, input_size=(3, 224, 224))
    modules = dict(model.named_modules())
    print("| layer | direct native | F(2x2, 3x3) | F(4x4, 3x3) | max diff F(2x2) / F(4x4) |")
    print("|---|---:|---:|---:|---:|")
    for name, size in LAYERS.items():
        spec = fast.spec_from_layer(modules[name], modules[name.replace("conv", "bn")], True)
        x = torch.randn(args.batch, spec.in_features, size, size)
        xp = _padded(x)
        want = F.conv2d(x, spec.weight, spec.bias, 1, 1).relu()
        cells, diffs = [], []
        families = (
            [fast.NativeGroupConv2d.from_spec(spec, b, 6) for b in (4, 8, 12)],
            [fast.WinogradGroupConv2d.from_spec(spec, b, 6, 2) for b in (1, 2, 3)],
            [fast.WinogradGroupConv2d.from_spec(spec, b, 6, 4) for b in (1, 2, 3)],
        )
        with torch.inference_mode():
            for family in families:
                best = None
                for module in family:
                    module.input_padded = True
                    t = _median_ms(lambda m=module, xp=xp: m(xp), args.runs)
                    best = (t, module) if best is None or t < best[0] else best
                cells.append(f"{best[0]:.2f} ms (b{best[1].block})")
                if isinstance(best[1], fast.WinogradGroupConv2d):
                    diffs.append(f"{float((best[1](xp) - want).abs().max()):.0e}")
        print(f"| {name} ({size}x{size}) | {' | '.join(cells)} | {' / '.join(diffs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
