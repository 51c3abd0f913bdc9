"""Max pooling of ResNet's stem (3x3, stride 2, padding 1 on 64 x 112 x 112): sgcnn's native
kernel against PyTorch's NCHW and channels-last kernels.

    python benchmarks/bench_max_pool.py --threads 2 --batch-sizes 1,16

Each way is timed in interleaved rounds on the same input (the channels-last one on a
channels-last copy); prints the medians and checks that the native result is PyTorch's. The
native kernel is timed twice: allocating its output like the others, and writing into the
same buffer call after call, as in a converted model (whose arena holds its activations).
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

from _env import describe
from sgcnn.deploy import _native, fast


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {' '.join(['python', *sys.argv])}")
    print(f"# {describe()}")
    print(
        "| batch | native ms | native, output buffer reused, ms | PyTorch NCHW ms "
        "| PyTorch channels-last ms |"
    )
    print("|---:|---:|---:|---:|---:|")
    native = fast.MaxPool2d(3, 2, 1)
    torch.manual_seed(0)
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        x = torch.randn(batch, 64, 112, 112)
        xc = x.contiguous(memory_format=torch.channels_last)
        buffer = torch.empty(batch * 64 * 56 * 56)
        ways = {
            "native": lambda x=x: native(x),
            "reused": lambda x=x, b=buffer: _native.max_pool2d(
                x, [3, 3], [2, 2], [1, 1], False, lambda n: b[:n]
            ),
            "nchw": lambda x=x: F.max_pool2d(x, 3, 2, 1),
            "channels_last": lambda xc=xc: F.max_pool2d(xc, 3, 2, 1),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        with torch.inference_mode():
            torch.testing.assert_close(native(x), F.max_pool2d(x, 3, 2, 1), atol=0, rtol=0)
            for fn in ways.values():
                fn()
            for _ in range(args.runs):
                for name, fn in ways.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        ms = {name: statistics.median(v) * 1e3 for name, v in times.items()}
        print(
            f"| {batch} | {ms['native']:.2f} | {ms['reused']:.2f} | {ms['nchw']:.2f} "
            f"| {ms['channels_last']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
