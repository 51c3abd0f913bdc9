"""Execute a run: the plan of :mod:`sgcnn.engine.schemes`, resumable, on 1 to N processes.

::

    rows = Runner(resolve_config(recipe), Path("runs/demo")).run()

:meth:`Runner.run` creates the run folder (or, with ``resume=True``, reopens it), then walks
the plan: baseline training, pruning steps, local and global fine-tunes, and the evaluation of
each result row on the test split, using the epoch that ``train.select`` picks on the
validation split (never on the test split). It saves the
state (:mod:`sgcnn.engine.state`) after every stage and epoch, and every
``train.save_every_min`` minutes inside an epoch. Ctrl-C (SIGINT) or SIGTERM saves the state at
the next step and raises :class:`RunInterrupted`; a second Ctrl-C aborts at once.
A non-finite loss or weight stops the run before anything is saved
(:mod:`sgcnn.engine.health`): it raises :class:`TrainingDiverged`, records a ``failed`` line
and writes the report, and the run folder keeps its last good state.

Under ``torchrun`` every rank runs the same plan on its shard of the data, wrapped in
DistributedDataParallel (re-wrapped after each pruning step, since masks are buffers that DDP
synchronises from rank 0); rank 0 alone clusters, reads and writes files, and broadcasts what
the others need.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sgcnn.core.grouper import SelfGrouper
from sgcnn.data.config import check_same_data, data_record
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine._stages import _PruneEvaluate
from sgcnn.engine._training import _now, _TrainingPhase
from sgcnn.engine.build import build_data, build_model
from sgcnn.engine.config import Config, config_to_dict
from sgcnn.engine.distributed import (
    broadcast_object,
    gather_objects,
    resolve_device,
    setup,
    teardown,
)
from sgcnn.engine.health import FAILED
from sgcnn.engine.interrupt import RunInterrupted, StopRequest
from sgcnn.engine.loaders import TrainLoader, eval_loader
from sgcnn.engine.loop import Precision, evaluate
from sgcnn.engine.reporting import provenance, run_facts, write_run_report
from sgcnn.engine.rundir import (
    check_new_run_dir,
    check_resume,
    create_run_dir,
    lock_run_dir,
    remove_stale_temporaries,
    require_run_dir,
)
from sgcnn.engine.schemes import plan
from sgcnn.engine.state import (
    CONFIG_FILE,
    METRICS_FILE,
    MetricsLog,
    check_metrics_length,
    fsync_file,
    load_state,
    read_metrics,
    rng_state,
    save_state,
    set_rng_state,
)
from sgcnn.errors import SgcnnError

# Methods whose pruning depends only on the layers' shapes, not on the trained weights: a target
# they cannot reach on some layer is known before training, by dry-running their steps.
SHAPE_ONLY_METHODS = ("groupconv", "kernel_l1", "l1filter")


class Runner(_TrainingPhase, _PruneEvaluate):
    """Runs ``config`` in ``run_dir`` (see the module docstring).

    Args:
        config: the resolved config.
        run_dir: the run folder; must be absent or empty unless ``resume``.
        resume: continue the run saved in ``run_dir`` (its config must match ``config``).
        quiet: no progress bars; one line per epoch and per stage still goes to stdout.
        meta: provenance for the report (command line, ...).
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | os.PathLike,
        resume: bool = False,
        quiet: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.quiet = quiet
        self.meta = dict(meta or {})
        self.plan = plan(config)
        self.rows: list[dict] = []
        self.stage = self.epoch = self.batch = 0
        self.grouper: SelfGrouper | None = None
        self._stop_request: StopRequest | None = None
        self._pending: dict[str, Any] | None = None  # phase state restored from state.pt
        self._ended = False  # the saved state's metrics already hold the "end" line
        self._resumed: dict[str, Any] | None = None  # the "resume" line to log, on rank 0
        self._lock: int | None = None  # the open lock on the run folder, while held
        self.log: MetricsLog | None = None  # the metrics log (rank 0, once the folder is open)
        # The training phase under way: its optimizer, schedule and best epoch so far.
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.best: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- driver

    def run(self) -> list[dict]:
        """Execute (or finish) the run; returns its result rows."""
        t = self.config.train
        if t.threads:
            torch.set_num_threads(t.threads)
        device = resolve_device(t.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.d = setup(device)
        self.precision = Precision.create(device, t.amp, t.channels_last)
        try:
            self._open()
            with StopRequest(on_first=self._stopping) as self._stop_request:
                self._execute()
            return self.rows
        except KeyboardInterrupt as err:
            if isinstance(err, RunInterrupted) or self._lock is None:
                raise
            raise RunInterrupted(  # a second Ctrl-C: no state saved now, the last one stays
                f"aborted: {self.run_dir} keeps the state saved last; continue with the same "
                f"command, --output {self.run_dir} and --resume"
            ) from None
        finally:
            if self.log is not None:
                self.log.close()
            if self._lock is not None:
                os.close(self._lock)  # releases the run folder
                self._lock = None
            teardown(self.d)

    def _main_only(self, fn):
        """``fn()`` on rank 0; its result, or its :class:`SgcnnError`, on every rank."""
        result, error = None, None
        if self.d.is_main:
            try:
                result = fn()
            except SgcnnError as err:
                error = str(err)
        result, error = broadcast_object(self.d, (result, error))
        if error is not None:
            raise SgcnnError(error)
        return result

    def _open(self) -> None:
        """Check the folder, build data and model, create the folder or restore the state."""
        cfg, t = self.config, self.config.train
        if self.resume:
            state, self._ended = self._main_only(self._read_state)
        else:
            self._main_only(lambda: check_new_run_dir(self.run_dir))
            state = None
        self.splits = build_data(cfg)
        if state is not None:
            check_same_data(state.get("data"), self.splits, str(self.run_dir))
        self.input_size = tuple(self.splits.input_size)
        if state is None:
            _seed_all(t.seed)  # identical initial weights on every rank
            model, self.kwargs = build_model(cfg, self.splits)
            self._check_grouping(model)
            _seed_all(t.seed * 1000 + 1 + self.d.rank)  # per-rank augmentation
        else:
            model, _, self.kwargs = ckpt.build_model(state["model"], str(self.run_dir))
        self._set_model(model)
        pin = self.precision.device.type == "cuda"
        self.train_loader = TrainLoader(
            self.splits.train, self.d, t.batch_size, t.workers, t.seed, pin, t.limit_batches
        )
        self.val_loader = eval_loader(self.splits.val, self.d, t.eval_batch_size, t.workers, pin)
        self.test_loader = eval_loader(self.splits.test, self.d, t.eval_batch_size, t.workers, pin)
        self.started = time.monotonic()
        self.last_save = self.started
        if state is None:
            self.elapsed_before = 0.0
            rng = gather_objects(self.d, rng_state())
            self._main_only(lambda: self._create(rng))
        else:
            self._restore(state)
        self._saved_at = (self.stage, self.epoch, self.batch)  # where the state on disk is
        self.log = MetricsLog(self.run_dir / METRICS_FILE, self._offset) if self.d.is_main else None

    def _check_grouping(self, model: torch.nn.Module) -> None:
        """Set up the run's pruner on a copy of the model before anything is trained or
        written, so that a grouping mistake (a pattern that matches nothing, a method that
        cannot apply) fails now and not after the baseline's epochs.

        For the methods of :data:`SHAPE_ONLY_METHODS` every prune step of the plan is also
        dry-run on a copy (each target from the unpruned model, as :meth:`_prune` does): a
        target such a method cannot reach fails here, not at the prune stage, where a resumed
        run would replay the same failure (its grouping settings cannot change on resume).
        ``sg`` and ``random`` depend on the trained weights (k-means) and are not dry-run."""
        prunes = [stage for stage in self.plan if stage.kind == "prune"]
        if not prunes:
            return
        if self.config.grouping.method not in SHAPE_ONLY_METHODS:
            self._new_pruner(copy.deepcopy(model))
            return
        pruner = None
        for stage in prunes:
            if pruner is None or stage.step == 1:  # each target starts from the baseline
                pruner = self._new_pruner(copy.deepcopy(model))
            try:
                pruner.step(stage.conv, stage.fc)
            except SgcnnError as err:
                raise SgcnnError(
                    f"{stage.row} cannot be run: {err}. (Checked before training: nothing was "
                    "trained or written, so the command can still change.)"
                ) from None

    def _read_state(self) -> tuple[dict, bool]:
        """The saved state, checked, and whether its metrics hold the "end" line (rank 0)."""
        require_run_dir(self.run_dir)
        self._lock = lock_run_dir(self.run_dir)
        state = load_state(self.run_dir)
        metrics = self.run_dir / METRICS_FILE
        check_metrics_length(metrics, state["metrics_offset"])
        records = read_metrics(metrics)
        failure = next((r for r in records if r.get("event") == FAILED), None)
        if failure is not None:
            raise SgcnnError(
                f"cannot resume {str(self.run_dir)!r}: it failed, and resuming would replay the "
                f"same steps into the same failure. {failure.get('message', '')}"
            )
        check_resume(self.run_dir, state["config"], self.config)
        saved_by = len(state["rng"])  # one random state per process of the run that saved it
        if saved_by != self.d.world:
            how = f"torchrun --nproc_per_node {saved_by} ..." if saved_by > 1 else "no torchrun"
            raise SgcnnError(
                f"cannot resume {str(self.run_dir)!r} with {self.d.world} process(es): it was "
                f"saved by {saved_by}, and the steps per epoch, the learning-rate schedule and "
                f"each process's random state depend on that; resume it with {saved_by} ({how})"
            )
        remove_stale_temporaries(self.run_dir)
        # Whether the "end" line is part of what the state accounts for: a run stopped after
        # its last stage was saved but before that line was written still needs it.
        saved = read_metrics(metrics, limit=state["metrics_offset"])
        ended = any(r.get("event") == "end" for r in saved)
        return state, ended

    def _create(self, rng: list) -> None:
        def write_initial(staging: Path) -> None:
            start = {
                "event": "start",
                "time": _now(),
                "world_size": self.d.world,
                **self.meta,
                "run": str(self.run_dir.resolve()),
                **run_facts(
                    self.config, self.splits, self.train_loader.steps_per_epoch, self.d.world
                ),
                "machine": provenance(),
            }
            line = (json.dumps(start) + "\n").encode()
            (staging / METRICS_FILE).write_bytes(line)
            self._offset = len(line)
            save_state(staging, self._state_dict(rng))  # written durably (fsynced)
            # On disk before the folder's rename publishes them (config.yaml is already there).
            for name in (CONFIG_FILE, METRICS_FILE):
                if (staging / name).is_file():
                    fsync_file(staging / name)

        create_run_dir(self.run_dir, self.config, write_initial)
        self._lock = lock_run_dir(self.run_dir)
        self._say(f"run folder {self.run_dir}")

    def _restore(self, state: dict) -> None:
        self.stage, self.epoch, self.batch = state["stage"], state["epoch"], state["batch"]
        self.rows = list(state["rows"])
        self.elapsed_before = float(state["elapsed"])
        self._offset = state["metrics_offset"]
        set_rng_state(state["rng"][self.d.rank])  # as many entries as processes (_read_state)
        if state["optimizer"] is not None or state["best"] is not None:
            self._pending = state
        where = "complete" if self.stage >= len(self.plan) else self.plan[self.stage].describe()
        self._say(f"resuming {self.run_dir}: {where}, epoch {self.epoch}, batch {self.batch}")
        if self.d.is_main:  # record where the resumed run starts (after truncation)
            self._resumed = {
                "event": "resume",
                "time": _now(),
                "stage": self.stage,
                "epoch": self.epoch,
                "batch": self.batch,
                **self.meta,
                "machine": provenance(),
            }

    def _execute(self) -> None:
        if self.log is not None and self._resumed:
            self.log.append(self._resumed)
        # "end" is recorded once, and covered by the last state (a resume keeps the line);
        # also when a stop came between the last stage's save and that line.
        ran = self.stage < len(self.plan) or not self._ended
        while self.stage < len(self.plan):
            stage = self.plan[self.stage]
            if self.batch == 0 and self.epoch == 0:
                self._say(f"[{self.stage + 1}/{len(self.plan)}] {stage.describe()}")
            if stage.kind == "prune":
                self._prune(stage)
            elif stage.kind == "evaluate":
                self._evaluate_row(stage)
            else:
                self._train_phase(stage)
            self.stage, self.epoch, self.batch = self.stage + 1, 0, 0
            self._pending = None
            self._save()
            self._check_stop()
        if ran:
            self._record({"event": "end", "time": _now(), "elapsed_s": self._elapsed()})
            self._save()
            self._ended = True
        if self.d.is_main:
            write_run_report(self.run_dir)
            self._say(f"report: {self.run_dir / 'report.md'}")

    # ----------------------------------------------------------------------------- helpers

    def _set_model(self, model: torch.nn.Module) -> None:
        self.model = self._place(model)

    def _place(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.precision.device)
        if self.precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _eval(self, loader) -> dict:
        if len(loader.dataset) == 0:
            return {"loss": None, "top1": None, "top5": None, "n": 0}
        return evaluate(self.model, loader, self.precision, self.d)

    def _state_dict(self, rng: list, sums: list | None = None) -> dict:
        optimizer, scheduler = self.optimizer, self.scheduler
        scaler = self.precision.scaler
        return {
            "config": config_to_dict(self.config),
            "stage": self.stage,
            "epoch": self.epoch,
            "batch": self.batch,
            "sums": sums,
            "best": self.best if optimizer is not None else None,
            "model": ckpt.model_payload(self.model, self.config.model.name, self.kwargs),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and optimizer else None,
            "rng": rng,
            "metrics_offset": self.log.offset if self.log is not None else self._offset,
            "rows": self.rows,
            "elapsed": self.elapsed_before + time.monotonic() - self.started,
            "done": self.stage >= len(self.plan),
            "data": data_record(self.splits),
        }

    def _save(self, sums: list | None = None) -> None:
        """Save the state (a collective: every rank contributes its RNG state)."""
        rng = gather_objects(self.d, rng_state())
        if self.d.is_main:
            save_state(self.run_dir, self._state_dict(rng, sums))
        self.last_save = time.monotonic()
        self._saved_at = (self.stage, self.epoch, self.batch)

    def _poll(self, nonfinite: torch.Tensor | None = None) -> tuple[bool, bool, bool]:
        """``(stop, checkpoint due, loss not finite)``, the same on every rank (``nonfinite``:
        a device flag, 1 when a loss on this rank was not finite since the last poll)."""
        every = self.config.train.save_every_min * 60
        due = every > 0 and time.monotonic() - self.last_save >= every
        stop = self._stop_request is not None and self._stop_request.requested
        bad = torch.zeros((), device=self.precision.device)
        if nonfinite is not None:
            bad = nonfinite.to(bad.dtype)
        if not self.d.enabled:
            return stop, due, bool(bad)
        flags = torch.tensor([float(stop), float(due and self.d.is_main)], device=bad.device)
        t = torch.cat([flags, bad[None]])
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t[0]), bool(t[1]), bool(t[2])

    def _check_stop(self) -> None:
        stop, _, _ = self._poll()
        if stop:
            self._interrupted()

    def _interrupted(self):
        where = self.plan[self.stage].describe() if self.stage < len(self.plan) else "the end"
        raise RunInterrupted(
            f"interrupted: state saved in {self.run_dir} ({where}, epoch {self.epoch}, batch "
            f"{self.batch}); continue with the same command, --output {self.run_dir} and "
            "--resume"
        )

    def _stopping(self) -> None:
        self._say("stopping: saving the state after this step (Ctrl-C again to abort)")

    def _record(self, record: dict) -> None:
        if self.log is not None:
            self.log.append(record)

    def _elapsed(self) -> float:
        """Seconds the run has been running, over all its processes so far."""
        return round(self.elapsed_before + time.monotonic() - self.started, 1)

    def _say(self, message: str) -> None:
        if self.d.is_main:
            tqdm.write(message)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
