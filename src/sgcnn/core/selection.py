"""Which layers are self-grouped.

Candidates are the ``Conv2d`` and ``Linear`` layers with more than one input channel per
filter (a depthwise convolution has nothing to group). As in the paper, two kinds are left
dense by default, both found from the model's structure (:mod:`sgcnn.core._graph`), not from
attribute names:

- **stems**: convolutions that read the network input with no other layer in between;
- **shortcut projections**: a convolution alone on one branch of a residual addition. The
  branch is followed through the data path in both directions: from the convolution forward
  through parameter-free ops and BatchNorm to the addition, and backward through them (average
  pooling, padding, BatchNorm: ResNet-D's ``AvgPool -> 1x1 conv``, timm's ``downsample``
  variants) to the point where it splits from the other operand. If no other Conv2d / Linear
  sits on the branch, the convolution is a shortcut projection (ResNet's 1x1 ``downsample``).
  Concatenations are not additions, so DenseNet's transitions stay self-grouped.

Users then narrow the set with ``include`` / ``exclude`` patterns (``fnmatch`` on qualified
names, e.g. ``"layer4.*"``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sgcnn.core._graph import Graph, trace_graph
from sgcnn.errors import SgcnnError


@dataclass(frozen=True)
class Selection:
    """The outcome of layer selection."""

    layers: list[str]  # qualified names to self-group, in model order
    stems: list[str]  # left dense: read the network input directly
    shortcuts: list[str]  # left dense: residual shortcut projections
    depthwise: list[str]  # skipped: one input channel per filter, nothing to group


def _has_nothing_to_group(layer: nn.Module) -> bool:
    return layer.weight.shape[1] == 1


# Parameter-free ops (and BatchNorm) followed along a branch, in each direction.
_MAX_HOPS = 4


def find_stems_and_shortcuts(graph: Graph) -> tuple[set[str], set[str]]:
    """Names of stem layers and of residual shortcut projections in ``graph``."""
    nodes = graph.nodes
    layer_nodes = [i for i, n in enumerate(nodes) if n.kind == "layer"]
    stems = set()
    for i in layer_nodes:
        if not any(nodes[a].kind == "layer" for a in graph.ancestors(i)):
            stems.add(nodes[i].target)

    users = graph.consumers()
    shortcuts = set()
    for i in layer_nodes:
        # Follow the layer's output through pass-through ops to the first addition.
        j, hops = i, 0
        while hops < _MAX_HOPS and len(users[j]) == 1 and nodes[users[j][0]].kind == "op":
            j, hops = users[j][0], hops + 1
        # The branch must end in the addition without feeding anything else.
        if len(users[j]) != 1 or nodes[users[j][0]].kind != "add" or not nodes[i].inputs:
            continue
        add = users[j][0]
        others = [k for k in nodes[add].inputs if k != j]
        if _branches_from(graph, users, nodes[i].inputs[0], others):
            shortcuts.add(nodes[i].target)
    return stems, shortcuts


def _branches_from(graph: Graph, users: dict[int, list[int]], source: int, others) -> bool:
    """Whether the data reaching a layer through ``source`` splits from the other operands
    ``others`` of an addition with no weighted layer in between: walk back from ``source``
    through ops that only feed this branch (pooling, padding, BatchNorm) until a node that is
    an ``other`` operand or one of its ancestors."""
    node, hops = source, 0
    while True:
        if any(k == node or node in graph.ancestors(k) for k in others):
            return True
        n = graph.nodes[node]
        if hops >= _MAX_HOPS or n.kind != "op" or len(n.inputs) != 1 or len(users[node]) != 1:
            return False
        node, hops = n.inputs[0], hops + 1


def _patterns(patterns, what: str) -> list[str]:
    """``patterns`` as a list of strings (one string is one pattern, not its characters)."""
    if patterns is None:
        return []
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise SgcnnError(f"{what} patterns must be strings, got {patterns!r}")
    return patterns


def select_layers(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    example_input: torch.Tensor | None = None,
    default_exclusions: bool = True,
) -> Selection:
    """Choose the layers of ``model`` to self-group (see the module docstring).

    Raises :class:`SgcnnError` when an ``include`` or ``exclude`` pattern matches no layer (a
    typo would otherwise prune what was meant to be kept) or when nothing is left to
    self-group. A single pattern may be given as a string.
    """
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    candidates = [
        (name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    depthwise = [name for name, m in candidates if _has_nothing_to_group(m)]
    names = [name for name, m in candidates if not _has_nothing_to_group(m)]
    stems: set[str] = set()
    shortcuts: set[str] = set()
    if default_exclusions and names:
        stems, shortcuts = find_stems_and_shortcuts(trace_graph(model, example_input))
    chosen = [n for n in names if n not in stems and n not in shortcuts]

    for pattern in include or ():
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise SgcnnError(
                f"include pattern {pattern!r} matches no Conv2d / Linear layer with more than "
                f"one input channel per filter; candidates are e.g. {', '.join(names[:6])}"
            )
    every = [name for name, _ in candidates]
    for pattern in exclude or ():
        if not any(fnmatch.fnmatchcase(n, pattern) for n in every):
            raise SgcnnError(
                f"exclude pattern {pattern!r} matches no Conv2d / Linear layer; layers are "
                f"e.g. {', '.join(every[:6])}"
            )
    if include:
        chosen = [n for n in chosen if any(fnmatch.fnmatchcase(n, p) for p in include)]
    if exclude:
        chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not chosen:
        why = "" if names else " (it has no Conv2d / Linear layer with more than one input channel)"
        raise SgcnnError(
            f"no layer of {type(model).__name__} is left to self-group{why}; "
            "check the include / exclude patterns"
        )
    return Selection(chosen, sorted(stems), sorted(shortcuts), depthwise)
