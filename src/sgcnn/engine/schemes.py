"""The fine-tuning schemes of docs/method.md section 1, step 5, as a flat plan of stages.

A run is a list of :class:`Stage` s executed in order; the training state records the index of
the current stage, which is all a resumed run needs to know where it is. For a config with
scheme ``LG``, targets ``conv = [0.25]`` and ``lg_step = 0.1`` the plan is::

    train     baseline                     (train.epochs; best epoch on validation)
    evaluate  baseline                     (test split -> row "baseline")
    prune     Conv-25/FC-25  step 1  0.10  (starts again from the best baseline)
    local     Conv-25/FC-25  step 1        (grouping.local_epochs)
    prune     Conv-25/FC-25  step 2  0.20
    local     Conv-25/FC-25  step 2
    prune     Conv-25/FC-25  step 3  0.25
    local     Conv-25/FC-25  step 3
    global    Conv-25/FC-25                (grouping.global_epochs; best epoch on validation)
    evaluate  Conv-25/FC-25                (test split -> row "Conv-25/FC-25")

``G`` has one prune stage (straight to the target) and the global fine-tune; ``L`` stops after
the last local fine-tune, whose best epoch (on validation) is the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from sgcnn.engine.config import Config

BASELINE = "baseline"


@dataclass(frozen=True)
class Stage:
    """One step of a run's plan."""

    kind: str  # train | evaluate | prune | local | global
    row: str  # the result row it works towards: "baseline" or "Conv-95/FC-95"
    epochs: int = 0  # train / local / global: epochs of the phase
    step: int = 0  # prune / local: pruning step of the row, from 1
    conv: float = 0.0  # prune: cumulative conv sparsity after this step
    fc: float = 0.0  # prune: cumulative FC sparsity after this step
    selects: bool = False  # train / local / global: its best validation epoch is the result

    def describe(self) -> str:
        """A short human-readable label, e.g. ``"prune Conv-95/FC-95 step 3 (30% / 30%)"``."""
        if self.kind == "prune":
            return f"prune {self.row} step {self.step} (conv {self.conv:.0%}, fc {self.fc:.0%})"
        if self.kind == "local":
            return f"local fine-tune {self.row} step {self.step}"
        if self.kind == "global":
            return f"global fine-tune {self.row}"
        return f"{self.kind} {self.row}"


def percent(value: float) -> str:
    """``0.95`` -> ``"95"``, ``0.975`` -> ``"97.5"``."""
    return f"{round(value * 100, 4):g}"


def row_name(conv: float, fc: float) -> str:
    """The paper's label of a result: ``Conv-95/FC-95``."""
    return f"Conv-{percent(conv)}/FC-{percent(fc)}"


def row_slug(row: str) -> str:
    """Folder name of a row: ``baseline``, ``conv95-fc95``."""
    return row.lower().replace("/", "-").replace("conv-", "conv").replace("fc-", "fc")


def targets(config: Config) -> list[tuple[float, float]]:
    """``[(conv, fc), ...]``: one pair per result row, FC defaulting to conv and capped."""
    g = config.grouping
    fcs = g.fc if g.fc is not None else g.conv
    pairs = []
    for conv, fc in zip(g.conv, fcs, strict=True):
        if g.fc_cap is not None:
            fc = min(fc, g.fc_cap)
        pairs.append((conv, fc))
    return pairs


def lg_steps(conv: float, fc: float, step: float) -> list[tuple[float, float]]:
    """Progressive sparsities ``step, 2 step, ...`` up to the target, conv and FC each capped.

    ``lg_steps(0.25, 0.25, 0.1)`` -> ``[(0.1, 0.1), (0.2, 0.2), (0.25, 0.25)]``; with an FC cap
    (``lg_steps(0.3, 0.15, 0.1)``) FC stops at its target while conv goes on.
    """
    top = max(conv, fc)
    levels, k = [], 1
    while round(k * step, 6) < top - 1e-9:
        levels.append(round(k * step, 6))
        k += 1
    levels.append(top)
    return [(min(p, conv), min(p, fc)) for p in levels]


def plan(config: Config) -> list[Stage]:
    """The stages of a run for ``config`` (see the module docstring)."""
    g = config.grouping
    stages = [
        Stage("train", BASELINE, epochs=config.train.epochs, selects=True),
        Stage("evaluate", BASELINE),
    ]
    if g.scheme == "baseline":
        return stages
    for conv, fc in targets(config):
        row = row_name(conv, fc)
        steps = [(conv, fc)] if g.scheme == "G" else lg_steps(conv, fc, g.lg_step)
        for i, (c, f) in enumerate(steps, start=1):
            stages.append(Stage("prune", row, step=i, conv=c, fc=f))
            if g.scheme != "G":
                last = i == len(steps)
                selects = g.scheme == "L" and last
                stages.append(Stage("local", row, g.local_epochs, step=i, selects=selects))
        if g.scheme in ("G", "LG"):
            stages.append(Stage("global", row, epochs=g.global_epochs, selects=True))
        stages.append(Stage("evaluate", row))
    return stages


def total_epochs(stages: list[Stage]) -> int:
    """Training epochs over the whole plan (the paper quotes e.g. 90 + 7 x 20 + 90)."""
    return sum(s.epochs for s in stages)
