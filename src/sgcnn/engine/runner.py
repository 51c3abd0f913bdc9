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

import datetime
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sgcnn.core.alternatives import create_pruner
from sgcnn.core.grouper import SelfGrouper
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.build import build_data, build_model
from sgcnn.engine.config import Config, OptimConfig, config_to_dict
from sgcnn.engine.distributed import (
    all_reduce_sums,
    broadcast_groups_,
    broadcast_object,
    gather_objects,
    resolve_device,
    setup,
    sync_buffers_,
    teardown,
)
from sgcnn.engine.health import (
    FAILED,
    TrainingDiverged,
    failure_message,
    finite,
    finite_weights,
)
from sgcnn.engine.interrupt import RunInterrupted, StopRequest
from sgcnn.engine.loaders import TrainLoader, eval_loader
from sgcnn.engine.loop import Precision, evaluate, masked_layers, train_step
from sgcnn.engine.optim import build_optimizer, build_scheduler, constant
from sgcnn.engine.reporting import provenance, run_facts, write_run_report
from sgcnn.engine.rundir import (
    check_new_run_dir,
    check_resume,
    create_run_dir,
    lock_run_dir,
    remove_stale_temporaries,
    require_run_dir,
)
from sgcnn.engine.schemes import BASELINE, Stage, plan, row_slug
from sgcnn.engine.state import (
    METRICS_FILE,
    MetricsLog,
    load_state,
    read_metrics,
    rng_state,
    save_state,
    set_rng_state,
)
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count

MODEL_FILE = "model.pt"


