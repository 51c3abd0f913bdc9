"""Which layers are self-grouped.

Candidates are the ``Conv2d`` and ``Linear`` layers with more than one input channel per
filter (a depthwise convolution has nothing to group). As in the paper, two kinds are left
dense by default, both found from the model's structure (:mod:`sgcnn.core._graph`), not from
attribute names:

- **stems**: convolutions that read the network input with no other layer in between;
- **shortcut projections**: a 1x1 convolution (or a Linear layer) alone on one branch of a
  residual addition whose other operand is a main path of at least two weighted layers, as
  ResNet's ``downsample`` beside its two or three convolutions. The branch is followed through
  the data path in both directions: from the convolution forward through parameter-free ops and
  BatchNorm to the addition, and backward through them (average pooling, padding, BatchNorm:
  ResNet-D's ``AvgPool -> 1x1 conv``, timm's ``downsample`` variants) to the point where it
  splits from the other operand; the main path is the Conv2d / Linear layers between that
  point and the addition. So a residual body of one convolution beside the identity (EDSR's
  ``x + bn(conv(x))``, a single-convolution FusedMBConv) is self-grouped, and so are both
  convolutions of a RepVGG training block, ``bn(conv3x3(x)) + bn(conv1x1(x)) + bn(x)``: its
  1x1 branch is a parallel body branch beside a one-layer path (merged into the 3x3 kernel at
  deployment), not a shortcut, in whatever order the terms are summed. Concatenations are not
  additions, so DenseNet's transitions stay self-grouped.

Layers a masked layer cannot stand in for are left dense and listed in ``skipped`` with the
reason, with one warning: a subclass with its own forward or a parametrized layer
(:func:`sgcnn.nn.masked.why_not_maskable`); a layer whose weight its parent applies itself
(``nn.MultiheadAttention``'s ``out_proj``, ``nn.TransformerEncoderLayer``'s ``linear1`` /
``linear2`` (its inference fast path), torchvision Swin's ``qkv`` / ``proj``, and, seen in the
traced graph or the example run, any layer whose weight reaches a torch function while its own
forward never runs); a layer whose weight Parameter another module holds too (tied
weights). A module reachable by several names is swapped at every reference
(:func:`sgcnn.nn.swap.replace_modules_`) and named by its first.

Users then narrow the set with ``include`` / ``exclude`` patterns (``fnmatch`` on qualified
names, e.g. ``"layer4.*"``).
"""

from __future__ import annotations

import fnmatch
import sys
import warnings
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from sgcnn.core._graph import Graph, trace_graph
from sgcnn.errors import SgcnnError
from sgcnn.nn.masked import why_not_maskable

_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Selection:
    """The outcome of layer selection."""

    layers: list[str]  # qualified names to self-group, in model order
    stems: list[str]  # left dense: read the network input directly
    shortcuts: list[str]  # left dense: residual shortcut projections
    depthwise: list[str]  # skipped: one input channel per filter, nothing to group
    skipped: dict[str, str] = field(default_factory=dict)  # left dense: name -> why unmaskable


def _has_nothing_to_group(layer: nn.Module) -> bool:
    return layer.weight.shape[1] == 1


# Parameter-free ops (and BatchNorm) followed along a branch, in each direction.
_MAX_HOPS = 4
_MAIN_PATH = 2  # weighted layers beside a projection: ResNet's basic block has two


