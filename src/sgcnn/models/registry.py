"""Model registry: ``create_model(name)`` / ``list_models()``.

Each entry records how to build the model and what it expects: its default number of classes
and its default input size ``(channels, height, width)``, which ``sgcnn count`` and the
pipeline use when the user gives none, and the training settings it needs (``defaults``, a
partial recipe such as ``{"data": {"name": "cifar10"}, "optim": {"lr": 0.1}}``): a run
config takes them over the library defaults, and below its recipe and ``--set`` options, so
that ``sgcnn train --model NAME`` with no other option trains on the model's own dataset at a
learning rate it converges with.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sgcnn.errors import SgcnnError


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it, its default class count and input size, where it
    comes from (``sgcnn``, ``torchvision``) and the run-config defaults that train it."""

    name: str
    builder: Callable[..., nn.Module]  # builder(num_classes=..., **kwargs) -> nn.Module
    num_classes: int  # default number of classes
    input_size: tuple[int, int, int]  # default input (channels, height, width)
    source: str  # "sgcnn" for the zoo, "torchvision" for torchvision's models
    defaults: Mapping[str, Any] = field(default_factory=dict)  # partial recipe (run config)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    num_classes: int,
    input_size: tuple[int, int, int],
    source: str = "sgcnn",
    defaults: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(num_classes=..., **kwargs)`` under ``name``, with the
    run-config ``defaults`` that train it (see the module docstring)."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise SgcnnError(f"model {name!r} is registered already; choose another name")
        entry = ModelEntry(name, builder, num_classes, tuple(input_size), source, defaults or {})
        _REGISTRY[name] = entry
        return builder

    return decorator


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names raise :class:`SgcnnError` with suggestions."""
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise SgcnnError(
            f"unknown model {name!r}.{hint} Run 'sgcnn models' (or sgcnn.list_models()) "
            "for the full list."
        )
    return _REGISTRY[name]


def create_model(name: str, num_classes: int | None = None, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with random weights.

    ``num_classes`` defaults to the model's own (10 for the MNIST / CIFAR-10 zoo, 1000 for
    torchvision's ImageNet models); other keyword arguments go to the builder.
    """
    entry = model_entry(name)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise SgcnnError(f"num_classes must be a positive integer, got {num_classes!r}")
    try:
        return entry.builder(num_classes=num_classes or entry.num_classes, **kwargs)
    except TypeError as err:
        raise SgcnnError(f"cannot build model {name!r} with arguments {kwargs}: {err}") from err


def list_models(source: str | None = None) -> list[str]:
    """Names of all registered models (optionally only those of one ``source``), sorted."""
    _ensure_loaded()
    return sorted(n for n, e in _REGISTRY.items() if source is None or e.source == source)


def _ensure_loaded() -> None:
    # Importing the zoo registers its models; done lazily to keep `import sgcnn` light.
    from sgcnn.models import zoo  # noqa: F401
