"""Does self-grouping beat the alternatives at the same cost? ResNet-20 on CIFAR-10.

Every row starts from the same trained baseline, prunes the same layers to the same conv
sparsity with one method (``grouping.method``), and is fine-tuned with the same budget
(``--ft-epochs`` epochs after pruning; an LG row's local epochs count against it)::

    # 1. train the baseline, then every fine-tune row, N at a time (one `sgcnn run` each)
    python benchmarks/cifar10_study.py run --archive cifar10-jpeg.tar.gz --out runs/study \\
        --jobs 8 --device cuda
    # 2. the paper's LeNet-5 table on mnist5k (CPU)
    python benchmarks/cifar10_study.py lenet --out runs/lenet --jobs 2
    # (from a machine that returns few files: pack the runs, unpack them where you collect)
    python benchmarks/cifar10_study.py pack --runs runs/study --out packed
    # 3. tables, plot and checkpoints into results/evidence (latency measured here, on CPU;
    #    the dense networks also with torch.compile, which takes minutes: --no-compile skips it)
    python benchmarks/cifar10_study.py collect --runs runs/study --lenet runs/lenet \\
        --out results/evidence --latency --threads 2 --batch 1

``run`` is resumable: a finished row is skipped, an unfinished one continues with ``--resume``,
a failed one is recorded in ``study.json`` without stopping the others. ``--quick`` is a smoke
test (1 epoch of 4 batches per phase, one row per method at Conv-70). Rows: SG-CNN G and LG,
groupconv (seeds 0 and 1), random, l1filter and kernel_l1 (seed 0), each at Conv-50 and
Conv-70, longest first. A shared data cache: set ``SGCNN_CACHE`` (default: OUT/cache).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's sgcnn, installed or not
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _study_rows import (  # noqa: E402
    FINETUNE_RECIPE,
    LG_STEP,
    LOCAL_EPOCHS,
    SPARSITIES,
    START_FILE,
    STUDY_FILE,
    budget_sets,
    diverged,
    finished,
    launches,
    study_rows,
)

QUICK_SETS = ["train.limit_batches=4", "grouping.global_epochs=1", "grouping.local_epochs=1"]


def smallest_budget() -> int:
    """The fewest ``--ft-epochs`` that leave every LG row at least one global epoch."""
    from sgcnn.engine.schemes import lg_steps

    return 1 + max(len(lg_steps(c, 0.0, LG_STEP)) * LOCAL_EPOCHS for c in SPARSITIES)


def sgcnn_command(recipe: str, out: Path, sets: list[str], extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "sgcnn.cli.main", "run", recipe, "--output", str(out)]
    command += [*extra, "--quiet"]
    for item in sets:
        command += ["--set", item]
    return command


class Study:
    """Launches the runs, at most ``jobs`` at a time, and records each one's outcome and, with
    ``host`` (a function returning this machine's record, commit included), where and at which
    commit each launch (start or resume) ran: the ``machines`` list of its entry."""

    def __init__(self, out: Path, jobs: int, host: Callable[[], dict] | None = None) -> None:
        self.out, self.jobs, self.host = out, jobs, host
        self.file = out / STUDY_FILE
        self._lock = _lock_study(out)  # held while this driver lives
        try:
            self.record = json.loads(self.file.read_text()) if self.file.is_file() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SystemExit(
                f"{self.file} is damaged ({err}); restore it or start a new --out"
            ) from None
        self.record.setdefault("runs", {})

    def close(self) -> None:
        """Release the study folder (its lock)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def save(self) -> None:
        from sgcnn._io import atomic_write

        text = json.dumps(self.record, indent=2).encode()
        atomic_write(self.file, lambda f: f.write(text))

    def launch(self, name: str, command: list[str]) -> subprocess.Popen | None:
        run_dir = self.out / name
        if finished(run_dir):
            if diverged(run_dir):  # its report says so; running it again would diverge again
                self.record["runs"].setdefault(name, {})["status"] = "failed"
                self.save()
                print(f"  {name}: diverged (see its metrics.jsonl), not run again", flush=True)
            else:
                print(f"  {name}: done already, skipped", flush=True)
            return None
        resume = run_dir.exists()
        if resume:
            command = [*command, "--resume"]
        log = open(self.out / "logs" / f"{name}.log", "a")  # noqa: SIM115 - closed in wait()
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *_pythonpath()])}
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        proc.sgcnn_log, proc.sgcnn_name, proc.sgcnn_start = log, name, time.monotonic()
        entry = self.record["runs"].setdefault(name, {})
        entry.update({"status": "running", "command": command, "log": f"logs/{name}.log"})
        if self.host is not None:  # where and at which commit this launch runs, in a history
            history = launches(entry)
            entry.pop("machine", None)  # an older study's record of its last launch: moved
            driver = len(self.record.get("drivers", [])) - 1
            event = {"event": "resume" if resume else "start", "driver": driver}
            entry["machines"] = [*history, {**event, **self.host()}]
        self.save()
        print(f"  {name}: started", flush=True)
        return proc

    def finish(self, proc: subprocess.Popen) -> None:
        proc.sgcnn_log.close()
        entry = self.record["runs"][proc.sgcnn_name]
        wall = time.monotonic() - proc.sgcnn_start
        entry["wall_s"] = round(entry.get("wall_s", 0.0) + wall, 1)
        entry["returncode"] = proc.returncode
        status = {0: "done", 130: "interrupted"}  # 130: stopped, state saved (resumable)
        entry["status"] = status.get(proc.returncode, "failed")
        self.save()
        print(f"  {proc.sgcnn_name}: {entry['status']} ({wall:.0f} s)", flush=True)

    def run_all(self, commands: list[tuple[str, list[str]]]) -> None:
        queue, running = list(commands), []
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    name, command = queue.pop(0)
                    proc = self.launch(name, command)
                    if proc is not None:
                        running.append(proc)
                for proc in [p for p in running if p.poll() is not None]:
                    running.remove(proc)
                    self.finish(proc)
                time.sleep(0.5)
        finally:
            for proc in running:  # interrupted: the runs save their state on SIGTERM
                proc.terminate()
            for proc in running:
                proc.wait()
                self.finish(proc)


