"""One recursive module-swap helper driven by a filter function."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules_(
    model: nn.Module,
    filter_fn: Callable[[nn.Module, str], bool],
    replace_fn: Callable[[nn.Module, str], nn.Module],
    prefix: str = "",
) -> list[str]:
    """Replace, in place, every submodule ``m`` named ``name`` with ``filter_fn(m, name)`` true
    by ``replace_fn(m, name)``; returns the qualified names replaced.

    Replaced modules are not searched further. The root module itself is never replaced.
    """
    replaced = []
    for child_name, child in list(model.named_children()):
        name = f"{prefix}.{child_name}" if prefix else child_name
        if filter_fn(child, name):
            setattr(model, child_name, replace_fn(child, name))
            replaced.append(name)
        else:
            replaced += replace_modules_(child, filter_fn, replace_fn, name)
    return replaced
