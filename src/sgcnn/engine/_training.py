"""The training phase of a run: epochs, best-epoch selection, health checks.

:class:`_TrainingPhase` is a part of :class:`~sgcnn.engine.runner.Runner` (which sets every
attribute used here): a train / local / global stage runs ``stage.epochs`` epochs with its own
optimizer and schedule, validates after each, and, if the stage selects, keeps the epoch that
``train.select`` ranks best on the validation split as the row's ``model.pt``. A non-finite
loss or weight stops the run before anything of the diverged model is saved.
"""

from __future__ import annotations

import datetime
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sgcnn.data.config import data_record
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine.config import OptimConfig, config_to_dict
from sgcnn.engine.distributed import all_reduce_sums, sync_buffers_
from sgcnn.engine.health import FAILED, TrainingDiverged, failure_message, finite, finite_weights
from sgcnn.engine.loop import masked_layers, train_step
from sgcnn.engine.optim import build_optimizer, build_scheduler, constant, lr_factor
from sgcnn.engine.reporting import write_run_report
from sgcnn.engine.schemes import Stage, row_slug

MODEL_FILE = "model.pt"


class _TrainingPhase:
    """Train / local / global stages of :class:`~sgcnn.engine.runner.Runner`."""

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
        peak = self.optimizer.defaults["lr"]
        if pending and pending["optimizer"] is not None:
            self.optimizer.load_state_dict(pending["optimizer"])
            self.scheduler.load_state_dict(pending["scheduler"])
            if self.precision.scaler is not None and pending["scaler"] is not None:
                self.precision.scaler.load_state_dict(pending["scaler"])
        net = self.model
        if self.d.enabled:  # re-wrapped per phase: pruning replaced the mask buffers
            ids = [self.precision.device.index] if self.precision.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=ids)
        # The saved sums are over all ranks (see _train_epoch): one rank carries them on.
        sums = pending["sums"] if pending and self.batch > 0 and self.d.is_main else None
        for epoch in range(self.epoch, stage.epochs):
            begin = time.monotonic()
            rate = peak * lr_factor(o, epoch, stage.epochs)  # at the epoch's first step,
            # also when the epoch resumes part-way (the scheduler is then past that step)
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
                "lr": rate,
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
        images]`` over all ranks (``sums``: those of the batches done before a resume, over
        all ranks, given to one rank only).
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
                    self._save(sums=all_reduce_sums(self.d, total.tolist(), device))
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
            payload["data"] = data_record(self.splits)  # labels and normalisation, for eval
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

    def _bar(self, total: int, initial: int, desc: str) -> tqdm:
        """A progress bar over an epoch's steps, on a terminal only: disabled when quiet, on
        ranks > 0, and when stderr is redirected (a log file gets the one line per epoch, not
        the bar's carriage-return updates)."""
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            leave=False,
            dynamic_ncols=True,
            disable=self.quiet or not self.d.is_main or not sys.stderr.isatty(),
        )


def _val_text(val: dict) -> str:
    return f"val {val['top1']:.2f}%" if val["n"] else "no validation split"


def _now() -> str:
    """The current UTC time, ISO 8601 to the second (the metrics log's ``time``)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
