"""Checks shared by the one-shot alternatives to self-grouping (:mod:`sgcnn.core.alternatives`,
:mod:`sgcnn.core.filter_pruning`): they prune a dense, ungrouped layer once."""

from __future__ import annotations

from torch import nn

from sgcnn.errors import SgcnnError


def _require_dense(method: str, name: str, layer: nn.Module) -> None:
    if not bool(layer.sg_mask.all()):
        raise SgcnnError(
            f"method {method} prunes once from a dense layer, but {name!r} is already pruned "
            f"({layer.sparsity():.1%}); use the G scheme, starting from the unpruned model"
        )


def _require_plain(method: str, name: str, layer: nn.Module) -> None:
    if getattr(layer, "groups", 1) != 1:
        raise SgcnnError(
            f"method {method} cannot regroup {name!r}, already a grouped convolution "
            f"(groups={layer.groups}); exclude it (grouping.exclude) or use method sg"
        )