def _lock_study(out: Path) -> int:
    """An exclusive lock on the study folder for this driver's lifetime (a second driver on the
    same folder would launch the same runs and overwrite the study file)."""
    fd = os.open(out / ".study.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SystemExit(f"another driver is running on {out}; wait for it or stop it") from None
    return fd


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _same_settings(study: Study, settings: dict) -> bool:
    """Record the study's settings on its first run; a restart must repeat them (rows run with
    other settings would not be comparable). Prints what differs."""
    saved = study.record.setdefault("settings", settings)
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    if changed:
        print(
            f"this study was started with other settings ({'; '.join(changed)}): run it with "
            f"those (see {study.file}), or use another --out",
            file=sys.stderr,
        )
    return not changed


def _checkpoint_arg(checkpoint: Path) -> str:
    """The baseline's path as the rows record it: relative to the repository (the runs' working
    folder) when the study lives inside it, so that a study folder copied along with the
    repository to another machine still resumes; else absolute."""
    try:
        return str(checkpoint.relative_to(ROOT))
    except ValueError:
        return str(checkpoint)


def _pythonpath() -> list[str]:
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


def resolved_device(spec: str) -> str:
    """The device the runs train on for ``--device`` (``auto``: cuda where there is one)."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine(device: str = "cpu") -> dict:
    """This machine now, recorded next to the runs: hardware, versions, the repository's commit
    (``+changes`` with uncommitted edits of tracked files) and the runs' ``device``; the GPU
    only when that device is cuda."""
    import platform

    import torch

    from _env import describe

    info = describe()
    info["platform"] = platform.platform()
    info["device"] = device
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _record_driver(study: Study, session: dict, argv: list[str]) -> None:
    """Append this driver's invocation (command line and machine record) to the study's
    ``drivers``; an older study's single ``driver`` / ``machine`` becomes its first entry.
    ``driver`` and ``machine`` keep the latest, as before."""
    argv = ["benchmarks/cifar10_study.py", *argv]
    record = study.record
    drivers = record.setdefault("drivers", [])
    if not drivers and record.get("driver"):
        drivers.append({"argv": record["driver"], "machine": record.get("machine")})
    drivers.append({"argv": argv, "machine": session})
    record["machine"], record["driver"] = session, argv


def cmd_run(args) -> int:
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    device = resolved_device(args.device)
    study = Study(out, 1, lambda: machine(device))
    try:
        return _run_study(args, out, study)
    finally:
        study.close()


def _run_study(args, out: Path, study: Study) -> int:
    settings = {
        "epochs": args.epochs,
        "ft_epochs": args.ft_epochs,
        "full_train": args.full_train,
        "quick": args.quick,
    }
    if not _same_settings(study, settings):
        return 2
    _record_driver(study, study.host(), args.argv)
    study.record["archive"] = str(args.archive)
    study.record["quick"] = args.quick
    study.save()
    os.environ.setdefault("SGCNN_CACHE", str(out / "cache"))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    common = ["--data-root", str(args.archive.resolve()), "--device", args.device]
    # --quick: the baseline trains 1 epoch of 4 batches; the rows (train.epochs 0 in their
    # recipe) start from it and fine-tune 1 epoch per phase
    quick = QUICK_SETS if args.quick else []
    # --full-train: all 50,000 training images, each run's last epoch (no validation split)
    protocol = ["data.val_fraction=0", "train.select=last"] if args.full_train else []
    base_sets = [
        *protocol,
        *(["train.epochs=1", *quick] if quick else [f"train.epochs={args.epochs}"]),
    ]
    print(f"baseline ({args.epochs if not args.quick else 1} epochs)", flush=True)
    study.run_all(
        [
            (
                "baseline",
                sgcnn_command("resnet20_cifar10_baseline", out / "baseline", base_sets, common),
            )
        ]
    )
    checkpoint = out / "baseline" / "baseline" / "model.pt"
    base = out / "baseline"
    if not finished(base) or diverged(base) or not checkpoint.is_file():
        why = "diverged" if diverged(base) else "has not finished"  # model.pt is every epoch's
        print(
            f"the baseline {why}: no row starts from it (see {out / 'logs' / 'baseline.log'}; "
            "run the same command again to resume it)",
            file=sys.stderr,
        )
        return 1
    digest = _digest(checkpoint)
    if study.record.setdefault("baseline_sha256", digest) == digest:
        study.save()
    else:
        print(
            f"{checkpoint} changed since the rows started from it (sha256 recorded in "
            f"{study.file}); rows from two baselines are not comparable: use another --out",
            file=sys.stderr,
        )
        return 2
    commands = []
    rows = study_rows()
    if args.quick:  # one row of each kind, at the higher sparsity
        rows = [r for r in rows if r.seed == 0 and r.conv == max(SPARSITIES)]
    for row in rows:
        sets = [
            f"model.checkpoint={_checkpoint_arg(checkpoint)}",
            f"grouping.method={row.method}",
            f"grouping.scheme={row.scheme}",
            f"grouping.conv=[{row.conv}]",
            f"grouping.seed={row.seed}",
            f"train.seed={row.seed}",
            f"train.threads={threads}",
            "train.amp=none",  # fp32 everywhere, as `sgcnn eval` re-evaluates the checkpoints
            *protocol,
        ]
        sets += quick or budget_sets(row, args.ft_epochs)
        commands.append((row.name, sgcnn_command(FINETUNE_RECIPE, out / row.name, sets, common)))
        study.record["runs"].setdefault(row.name, {}).update(asdict(row))
    print(
        f"{len(commands)} fine-tune runs, {args.jobs} at a time, {threads} threads each", flush=True
    )
    study.jobs = args.jobs
    study.run_all(commands)
    failed = [n for n, r in study.record["runs"].items() if r.get("status") == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {out / 'logs'})", file=sys.stderr)
    return 1 if failed else 0


def cmd_lenet(args) -> int:
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    study = Study(out, args.jobs, machine)
    try:
        return _run_lenet(args, out, study)
    finally:
        study.close()


def _run_lenet(args, out: Path, study: Study) -> int:
    _record_driver(study, machine(), args.argv)
    sets = ["grouping.conv=[0.95, 0.96, 0.97, 0.98, 0.99]", "train.device=cpu"]
    if args.quick:
        sets += [*QUICK_SETS, "train.epochs=1", "grouping.conv=[0.95]"]
    commands = []
    for scheme in ("G", "LG"):
        scheme_sets = [*sets, f"grouping.scheme={scheme}"]
        if scheme == "LG":  # one local epoch per 10-point step, then the demo's global epochs
            scheme_sets.append("grouping.local_epochs=1")
        commands.append(
            (
                f"lenet5-{scheme}",
                sgcnn_command("lenet5_mnist5k_demo", out / f"lenet5-{scheme}", scheme_sets, []),
            )
        )
    study.run_all(commands)
    return 0 if all(r.get("status") == "done" for r in study.record["runs"].values()) else 1


def cmd_pack(args) -> int:
    """The study in a few ``.tar.gz`` files of at most ``--max-mb`` each (for machines that
    return few, bounded files): the small files, then the result checkpoints, then (with
    ``--state``) the resume state of the runs not finished. Left out: the data cache, the
    fine-tune runs' copies of the baseline, and ``state.pt`` unless asked for. In their place
    each run gets a ``start_weights.json`` (written into the archive only): the digest of its
    ``baseline/model.pt`` that ``collect`` checks the rows' common start with."""
    import io
    import tarfile

    runs, out = args.runs.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    small, models, states = [], [], []
    for path in sorted(runs.rglob("*")):
        rel = path.relative_to(runs)
        if not path.is_file() or rel.parts[0] == "cache" or path.suffix == ".png":
            continue
        if path.name == "state.pt":
            if args.state and not finished(path.parent):
                states.append(rel)
        elif path.suffix != ".pt":
            small.append(rel)
        elif len(rel.parts) < 3 or rel.parts[0] == "baseline" or rel.parts[1] != "baseline":
            models.append(rel)
    starts = _start_digests(runs)
    parts = [("runs-meta", small)]
    for kind, files in (("models", models), ("state", states)):
        parts += [(f"{kind}-{i + 1}", c) for i, c in enumerate(_chunks(runs, files, args.max_mb))]
    for name, files in parts:
        with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
            for rel in files:
                tar.add(runs / rel, arcname=str(rel))
            for rel, text in starts.items() if name == "runs-meta" else ():
                info = tarfile.TarInfo(str(rel))
                info.size, info.mtime = len(text), int(time.time())
                tar.addfile(info, io.BytesIO(text))
        count = len(files) + (len(starts) if name == "runs-meta" else 0)
        print(f"{out / name}.tar.gz: {count} files")
    print(f"unpack with: for f in {out}/*.tar.gz; do tar xzf $f -C STUDY_DIR; done")
    return 0


def _start_digests(runs: Path) -> dict[Path, bytes]:
    """``{RUN/start_weights.json: json}`` for every run folder with a ``baseline/model.pt``:
    the digest of the weights it started from (or, the baseline run, trained), as ``collect``
    computes it from that file, which ``pack`` leaves out of the fine-tune runs."""
    from _study_collect import _weights_digest

    out = {}
    for model in sorted(runs.glob("*/baseline/model.pt")):
        run = model.parent.parent.relative_to(runs)
        if run.parts[0] == "cache":
            continue
        record = {"file": "baseline/model.pt", "weights_digest": _weights_digest(model)}
        out[run / START_FILE] = (json.dumps(record, indent=2) + "\n").encode()
    return out


def _chunks(root: Path, files: list[Path], max_mb: float) -> list[list[Path]]:
    """``files`` in order, cut into lists of at most ``max_mb`` MB (a larger file alone)."""
    chunks, size = [[]], 0
    for rel in files:
        n = (root / rel).stat().st_size
        if chunks[-1] and size + n > max_mb * 1e6:
            chunks.append([])
            size = 0
        chunks[-1].append(rel)
        size += n
    return [c for c in chunks if c]


def cmd_collect(args) -> int:
    from _study_collect import collect

    if args.notes is not None and not args.notes.is_file():
        raise SystemExit(f"--notes {args.notes}: no such file")
    collect(
        args.runs,
        args.lenet,
        args.out,
        args.latency,
        args.threads,
        args.batch,
        args.notes,
        compile=not args.no_compile,
    )
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM (``timeout``, a scheduler) and SIGHUP (a closed terminal) unwind like Ctrl-C:
    the running runs are asked to save their state and stop, and the study file records them
    (no run is left training without its driver)."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train the baseline and every fine-tune row")
    p.add_argument("--archive", type=Path, required=True, help="CIFAR-10 JPEG .tar.gz")
    p.add_argument("--out", type=Path, required=True, help="study folder (one folder per run)")
    p.add_argument("--jobs", type=int, default=8, help="fine-tune runs at a time")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--epochs", type=int, default=80, help="baseline epochs")
    p.add_argument(
        "--ft-epochs",
        type=int,
        default=12,
        help="training epochs of every row after pruning (an LG row's local epochs included)",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch of 4 batches")
    p.add_argument(
        "--full-train",
        action="store_true",
        help="train on all 50,000 images and keep each run's last epoch (no validation split)",
    )
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("lenet", help="the LeNet-5 table on mnist5k (G and LG, CPU)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.set_defaults(func=cmd_lenet)
    p = sub.add_parser("pack", help="the runs in a few archives (no data cache, no state)")
    p.add_argument("--runs", type=Path, required=True, help="the study folder of `run`")
    p.add_argument("--out", type=Path, required=True, help="folder for the .tar.gz files")
    p.add_argument("--max-mb", type=float, default=14.0, help="checkpoint MB per archive")
    p.add_argument("--state", action="store_true", help="also the resume state of unfinished runs")
    p.set_defaults(func=cmd_pack)
    p = sub.add_parser("collect", help="tables, plot and checkpoints from the run folders")
    p.add_argument("--runs", type=Path, required=True, help="the study folder of `run`")
    p.add_argument("--lenet", type=Path, help="the folder of `lenet`")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "evidence")
    p.add_argument("--latency", action="store_true", help="measure CPU latency here")
    p.add_argument("--threads", type=int, default=1, help="torch threads for latency")
    p.add_argument("--batch", type=int, default=1, help="batch size for latency")
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="leave torch.compile out of the dense deployments timed (it takes minutes)",
    )
    p.add_argument("--notes", type=Path, help="markdown appended to cifar10.md (how it went)")
    p.set_defaults(func=cmd_collect)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as recorded in study.json
    _exit_on_sigterm()
    if getattr(args, "ft_epochs", None) is not None and args.ft_epochs < smallest_budget():
        parser.error(
            f"--ft-epochs must be >= {smallest_budget()}: an LG row spends {LOCAL_EPOCHS} epoch "
            "after each of its steps and needs at least one global epoch"
        )
    for name in ("jobs", "epochs", "threads", "batch"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be >= 1")
    if getattr(args, "max_mb", 1) <= 0:
        parser.error("--max-mb must be > 0")
    out = getattr(args, "out", None)
    if out is not None and out.exists() and not out.is_dir():
        parser.error(f"--out {out} is a file, not a folder")
    runs = getattr(args, "runs", None)
    if runs is not None and not (runs / STUDY_FILE).is_file():
        parser.error(f"--runs {runs}: no {STUDY_FILE} there (give the folder `run` wrote)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