def find_stems_and_shortcuts(
    graph: Graph, pointwise: Collection[str] | None = None
) -> tuple[set[str], set[str]]:
    """Names of stem layers and of residual shortcut projections in ``graph``; ``pointwise``
    names the layers that can be projections (1x1 convolutions, Linear layers; None: all)."""
    nodes = graph.nodes
    layer_nodes = [i for i, n in enumerate(nodes) if n.kind == "layer"]
    stems = set()
    for i in layer_nodes:
        if not any(nodes[a].kind == "layer" for a in graph.ancestors(i)):
            stems.add(nodes[i].target)

    users = graph.consumers()
    shortcuts = set()
    for i in layer_nodes:
        if pointwise is not None and nodes[i].target not in pointwise:
            continue
        # Follow the layer's output through pass-through ops to the first addition.
        j, hops = i, 0
        while hops < _MAX_HOPS and len(users[j]) == 1 and nodes[users[j][0]].kind == "op":
            j, hops = users[j][0], hops + 1
        # The branch must end in the addition without feeding anything else.
        if len(users[j]) != 1 or nodes[users[j][0]].kind != "add" or not nodes[i].inputs:
            continue
        add = users[j][0]
        others = [k for k in nodes[add].inputs if k != j]
        split = _split_point(graph, users, nodes[i].inputs[0], others)
        if split is not None and _main_path_layers(graph, users, split, others) >= _MAIN_PATH:
            shortcuts.add(nodes[i].target)
    return stems, shortcuts


def _split_point(graph: Graph, users: dict[int, list[int]], source: int, others) -> int | None:
    """Where the data reaching a layer through ``source`` splits from the other operands
    ``others`` of an addition with no weighted layer in between, or None: walk back from
    ``source`` through ops that only feed this branch (pooling, padding, BatchNorm) until a node
    that is an ``other`` operand or one of its ancestors."""
    node, hops = source, 0
    while True:
        if any(k == node or node in graph.ancestors(k) for k in others):
            return node
        n = graph.nodes[node]
        if hops >= _MAX_HOPS or n.kind != "op" or len(n.inputs) != 1 or len(users[node]) != 1:
            return None
        node, hops = n.inputs[0], hops + 1


def _main_path_layers(graph: Graph, users: dict[int, list[int]], split: int, others) -> int:
    """How many weighted layers lie between ``split`` and the operands ``others``."""
    after, stack = set(), list(users[split])
    while stack:
        i = stack.pop()
        if i not in after:
            after.add(i)
            stack.extend(users[i])
    before = set(chain(others, *(graph.ancestors(k) for k in others)))
    return sum(graph.nodes[i].kind == "layer" for i in after & before)


class _WeightUse(TorchFunctionMode):
    """Which layers' weights a torch function received during a forward pass, and which layers'
    own forward ran (the technique of :mod:`sgcnn.metrics.counting`)."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.weights = [m.weight for m in layers.values()]  # kept alive: ids stay unique
        self.owner = {id(m.weight): name for name, m in layers.items()}
        self.layers, self.used, self.called = layers, set(), set()

    def __enter__(self):
        self.handles = [
            m.register_forward_pre_hook(lambda *_, n=n: self.called.add(n))
            for n, m in self.layers.items()
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for value in chain(args, kwargs.values()):
            for t in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(t, torch.Tensor) and id(t) in self.owner:
                    self.used.add(self.owner[id(t)])
        return func(*args, **kwargs)


_ELSEWHERE = "its weight is used outside its forward (e.g. F.linear(x, layer.weight)), unmasked"


def _unmaskable(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, str]:
    """``{name: why}`` for the ``layers`` a masked layer cannot stand in for, as far as the
    model's structure tells (see the module docstring)."""
    # nn.TransformerEncoderLayer's eval fast path hands linear1 / linear2's weights to one op
    applying = [nn.MultiheadAttention, nn.TransformerEncoderLayer]
    swin = sys.modules.get("torchvision.models.swin_transformer")
    for kind in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2"):
        applying += [getattr(swin, kind)] if hasattr(swin, kind) else []
    parents = {
        id(child): type(m).__name__
        for m in model.modules()
        if isinstance(m, tuple(applying))
        for child in m.children()
    }
    owners: dict[int, list[str]] = {}
    for prefix, m in model.named_modules():
        for name, p in m._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{prefix}.{name}" if prefix else name)
    why = {}
    for name, m in layers.items():
        weight = m._parameters.get("weight")  # None under the old-style weight_norm
        holders = [o for o in owners.get(id(weight), []) if o != f"{name}.weight"]
        if (reason := why_not_maskable(m)) is not None:
            why[name] = reason
        elif id(m) in parents:
            why[name] = f"{parents[id(m)]} applies its weight itself, not through its forward"
        elif holders:
            why[name] = f"its weight is also {holders[0]} (tied): masking would prune both"
    return why


