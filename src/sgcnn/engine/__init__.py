"""The training engine: train a baseline, self-group it, fine-tune it (G / LG / L), evaluate.

::

    from sgcnn.engine import Runner, load_recipe, resolve_config

    _, recipe = load_recipe("lenet5_mnist5k_demo")
    config = resolve_config(recipe, ["grouping.conv=[0.9]"])
    rows = Runner(config, "runs/mine").run()      # [{"name": "baseline", "top1": ...}, ...]

Modules: :mod:`~sgcnn.engine.config` (typed configs), :mod:`~sgcnn.engine.schemes` (the plan
of a run), :mod:`~sgcnn.engine.runner` (executes it, resumably), :mod:`~sgcnn.engine.loop`
(training step, evaluation), :mod:`~sgcnn.engine.optim`, :mod:`~sgcnn.engine.loaders`,
:mod:`~sgcnn.engine.distributed` (DDP), :mod:`~sgcnn.engine.state` and
:mod:`~sgcnn.engine.rundir` (what a run folder holds), :mod:`~sgcnn.engine.checkpoint`
(model checkpoints), :mod:`~sgcnn.engine.recipes`, :mod:`~sgcnn.engine.reporting`.
Names are imported on first use, so ``import sgcnn.engine.checkpoint`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Config": "sgcnn.engine.config",
    "resolve_config": "sgcnn.engine.config",
    "Runner": "sgcnn.engine.runner",
    "RunInterrupted": "sgcnn.engine.interrupt",
    "plan": "sgcnn.engine.schemes",
    "list_recipes": "sgcnn.engine.recipes",
    "load_recipe": "sgcnn.engine.recipes",
    "write_run_report": "sgcnn.engine.reporting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sgcnn.engine' has no attribute {name!r}")
