"""Checks shared by the one-shot alternatives to self-grouping (:mod:`sgcnn.core.alternatives`,
:mod:`sgcnn.core.filter_pruning`): they prune a dense, ungrouped layer once."""

from __future__ import annotations

from torch import nn

from sgcnn.errors import SgcnnError


def _require_dense(method: str, name: str, layer: nn.Module) -> None:
    if not bool(layer.sg_mask.all()):
        raise SgcnnError(
            f"method {method} prunes once from a dense layer, but {name!r} is already pruned "
            f"({layer.sparsity():.1%}); start from the unpruned model, or use method sg (it "
            "re-groups a pruned layer)"
        )


def _require_plain(method: str, name: str, layer: nn.Module) -> None:
    if getattr(layer, "groups", 1) != 1:
        raise SgcnnError(
            f"method {method} cannot regroup {name!r}, already a grouped convolution "
            f"(groups={layer.groups}); exclude it (grouping.exclude) or use method sg"
        )


class OneShot:
    """Mixin for the one-shot pruners (before :class:`~sgcnn.core.grouper.SelfGrouper` in the
    bases): their layers are checked when the pruner is built, so that a self-grouped source
    (a transfer, a second run on a pruned checkpoint) fails before any training, not at the
    first prune step. ``plain_only``: a grouped convolution cannot be regrouped either."""

    plain_only = True

    def _prepare(self) -> None:
        super()._prepare()
        for name, layer in self.layers.items():
            self._check_layer(name, layer)

    def _check_layer(self, name: str, layer: nn.Module) -> None:
        """The layer is dense (and plain, when ``plain_only``): checked when the pruner is
        built and again at its step (a second step of a one-shot pruner is refused)."""
        _require_dense(self.method, name, layer)
        if self.plain_only:
            _require_plain(self.method, name, layer)
