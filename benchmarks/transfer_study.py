"""Domain-transfer study on CIFAR-10 split by class: train and self-group on one half of the
classes, transfer to the other half with the paper's schemes, against a dense transfer and a
model trained from scratch on the target with the same budget.

Source: airplane, automobile, bird, cat, deer; target: dog, frog, horse, ship, truck (recipes
``resnet20_cifar10_source`` and ``resnet20_cifar10_transfer``). Rows (each one ``sgcnn``
process, run N at a time; the transfer rows wait for the source run):

==========  =====================================================================  =========
row         what                                                                   target ep.
==========  =====================================================================  =========
source      ResNet-20, 30 epochs on the source, then G Conv-50/FC-50 (12 epochs)   -
dense       source baseline, new classifier, fine-tuned                            15
L           source Conv-50/FC-50 (grouped on the source), new classifier, masks   15
            kept, fine-tuned
G           source baseline, new classifier, 5 epochs, self-grouped on the target  5 + 10
            to Conv-50 (new classifier left dense: FC-0), 10 epochs global
LG          as G, but 10 % steps to Conv-50 with 1 local epoch each, 5 global      5 + 5 + 5
scratch     ResNet-20 trained on the target from random weights                    15
scratch30   the same with the source's 30 epochs                                   30
==========  =====================================================================  =========

::

    python benchmarks/transfer_study.py run --archive cifar10-jpeg.tar.gz --out runs/transfer \\
        --jobs 4 --device cuda
    python benchmarks/transfer_study.py collect --runs runs/transfer --out results/transfer

``run`` is resumable: finished rows (``report.json`` present and exit status 0 recorded in
``study.json``) are skipped, interrupted ones and ones that exited non-zero continue with
``--resume``; a failed row is reported and the others go on (rows that need its model are
skipped). ``collect`` shows a row without a recorded exit status 0 as failed, not its
numbers. ``--quick`` is a smoke test of the whole study in a few minutes (one epoch, three
batches per epoch). Each row's output is in ``OUT/logs/<row>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

SOURCE_DENSE = "source/baseline/model.pt"
SOURCE_GROUPED = "source/conv50-fc50/model.pt"
STUDY_FILE = "study.json"


@dataclass(frozen=True)
class Row:
    name: str
    argv: list[str]  # sgcnn arguments; {out} is replaced by the study folder
    quick: list[str]  # extra arguments of --quick
    needs: tuple[str, ...] = ()
    what: str = ""
    target_epochs: str = ""
    start: str = ""


_QUICK = ["--set", "train.epochs=1", "--set", "train.limit_batches=3"]
_QUICK += ["--set", "data.val_fraction=0.02"]
_TRANSFER = ["transfer", "--recipe", "resnet20_cifar10_transfer"]
_SCRATCH = ["train", "--recipe", "resnet20_cifar10_transfer", "--lr", "0.1"]
_SCRATCH += ["--set", "optim.schedule=cosine", "--set", "optim.warmup_epochs=1"]

ROWS = [
    Row(
        "source",
        ["run", "resnet20_cifar10_source"],
        [*_QUICK, "--set", "grouping.global_epochs=1"],
        what="source baseline (30 ep) + G Conv-50/FC-50 (12 ep)",
        target_epochs="-",
        start="random",
    ),
    Row(
        "dense",
        [*_TRANSFER, "--checkpoint", "{out}/" + SOURCE_DENSE, "--scheme", "dense"],
        _QUICK,
        needs=("source",),
        what="dense transfer",
        target_epochs="15",
        start="source baseline (dense)",
    ),
    Row(
        "L",
        [*_TRANSFER, "--checkpoint", "{out}/" + SOURCE_GROUPED, "--scheme", "L"],
        _QUICK,
        needs=("source",),
        what="L: source grouping kept",
        target_epochs="15",
        start="source Conv-50/FC-50",
    ),
    Row(
        "G",
        [
            *_TRANSFER,
            *("--checkpoint", "{out}/" + SOURCE_DENSE, "--scheme", "G", "--conv", "0.5"),
            *("--fc", "0", "--epochs", "5", "--global-epochs", "10"),
            *("--set", "finetune.milestones=[4,7]"),
        ],
        [*_QUICK, "--set", "grouping.global_epochs=1"],
        needs=("source",),
        what="G: re-grouped on the target",
        target_epochs="5 + 10",
        start="source baseline (dense)",
    ),
    Row(
        "LG",
        [
            *_TRANSFER,
            *("--checkpoint", "{out}/" + SOURCE_DENSE, "--scheme", "LG", "--conv", "0.5"),
            *("--fc", "0", "--epochs", "5", "--local-epochs", "1", "--global-epochs", "5"),
            *("--set", "finetune.milestones=[2,4]"),
        ],
        [*_QUICK, "--set", "grouping.global_epochs=1", "--set", "grouping.lg_step=0.25"],
        needs=("source",),
        what="LG: re-grouped on the target, 10% steps",
        target_epochs="5 + 5x1 + 5",
        start="source baseline (dense)",
    ),
    Row(
        "scratch",
        [*_SCRATCH, "--epochs", "15"],
        _QUICK,
        what="from scratch",
        target_epochs="15",
        start="random",
    ),
    Row(
        "scratch30",
        [*_SCRATCH, "--epochs", "30"],
        _QUICK,
        what="from scratch, the source's budget",
        target_epochs="30",
        start="random",
    ),
]


def _command(row: Row, args, out: Path, resume: bool) -> list[str]:
    argv = [a.replace("{out}", str(out)) for a in row.argv]
    argv += ["--data-root", str(args.archive), "--output", str(out / row.name), "--quiet"]
    argv += ["--device", args.device]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)  # no oversubscription of the cores
    argv += ["--set", f"train.threads={threads}"]
    if args.quick:
        argv += row.quick
    argv += [s for item in args.set for s in ("--set", item)]
    if resume:
        argv.append("--resume")
    return [sys.executable, "-m", "sgcnn.cli.main", *argv]


def _exit_code(study: dict, name: str) -> int | None:
    """The exit status ``study.json`` records for row ``name`` (None: never finished)."""
    return study.get("rows", {}).get(name, {}).get("returncode")


def _state(row: Row, out: Path, study: dict) -> str:
    """``done`` (report written and exit status 0), ``partial`` (something written) or
    ``new``."""
    folder = out / row.name
    if (folder / "report.json").is_file() and _exit_code(study, row.name) == 0:
        return "done"
    if folder.is_dir() and any(folder.iterdir()):
        return "partial"
    return "new"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_study(args) -> int:
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    study_path = out / STUDY_FILE
    study = json.loads(study_path.read_text()) if study_path.is_file() else {"rows": {}}
    study.update(
        archive=str(args.archive),
        device=args.device,
        jobs=args.jobs,
        quick=args.quick,
        sets=args.set,
        driver=" ".join(sys.argv),
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    pending = [r for r in ROWS if not args.rows or r.name in args.rows]
    status = {r.name: _state(r, out, study) for r in ROWS}
    for row in pending:
        code = _exit_code(study, row.name)
        if status[row.name] == "done":
            print(f"{row.name}: done already")
        elif status[row.name] == "partial" and code not in (None, 0):
            print(f"{row.name}: exited {code} last time: run again with --resume")
    pending = [r for r in pending if status[r.name] != "done"]
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    failed: set[str] = set()
    begin = time.monotonic()
    while pending or running:
        waiting = {r.name for r in pending} | set(running)
        for row in list(pending):
            if any(n in failed for n in row.needs):
                print(f"{row.name}: skipped ({', '.join(row.needs)} failed)")
                failed.add(row.name)
                pending.remove(row)
            elif any(status[n] != "done" and n not in waiting for n in row.needs):
                print(f"{row.name}: skipped ({', '.join(row.needs)} not done: add it to --rows)")
                failed.add(row.name)
                pending.remove(row)
            elif len(running) < args.jobs and all(status[n] == "done" for n in row.needs):
                cmd = _command(row, args, out, resume=status[row.name] == "partial")
                log = open(out / "logs" / f"{row.name}.log", "a")  # noqa: SIM115 - closed below
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                running[row.name] = (proc, time.monotonic(), log)
                entry = study["rows"].setdefault(row.name, {})
                entry.update(command=" ".join(cmd[3:]), returncode=None)  # None: running
                _write_json(study_path, study)
                pending.remove(row)
                print(f"{row.name}: started")
        for name, (proc, started, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            seconds = time.monotonic() - started
            entry = study["rows"].setdefault(name, {})
            entry["returncode"] = proc.returncode
            entry["wall_s"] = round(entry.get("wall_s", 0.0) + seconds, 1)
            if _state(ROWS_BY_NAME[name], out, study) == "done":
                status[name] = "done"
                print(f"{name}: done in {seconds:.0f} s")
            else:
                failed.add(name)
                print(f"{name}: FAILED (exit {proc.returncode}), see {out}/logs/{name}.log")
            _write_json(study_path, study)
        time.sleep(0.5)
    seconds = round(time.monotonic() - begin, 1)
    if seconds > 1:  # something ran: add this invocation to the study's wall time
        study["wall_s"] = round(study.get("wall_s", 0.0) + seconds, 1)
        study["invocations"] = study.get("invocations", 0) + 1
    _write_json(study_path, study)
    total = study.get("wall_s", 0)
    print(f"wall time {seconds:.0f} s (study: {total:.0f} s); failed: {sorted(failed)}")
    return 1 if failed else 0


ROWS_BY_NAME = {r.name: r for r in ROWS}


def collect(args) -> int:
    from _env import describe

    runs, dest = Path(args.runs), Path(args.out)
    study = json.loads((runs / STUDY_FILE).read_text()) if (runs / STUDY_FILE).is_file() else {}
    table, records, meta = [], [], {}
    for row in ROWS:
        report = runs / row.name / "report.json"
        if not report.is_file():
            table.append(f"| {row.name} | {row.what} | (missing) | | | | | |")
            continue
        code = _exit_code(study, row.name)
        if code != 0:  # a report written by a run that then failed (or never finished)
            why = "never finished" if code is None else f"exit {code}"
            table.append(f"| {row.name} | {row.what} | (failed: {why}) | | | | | |")
            continue
        data = json.loads(report.read_text())
        meta = meta or data.get("meta", {})
        wall = study.get("rows", {}).get(row.name, {}).get("wall_s")
        elapsed = data.get("meta", {}).get("elapsed_s")
        for r in data["rows"]:
            if row.name in ("G", "LG") and r.get("scheme") == "baseline":
                continue  # the 5-epoch transfer before re-grouping: a step, not a result
            label = row.name if row.name != "source" else f"source {r['name']}"
            records.append(
                {
                    "row": label,
                    "what": row.what,
                    "start": row.start,
                    "target_epochs": row.target_epochs,
                    "model": r["name"],
                    "params": r["params"],
                    "flops": r["flops"],
                    "top1": r["top1"],
                    "top5": r.get("top5"),  # None: 5 classes (always 100 %)
                    "run_elapsed_s": elapsed,
                    "wall_s": wall,
                    "command": study.get("rows", {}).get(row.name, {}).get("command"),
                }
            )
    from sgcnn.reports.render import _human

    lines = [
        "| row | start | epochs on target | model | Params | FLOPs | Top-1 % | run s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['row']} | {r['start']} | {r['target_epochs']} | {r['model']} | "
            f"{_human(r['params'])} | {_human(r['flops'])} | {r['top1']:.2f} | "
            f"{r['run_elapsed_s']} |"
        )
    lines += table
    env = {k: meta.get(k) for k in ("gpu", "cpu", "cpu_count", "torch", "python", "date")}
    commands = [f"    sgcnn {r['command']}" for r in records if r.get("command")]
    md = [
        "# Domain transfer on CIFAR-10 split by class (ResNet-20)",
        "",
        "Source: airplane, automobile, bird, cat, deer. Target: dog, frog, horse, ship, truck "
        "(5,000 test images). Top-1 on the target's test split (the Top-5 of 5 classes is always "
        "100 %); every transfer row has the same 15-epoch budget on the target.",
        "",
        *lines,
        "",
        f"Study wall time: {study.get('wall_s')} s over {study.get('invocations')} `run` "
        f"invocation(s), {study.get('jobs')} rows at a time; device {study.get('device')}; "
        f'quick (smoke) run: {study.get("quick")}. "run s" is each row\'s own run time.',
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items() if v is not None),
        "",
        "Driver: `" + str(study.get("driver")) + "`",
        "",
        "Commands (one process per row; `sgcnn` = `python -m sgcnn.cli.main`):",
        "",
        *sorted(set(commands), key=commands.index),
        "",
    ]
    dest.mkdir(parents=True, exist_ok=True)
    summary = {"rows": records, "study": study, "meta": meta, "collected_on": describe()}
    _write_json(dest / "transfer_study.json", summary)
    (dest / "transfer_study.md").write_text("\n".join(md))
    print("\n".join(lines))
    print(f"written {dest / 'transfer_study.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the study's rows")
    r.add_argument("--archive", required=True, type=Path, help="cifar10-jpeg.tar.gz or its tree")
    r.add_argument("--out", required=True, help="study folder (one run folder per row)")
    r.add_argument("--jobs", type=int, default=1, help="rows run at the same time")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda")
    r.add_argument("--quick", action="store_true", help="smoke test: 1 epoch of 3 batches")
    r.add_argument("--rows", nargs="+", choices=[x.name for x in ROWS], help="only these rows")
    r.add_argument("--set", action="append", default=[], help="KEY=VALUE for every row")
    c = sub.add_parser("collect", help="tabulate a study folder into results/")
    c.add_argument("--runs", required=True, help="the study folder of `run`")
    c.add_argument("--out", required=True, help="results folder, e.g. results/transfer")
    args = parser.parse_args(argv)
    if args.cmd == "run":
        if not args.archive.exists():
            parser.error(f"--archive {args.archive} does not exist")
        if args.jobs < 1:
            parser.error("--jobs must be >= 1")
        return run_study(args)
    return collect(args)


if __name__ == "__main__":
    sys.exit(main())