class Runner:
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
            if isinstance(err, RunInterrupted) or getattr(self, "_lock", None) is None:
                raise
            raise RunInterrupted(  # a second Ctrl-C: no state saved now, the last one stays
                f"aborted: {self.run_dir} keeps the state saved last; continue with the same "
                "command and --resume"
            ) from None
        finally:
            if getattr(self, "log", None) is not None:
                self.log.close()
            if getattr(self, "_lock", None) is not None:
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
            state = self._main_only(self._read_state)
        else:
            self._main_only(lambda: check_new_run_dir(self.run_dir))
            state = None
        self.splits = build_data(cfg)
        self.input_size = tuple(self.splits.input_size)
        if state is None:
            _seed_all(t.seed)  # identical initial weights on every rank
            model, self.kwargs = build_model(cfg, self.splits)
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

    def _read_state(self) -> dict:
        require_run_dir(self.run_dir)
        self._lock = lock_run_dir(self.run_dir)
        state = load_state(self.run_dir)
        records = read_metrics(self.run_dir / METRICS_FILE)
        failure = next((r for r in records if r.get("event") == FAILED), None)
        if failure is not None:
            raise SgcnnError(
                f"cannot resume {str(self.run_dir)!r}: it failed, and resuming would replay the "
                f"same steps into the same failure. {failure.get('message', '')}"
            )
        check_resume(self.run_dir, state["config"], self.config)
        remove_stale_temporaries(self.run_dir)
        return state

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
            save_state(staging, self._state_dict(rng))

        create_run_dir(self.run_dir, self.config, write_initial)
        self._lock = lock_run_dir(self.run_dir)
        self._say(f"run folder {self.run_dir}")

    def _restore(self, state: dict) -> None:
        self.stage, self.epoch, self.batch = state["stage"], state["epoch"], state["batch"]
        self.rows = list(state["rows"])
        self.elapsed_before = float(state["elapsed"])
        self._offset = state["metrics_offset"]
        rng = state["rng"]
        set_rng_state(rng[self.d.rank] if self.d.rank < len(rng) else rng[0])
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
        if self.log is not None and getattr(self, "_resumed", None):
            self.log.append(self._resumed)
        ran = self.stage < len(self.plan)
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
        if ran:  # recorded once, and covered by the last state (a resume keeps the line)
            self._record({"event": "end", "time": _now(), "elapsed_s": self._elapsed()})
            self._save()
        if self.d.is_main:
            write_run_report(self.run_dir)
            self._say(f"report: {self.run_dir / 'report.md'}")

    # ----------------------------------------------------------------------------- stages

    def _optim(self, stage: Stage) -> tuple[OptimConfig, float]:
        cfg = self.config
        if stage.kind == "train":
            return cfg.optim, cfg.optim.lr
        if stage.kind == "global":
            return cfg.finetune, cfg.finetune.lr
        return constant(cfg.finetune), cfg.grouping.local_lr or cfg.finetune.lr

    def _train_phase(self, stage: Stage) -> None:
        """Train / local / global: ``stage.epochs`` epochs with a fresh optimizer (or the one
        restored from the state), validation after each, the best kept if the stage selects."""
        pending, self._pending = self._pending, None
        self.best = pending["best"] if pending else None
        if pending and stage.selects:
            self._adopt_saved_best(stage)
        if stage.epochs == 0:
            if stage.selects:
                self._select(stage, 0, self._eval(self.val_loader))
            return
        o, lr = self._optim(stage)
        steps = self.train_loader.steps_per_epoch
        self.optimizer = build_optimizer(self.model, o, lr)
        self.scheduler = build_scheduler(self.optimizer, o, stage.epochs, steps)
        if pending and pending["optimizer"] is not None:
            self.optimizer.load_state_dict(pending["optimizer"])
            self.scheduler.load_state_dict(pending["scheduler"])
            if self.precision.scaler is not None and pending["scaler"] is not None:
                self.precision.scaler.load_state_dict(pending["scaler"])
        net = self.model
        if self.d.enabled:  # re-wrapped per phase: pruning replaced the mask buffers
            ids = [self.precision.device.index] if self.precision.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        sums = pending["sums"] if pending and self.batch > 0 else None
        for epoch in range(self.epoch, stage.epochs):
            begin = time.monotonic()
            lr = self.optimizer.param_groups[0]["lr"]  # at the start of the epoch
            loss, correct, n = self._train_epoch(net, stage, epoch, steps, sums)
            sums = None
            sync_buffers_(self.d, self.model)
            self._check_weights(stage, epoch)
            val = self._eval(self.val_loader)
            if not finite(val["loss"]):
                self._diverged(stage, epoch, f"the validation loss became {val['loss']}")
            best = self._select(stage, epoch + 1, val) if stage.selects else False
            record = {
                "event": "epoch",
                "stage": self.stage,
                "kind": stage.kind,
                "row": stage.row,
                "step": stage.step,
                "epoch": epoch + 1,
                "epochs": stage.epochs,
                "lr": lr,
                "train_loss": loss / max(n, 1),
                "train_top1": 100 * correct / max(n, 1),
                "val_loss": val["loss"],
                "val_top1": val["top1"],
                "val_top5": val["top5"],
                "best": best,
                "seconds": round(time.monotonic() - begin, 3),
                "time": _now(),
            }
            self._record(record)
            self.epoch, self.batch = epoch + 1, 0
            self._save()
            self._say(
                f"  {stage.row} {stage.kind} epoch {epoch + 1}/{stage.epochs}: "
                f"loss {record['train_loss']:.4f}, train {record['train_top1']:.2f}%, "
                f"{_val_text(val)}{' *' if best else ''} ({record['seconds']:.1f} s)"
            )
            self._check_stop()
        self.optimizer = self.scheduler = None

    def _train_epoch(self, net, stage: Stage, epoch: int, steps: int, sums: list | None):
        """The rest of ``epoch`` from batch ``self.batch`` on; returns ``[loss sum, correct,
        images]`` over all ranks (``sums`` carries those of the batches done before a resume).
        Saves the state when a checkpoint is due, and stops when asked to."""
        device = self.precision.device
        total = torch.tensor(sums or [0.0, 0.0, 0.0], dtype=torch.float64, device=device)
        masked = masked_layers(self.model)
        net.train()
        loader = self.train_loader.epoch(self.stage * 10_000 + epoch, self.batch)
        bar = self._bar(steps, self.batch, f"{stage.row} {stage.kind} {epoch + 1}")
        nonfinite = torch.zeros((), device=device)  # 1 once a step's loss was not finite
        with bar:
            for batch in loader:
                if self.batch >= steps:  # train.limit_batches reached
                    break
                step = train_step(
                    net, batch, self.optimizer, self.scheduler, self.precision, masked
                )
                total += step
                self.batch += 1
                bar.update(1)
                if self.batch % 10 == 0 and not bar.disable:
                    s = total.tolist()
                    bar.set_postfix(loss=f"{s[0] / s[2]:.3f}", acc=f"{100 * s[1] / s[2]:.1f}")
                # The loss check reads a device flag: on CUDA only every 16 steps (and at the
                # epoch's end), since each read waits for the GPU; the weights are checked
                # again before every save, so nothing non-finite is ever saved.
                nonfinite = torch.maximum(nonfinite, (~torch.isfinite(step[0])).to(nonfinite))
                if device.type == "cuda" and self.batch % 16 and self.batch < steps:
                    continue
                stop, due, bad = self._poll(nonfinite)
                if bad:
                    loss = (step[0] / step[2]).item()
                    self._diverged(stage, epoch, f"the training loss became {loss}")
                if stop or due:
                    self._check_weights(stage, epoch)
                    self._save(sums=total.tolist())
                if stop:
                    self._interrupted()
        return all_reduce_sums(self.d, total.tolist(), device)

    def _score(self, val: dict) -> float | None:
        """Higher is better; ``None`` (``train.select = last``, or no validation split)
        makes every epoch the new best."""
        if not val["n"] or self.config.train.select == "last":
            return None
        return val["top1"] if self.config.train.select == "val_top1" else -val["loss"]

    def _select(self, stage: Stage, epoch: int, val: dict) -> bool:
        """Keep the model as the row's result if it is the best of the phase by
        ``train.select`` on the validation split (ties go to the later epoch)."""
        score = self._score(val)
        known = None if self.best is None else self.best["score"]
        if score is not None and known is not None and score < known:
            return False
        self.best = {
            "score": score,
            "epoch": epoch,
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "val_loss": val["loss"],
        }
        if self.d.is_main:
            payload = ckpt.model_payload(self.model, self.config.model.name, self.kwargs)
            payload["selection"] = {
                "stage": self.stage,
                "select": self.config.train.select,
                **self.best,
            }
            payload["config"] = config_to_dict(self.config)
            ckpt.save_checkpoint(self.run_dir / row_slug(stage.row) / MODEL_FILE, payload)
        return True

    def _adopt_saved_best(self, stage: Stage) -> None:
        """After a crash, the row's ``model.pt`` may come from an epoch that the state does not
        know of (saved just before the crash): it is still the best model measured, keep it."""

        def saved() -> dict | None:
            path = self.run_dir / row_slug(stage.row) / MODEL_FILE
            return ckpt.load_checkpoint(path).get("selection") if path.is_file() else None

        selection = self._main_only(saved)
        if not selection or selection.get("stage") != self.stage:
            return
        score, known = selection.get("score"), None if self.best is None else self.best["score"]
        if self.best is None or (score is not None and known is not None and score >= known):
            keys = ("score", "epoch", "val_top1", "val_top5", "val_loss")
            self.best = {k: selection.get(k) for k in keys}

    def _prune(self, stage: Stage) -> None:
        g = self.config.grouping
        if stage.step == 1:  # each target starts again from the best baseline
            payload = self._main_only(lambda: self._load_row_model(BASELINE))
            model, _, _ = ckpt.build_model(payload, "baseline model")
            self._set_model(model)
            self.grouper = None
        if self.grouper is None:
            self.grouper = create_pruner(
                g.method,
                self.model,
                g.groups,
                g.seed,
                g.include or None,
                g.exclude or None,
                input_size=self.input_size,
            )
        begin = time.monotonic()
        report = self.grouper.step(stage.conv, stage.fc) if self.d.is_main else None
        broadcast_groups_(self.d, self.model)
        counts = count(self.model, self.input_size)
        record = {
            "event": "prune",
            "stage": self.stage,
            "row": stage.row,
            "step": stage.step,
            "method": g.method,
            "conv": stage.conv,
            "fc": stage.fc,
            "params": counts["params"],
            "flops": counts["flops"],
            "seconds": round(time.monotonic() - begin, 3),
            "time": _now(),
        }
        if report is not None:
            record["layers"] = [
                {"name": r.name, "groups": r.groups, "sparsity": round(r.sparsity, 6)}
                for r in report.layers
            ]
        self._record(record)
        self._say(
            f"  pruned to conv {stage.conv:.0%} / fc {stage.fc:.0%}: params "
            f"{counts['params']:,}, FLOPs {counts['flops']:,} ({record['seconds']:.1f} s)"
        )

    def _evaluate_row(self, stage: Stage) -> None:
        payload = self._main_only(lambda: self._load_row_model(stage.row))
        model, _, _ = ckpt.build_model(payload, f"{stage.row} model")
        model = self._place(model)
        test = evaluate(model, self.test_loader, self.precision, self.d)
        counts = count(model, self.input_size)
        selection = payload.get("selection", {})
        first = stage.row == BASELINE
        row = {
            "name": self.config.report.baseline_name if first else stage.row,
            "params": counts["params"],
            "flops": counts["flops"],
            "top1": round(test["top1"], 4),
            "top5": round(test["top5"], 4),
            "val_top1": selection.get("val_top1"),
            "epoch": selection.get("epoch"),
            "scheme": "baseline" if stage.row == BASELINE else self.config.grouping.scheme,
            "method": "none" if stage.row == BASELINE else self.config.grouping.method,
            "checkpoint": f"{row_slug(stage.row)}/{MODEL_FILE}",
        }
        self.rows.append(row)
        self._record({"event": "row", **row, "test_images": test["n"], "time": _now()})
        self._say(
            f"  {stage.row}: Top-1 {row['top1']:.2f}%, Top-5 {row['top5']:.2f}% on "
            f"{test['n']} test images; params {row['params']:,}, FLOPs {row['flops']:,}"
        )

    def _load_row_model(self, row: str) -> dict:
        path = self.run_dir / row_slug(row) / MODEL_FILE
        if not path.is_file():
            raise SgcnnError(f"{path} is missing: the run folder was altered; start a new run")
        return ckpt.load_checkpoint(path)

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
        optimizer = getattr(self, "optimizer", None)
        scheduler = getattr(self, "scheduler", None)
        scaler = self.precision.scaler
        return {
            "config": config_to_dict(self.config),
            "stage": self.stage,
            "epoch": self.epoch,
            "batch": self.batch,
            "sums": sums,
            "best": getattr(self, "best", None) if optimizer is not None else None,
            "model": ckpt.model_payload(self.model, self.config.model.name, self.kwargs),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and optimizer else None,
            "rng": rng,
            "metrics_offset": self.log.offset if getattr(self, "log", None) else self._offset,
            "rows": self.rows,
            "elapsed": self.elapsed_before + time.monotonic() - self.started,
            "done": self.stage >= len(self.plan),
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
            f"{self.batch}); continue with the same command and --resume"
        )

    def _check_weights(self, stage: Stage, epoch: int) -> None:
        """Stop before saving weights that are not all finite (every rank agrees)."""
        bad = 0.0 if finite_weights(self.model) else 1.0
        if all_reduce_sums(self.d, [bad], self.precision.device)[0] > 0:
            self._diverged(stage, epoch, "a weight became non-finite")

    def _diverged(self, stage: Stage, epoch: int, what: str) -> None:
        """Record the failure, write the report, raise :class:`TrainingDiverged`; nothing of
        the diverged model is saved."""
        _, lr = self._optim(stage)  # the peak rate: the one to lower
        saved_stage, saved_epoch, saved_batch = self._saved_at
        kept = f"{self.plan[saved_stage].describe()}, " + (
            f"after epoch {saved_epoch}"
            if saved_batch == 0
            else f"epoch {saved_epoch + 1}, step {saved_batch}"
        )
        if (saved_stage, saved_epoch, saved_batch) == (0, 0, 0):
            kept = "the initial weights"
        where = f"{stage.describe()}, epoch {epoch + 1}, step {self.batch}"
        message = failure_message(what, where, lr, stage.kind, kept)
        self._record(
            {
                "event": FAILED,
                "stage": self.stage,
                "kind": stage.kind,
                "row": stage.row,
                "epoch": epoch + 1,
                "batch": self.batch,
                "lr": lr,
                "lr_at_step": self.optimizer.param_groups[0]["lr"],
                "reason": what,
                "message": message,
                "elapsed_s": self._elapsed(),
                "time": _now(),
            }
        )
        if self.d.is_main:
            write_run_report(self.run_dir)
        raise TrainingDiverged(message)

    def _stopping(self) -> None:
        self._say("stopping: saving the state after this step (Ctrl-C again to abort)")

    def _record(self, record: dict) -> None:
        if self.log is not None:
            self.log.append(record)

    def _bar(self, total: int, initial: int, desc: str) -> tqdm:
        """A progress bar over an epoch's steps (disabled when quiet, and on ranks > 0)."""
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            leave=False,
            dynamic_ncols=True,
            disable=self.quiet or not self.d.is_main,
        )

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


def _val_text(val: dict) -> str:
    return f"val {val['top1']:.2f}%" if val["n"] else "no validation split"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
