"""The CIFAR-10 study's rows and run states, shared by ``cifar10_study.py`` (which runs them)
and ``_study_collect.py`` (which tabulates them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPARSITIES = (0.5, 0.7)
STUDY_FILE = "study.json"
FINETUNE_RECIPE = "resnet20_cifar10_finetune"
START_FILE = "start_weights.json"  # `pack`: the digest of a run's baseline/model.pt, left out
LG_STEP, LOCAL_EPOCHS = 0.1, 1  # LG rows: pruning step, and local epochs after each step


@dataclass(frozen=True)
class Row:
    """One fine-tune run of the study."""

    method: str
    scheme: str
    conv: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-{self.scheme}-conv{round(self.conv * 100)}-s{self.seed}"


def study_rows() -> list[Row]:
    """All fine-tune rows, longest first (LG at the highest sparsity has the most epochs)."""
    rows = []
    for conv in sorted(SPARSITIES, reverse=True):
        rows += [Row("sg", "LG", conv, s) for s in (0, 1)]
    for conv in sorted(SPARSITIES, reverse=True):
        rows += [Row("sg", "G", conv, s) for s in (0, 1)]
        rows += [Row("groupconv", "G", conv, s) for s in (0, 1)]
        rows += [Row(m, "G", conv, 0) for m in ("random", "l1filter", "kernel_l1")]
    return rows


def budget_sets(row: Row, ft_epochs: int) -> list[str]:
    """Every row trains ``ft_epochs`` epochs after pruning: a G row all in its global fine-tune,
    an LG row ``LOCAL_EPOCHS`` after each of its steps and the rest in its global fine-tune."""
    if row.scheme != "LG":
        return [f"grouping.global_epochs={ft_epochs}"]
    from sgcnn.engine.schemes import lg_steps

    local = len(lg_steps(row.conv, 0.0, LG_STEP)) * LOCAL_EPOCHS
    return [
        f"grouping.lg_step={LG_STEP}",
        f"grouping.local_epochs={LOCAL_EPOCHS}",
        f"grouping.global_epochs={ft_epochs - local}",
    ]


def finished(run_dir: Path) -> bool:
    """A run is complete once its report is written (the last thing a run does)."""
    return (run_dir / "report.json").is_file()


def diverged(run_dir: Path) -> bool:
    """A finished run that stopped on a non-finite loss (its metrics record a ``failed``
    event): its report exists, but its model is no result."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return False
    return any('"event": "failed"' in line for line in metrics.read_text().splitlines())


def launches(entry: dict) -> list[dict]:
    """A run's launches as the driver recorded them in ``study.json``, oldest first: each a
    machine record with ``event`` (start / resume) and the commit (``git``). An older study
    kept only the last launch's record (``machine``): that one, as ``event`` "launch"."""
    if isinstance(entry.get("machines"), list):
        return list(entry["machines"])
    old = entry.get("machine")
    return [{"event": "launch", **old}] if isinstance(old, dict) else []