def check_model(model: nn.Module) -> None:
    """Raise :class:`SgcnnError` for a model whose layers cannot be selected: a bare layer as
    the root (it cannot replace itself) or uninitialised (lazy) parameters."""
    if isinstance(model, _LAYERS):
        raise SgcnnError(
            f"the model is a single {type(model).__name__} layer, which cannot be replaced in "
            "place: wrap it, e.g. nn.Sequential(layer), and self-group the wrapper (a lone "
            "layer reads the input, so it is a stem: pass default_exclusions=False)"
        )
    tensors = chain(model.named_parameters(), model.named_buffers())
    lazy = [name for name, t in tensors if is_lazy(t)]
    if lazy:
        raise SgcnnError(
            f"{type(model).__name__} has uninitialised (lazy) parameters ({', '.join(lazy[:3])}):"
            " run it once on an example input to initialise them, then self-group it"
        )


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

    Raises :class:`SgcnnError` for a model :func:`check_model` refuses, when an ``include`` or
    ``exclude`` pattern matches no layer (a typo would otherwise prune what was meant to be
    kept) or when nothing is left to self-group. A single pattern may be given as a string.
    Warns once naming the layers left dense because they cannot be masked (``skipped``).
    """
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    check_model(model)
    candidates = {name: m for name, m in model.named_modules() if isinstance(m, _LAYERS)}
    depthwise = [name for name, m in candidates.items() if _has_nothing_to_group(m)]
    names = [name for name, m in candidates.items() if not _has_nothing_to_group(m)]
    unmaskable = _unmaskable(model, {n: candidates[n] for n in names})
    stems: set[str] = set()
    shortcuts: set[str] = set()
    if names and (default_exclusions or example_input is not None):
        use = _WeightUse({n: candidates[n] for n in names})
        with use if example_input is not None else nullcontext():
            graph = trace_graph(model, example_input)
        called = {n.target for n in graph.nodes if n.kind == "layer"} | use.called
        fetched = {n.target for n in graph.nodes if n.kind == "op"}  # fx: get_attr
        for n in names:
            if n not in called and (n in use.used or f"{n}.weight" in fetched):
                unmaskable.setdefault(n, _ELSEWHERE)
        if default_exclusions:
            pointwise = [
                n for n in names if getattr(candidates[n], "kernel_size", (1, 1)) == (1, 1)
            ]
            stems, shortcuts = find_stems_and_shortcuts(graph, pointwise)
    chosen = [n for n in names if n not in stems and n not in shortcuts]

    for pattern in include or ():
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise SgcnnError(
                f"include pattern {pattern!r} matches no Conv2d / Linear layer with more than "
                f"one input channel per filter; candidates are e.g. {', '.join(names[:6])}"
            )
    every = list(candidates)
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
    skipped = {n: unmaskable[n] for n in chosen if n in unmaskable}
    chosen = [n for n in chosen if n not in skipped]
    if not chosen:
        why = "" if names else " (it has no Conv2d / Linear layer with more than one input channel)"
        if skipped:
            why = f" (sgcnn cannot mask {', '.join(skipped)}: {next(iter(skipped.values()))})"
        raise SgcnnError(
            f"no layer of {type(model).__name__} is left to self-group{why}; "
            "check the include / exclude patterns"
        )
    if skipped:
        _warn_skipped(skipped)
    return Selection(chosen, sorted(stems), sorted(shortcuts), depthwise, skipped)


def _warn_skipped(skipped: dict[str, str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, why in skipped.items():
        by_reason.setdefault(why, []).append(name)
    said = "; ".join(f"{', '.join(map(repr, names))}: {why}" for why, names in by_reason.items())
    warnings.warn(
        f"{len(skipped)} layer(s) stay dense because sgcnn cannot mask them (listed as "
        f"skipped): {said}",
        stacklevel=3,
    )
