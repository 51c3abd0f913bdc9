"""What a converted layer costs beyond its arithmetic: small networks at batch 1.

    python benchmarks/bench_call_overhead.py            # 1 thread, thread CPU time

Prints, for one self-grouped 3x3 layer on a 4x4 map (16 channels, so the kernel's arithmetic
is a few microseconds), the time of a module call in a converted model's arena, and for
converted ResNet-56 (Conv-75/FC-75, random weights), ResNet-20 (the committed Conv-50 study
checkpoint) and LeNet-5 (Conv-95/FC-95) the median forward time at batch 1. To compare two
versions of the code, run this file from a checkout of each, alternately, with the same
``SGCNN_CACHE`` (the same tuning choices).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's sgcnn, installed or not

import torch  # noqa: E402
from torch import nn  # noqa: E402

import sgcnn  # noqa: E402
from sgcnn.deploy import fast  # noqa: E402
from sgcnn.deploy._arena import Arena  # noqa: E402
from sgcnn.engine import checkpoint as ckpt  # noqa: E402
from sgcnn.metrics.latency import compare_latency  # noqa: E402

CHECKPOINT = ROOT / "results" / "evidence" / "checkpoints" / "resnet20_sg_G_conv50_s0.pt"


def layer_call_us(calls: int) -> float:
    """Microseconds per call of one native layer module whose kernel work is tiny."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)).eval()
    sgcnn.self_group_(model, 0.5, groups=4, default_exclusions=False, input_size=(16, 4, 4))
    module = fast.NativeGroupConv2d.from_spec(fast.spec_from_layer(model[0], model[1], True))
    module.arena_slot = (Arena(1), 0)  # as convert plans it
    x = torch.randn(1, 16, 4, 4)
    with torch.inference_mode():
        for _ in range(200):
            module(x)
        t0 = time.process_time()
        for _ in range(calls):
            module(x)
        return (time.process_time() - t0) / calls * 1e6


def converted_models() -> dict:
    models = {}
    for name, conv, fc, size in [
        ("resnet56", 0.75, 0.75, (3, 32, 32)),
        ("lenet5", 0.95, 0.95, (1, 28, 28)),
    ]:
        torch.manual_seed(0)
        model = sgcnn.create_model(name).eval()
        sgcnn.self_group_(model, conv, fc, groups=16, seed=0, input_size=size)
        models[name] = (model, size)
    model, _, _ = ckpt.build_model(ckpt.load_checkpoint(CHECKPOINT), str(CHECKPOINT))
    models["resnet20 (study checkpoint)"] = (model.eval(), (3, 32, 32))
    return {
        name: (sgcnn.convert(m, torch.randn(1, *size)), size) for name, (m, size) in models.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="timed forward passes per model")
    parser.add_argument("--calls", type=int, default=20000, help="timed calls of the layer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, thread CPU time")
    layer_us = layer_call_us(args.calls)
    print(f"one native layer (16 channels, 4x4 map), in an arena: {layer_us:.1f} us a call")
    with torch.inference_mode():
        for name, (model, size) in converted_models().items():
            x = torch.randn(1, *size)
            times = compare_latency({name: model}, x, runs=args.runs, warmup=30, clock="cpu")
            print(f"{name}, batch 1: {times[name]['median_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
