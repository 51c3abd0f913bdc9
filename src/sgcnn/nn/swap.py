"""One recursive module-swap helper driven by a filter function."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules_(
    model: nn.Module,
    filter_fn: Callable[[nn.Module, str], bool],
    replace_fn: Callable[[nn.Module, str], nn.Module],
    prefix: str = "",
    _decided: dict | None = None,
) -> list[str]:
    """Replace, in place, every submodule ``m`` named ``name`` with ``filter_fn(m, name)`` true
    by ``replace_fn(m, name)``; returns the qualified names replaced.

    Replaced modules are not searched further. The root module itself is never replaced. A
    module reachable by several names (``self.alias = self.body``, or one module in two
    parents) is decided once, at its first name in ``model.named_modules()`` order, and, if
    replaced, every reference gets the same replacement: the names stay one module.
    """
    # id -> (module, its replacement or None); the root is never replaced
    decided = {id(model): (model, None)} if _decided is None else _decided
    replaced = []
    for child_name, child in list(model._modules.items()):
        if child is None:
            continue
        name = f"{prefix}.{child_name}" if prefix else child_name
        if id(child) in decided:  # a further name of a module seen already
            new = decided[id(child)][1]
            if new is not None:
                setattr(model, child_name, new)
                replaced.append(name)
        elif filter_fn(child, name):
            new = replace_fn(child, name)
            decided[id(child)] = (child, new)  # the module stays alive: its id is not reused
            setattr(model, child_name, new)
            replaced.append(name)
        else:
            decided[id(child)] = (child, None)
            replaced += replace_modules_(child, filter_fn, replace_fn, name, decided)
    return replaced
