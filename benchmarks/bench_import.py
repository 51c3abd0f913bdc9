"""How much `import sgcnn` (and `sgcnn --help`) costs beyond `import torch`.

Each statement runs in a fresh interpreter, interleaved round by round so that a change in the
machine's load hits every statement alike; the figure is the median wall time per statement and
the ratio of each to `import torch` alone::

    python benchmarks/bench_import.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _env import describe

STATEMENTS = {
    "import torch": "import torch",
    "import sgcnn": "import sgcnn",
    # The public names load their modules on first use; this is the cost of the first one
    # (torch, scikit-learn and the grouping code), for comparison.
    "sgcnn.self_group_": "import sgcnn; sgcnn.self_group_",
    "sgcnn --help": "import sys; sys.argv = ['sgcnn', '--help']\n"
    "from sgcnn.cli.main import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass",
}


def _time_once(code: str) -> float:
    begin = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - begin


def measure(rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each statement in ``rounds`` fresh processes, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
    _time_once("import torch")  # warm the file cache once, outside the figures
    for _ in range(rounds):
        for name, code in STATEMENTS.items():
            times[name].append(_time_once(code))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per statement")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    times = measure(args.rounds)
    base = statistics.median(times["import torch"])
    rows = {
        name: {"median_s": statistics.median(t), "ratio": statistics.median(t) / base, "all_s": t}
        for name, t in times.items()
    }
    env = describe()
    print(f"# import cost, median of {args.rounds} fresh processes ({env['date']})")
    print(f"# {env['cpu']}, {env['cores']} cores, Python {env['python']}, torch {env['torch']}")
    print("| statement | median s | x import torch |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| `{name}` | {row['median_s']:.3f} | {row['ratio']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
