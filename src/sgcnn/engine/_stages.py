"""The prune and evaluate stages of a run.

:class:`_PruneEvaluate` is a part of :class:`~sgcnn.engine.runner.Runner` (which sets every
attribute used here). A prune stage self-groups the model one step (rank 0 clusters, the
masks are broadcast); the first step of each target starts again from the best baseline. An
evaluate stage measures a row's selected ``model.pt`` on the test split and counts its Params
and FLOPs.
"""

from __future__ import annotations

import time

from sgcnn.core.alternatives import create_pruner
from sgcnn.engine import checkpoint as ckpt
from sgcnn.engine._training import MODEL_FILE, _now
from sgcnn.engine.distributed import broadcast_groups_
from sgcnn.engine.loop import evaluate
from sgcnn.engine.schemes import BASELINE, Stage, row_slug
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count


class _PruneEvaluate:
    """Prune and evaluate stages of :class:`~sgcnn.engine.runner.Runner`."""

    def _new_pruner(self, model):
        """The run's pruner (``grouping.method``, its layers and seed) over ``model``."""
        g = self.config.grouping
        return create_pruner(
            g.method,
            model,
            groups=g.groups,
            seed=g.seed,
            include=g.include or None,
            exclude=g.exclude or None,
            input_size=self.input_size,
        )

    def _prune(self, stage: Stage) -> None:
        g = self.config.grouping
        if stage.step == 1:  # each target starts again from the best baseline
            payload = self._main_only(lambda: self._load_row_model(BASELINE))
            model, _, _ = ckpt.build_model(payload, "baseline model")
            self._set_model(model)
            self.grouper = None
        if self.grouper is None:
            self.grouper = self._new_pruner(self.model)
        begin = time.monotonic()
        report = self._main_only(lambda: self._step(stage))  # an error reaches every rank
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

    def _step(self, stage: Stage):
        """Rank 0's pruning step; a target the method cannot reach says how to go on."""
        try:
            return self.grouper.step(stage.conv, stage.fc)
        except SgcnnError as err:
            g = self.config.grouping
            baseline = self.run_dir / row_slug(BASELINE) / MODEL_FILE
            raise SgcnnError(
                f"{stage.describe()} failed: {err}. This run cannot finish (--resume would "
                "replay this step, and its grouping settings cannot change); its trained "
                f"baseline is {baseline}: prune it with settings that work in a new run "
                f"folder, e.g. sgcnn finetune --checkpoint {baseline} --conv <reachable "
                f"target> --set grouping.method={g.method} --output <new folder> (--recipe "
                "for this run's recipe), or start this run again in a new folder"
            ) from None

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
            "top5": None if test["top5"] is None else round(test["top5"], 4),
            "val_top1": selection.get("val_top1"),
            "epoch": selection.get("epoch"),
            "scheme": "baseline" if stage.row == BASELINE else self.config.grouping.scheme,
            "method": "none" if stage.row == BASELINE else self.config.grouping.method,
            "checkpoint": f"{row_slug(stage.row)}/{MODEL_FILE}",
        }
        self.rows.append(row)
        self._record({"event": "row", **row, "test_images": test["n"], "time": _now()})
        top5 = "" if row["top5"] is None else f", Top-5 {row['top5']:.2f}%"
        self._say(
            f"  {stage.row}: Top-1 {row['top1']:.2f}%{top5} on "
            f"{test['n']} test images; params {row['params']:,}, FLOPs {row['flops']:,}"
        )

    def _load_row_model(self, row: str) -> dict:
        path = self.run_dir / row_slug(row) / MODEL_FILE
        if not path.is_file():
            raise SgcnnError(f"{path} is missing: the run folder was altered; start a new run")
        return ckpt.load_checkpoint(path)
