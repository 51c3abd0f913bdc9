"""A small dataflow graph of a model, enough to find stems and residual shortcut projections.

Layer selection must work on any model without reading its attribute names, so it looks at
the structure: which layer consumes the network input directly, and which convolution sits
alone on the short branch of a residual addition. The graph comes from ``torch.fx`` symbolic
tracing when that works (no input needed) and otherwise from running the model once on an
example input while recording every torch operation (:class:`_Recorder`).

Nodes are ``(kind, target, inputs)``: ``kind`` is ``"input"``, ``"layer"`` (a Conv2d / Linear,
``target`` its qualified name), ``"add"`` (an elementwise sum of two tensors) or ``"op"``.
An op recorded inside a BatchNorm's forward also names that BatchNorm (``module``), so that
filter pruning can slice it.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from sgcnn.errors import SgcnnError
from sgcnn.nn._modes import eval_mode

_LAYER_TYPES = (nn.Conv2d, nn.Linear)
_ADDS = {
    operator.add,
    operator.iadd,
    torch.add,
    torch.Tensor.add,
    torch.Tensor.add_,
    torch.Tensor.__add__,
    torch.Tensor.__iadd__,
    torch.Tensor.__radd__,
}


@dataclass
class Node:
    kind: str  # "input" | "layer" | "add" | "op"
    target: str  # qualified layer name for "layer" nodes, else a description
    inputs: list[int] = field(default_factory=list)  # indices of producing nodes
    module: str = ""  # run recording: the BatchNorm whose forward made this op, if any


@dataclass
class Graph:
    nodes: list[Node]

    def ancestors(self, index: int) -> set[int]:
        """Indices of all nodes ``index`` depends on (itself excluded)."""
        seen: set[int] = set()
        stack = list(self.nodes[index].inputs)
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack.extend(self.nodes[i].inputs)
        return seen

    def consumers(self) -> dict[int, list[int]]:
        users: dict[int, list[int]] = {i: [] for i in range(len(self.nodes))}
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                users[j].append(i)
        return users


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps every Conv2d / Linear / norm layer (subclasses too) as a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (*_LAYER_TYPES, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, qualname)


def _graph_from_fx(model: nn.Module) -> Graph:
    fx_graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    index: dict[fx.Node, int] = {}
    nodes: list[Node] = []
    for node in fx_graph.nodes:
        inputs = [index[a] for a in node.all_input_nodes if a in index]
        if node.op == "placeholder":
            kind, target = "input", node.name
        elif node.op == "call_module" and isinstance(modules.get(node.target), _LAYER_TYPES):
            kind, target = "layer", str(node.target)
        elif node.op in ("call_function", "call_method") and _is_add(node):
            kind, target = "add", "add"
        else:
            kind, target = "op", str(node.target)
        index[node] = len(nodes)
        nodes.append(Node(kind, target, inputs))
    return Graph(nodes)


def _is_add(node: fx.Node) -> bool:
    tensors = [a for a in node.args if isinstance(a, fx.Node)]
    if len(tensors) != 2:
        return False
    if node.op == "call_method":
        return node.target in ("add", "add_", "__add__", "__iadd__")
    return node.target in _ADDS


class _Recorder(TorchFunctionMode):
    """Records the torch operations of one forward pass as a :class:`Graph`.

    Tensors are tracked by identity (every traced tensor is kept alive until the end so that
    ids are not reused); the inside of a Conv2d / Linear is recorded as one ``layer`` node.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self.producer: dict[int, int] = {}
        self.alive: list[torch.Tensor] = []
        self.depth = 0  # > 0 while inside a recorded layer
        self.norms: list[str] = []  # the BatchNorm modules whose forward is running

    def add(self, kind: str, target: str, args, outputs) -> None:
        inputs = sorted({self.producer[id(t)] for t in _tensors(args) if id(t) in self.producer})
        module = self.norms[-1] if self.norms and kind == "op" else ""
        self.nodes.append(Node(kind, target, inputs, module))
        for t in _tensors(outputs):
            self.producer[id(t)] = len(self.nodes) - 1
            self.alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Only tensor-producing ops are dataflow (x.dim(), x.shape and the like are not).
        if self.depth == 0 and any(True for _ in _tensors(out)):
            tensors = list(_tensors(args))
            kind = "add" if func in _ADDS and len(tensors) == 2 else "op"
            self.add(kind, getattr(func, "__name__", str(func)), (args, kwargs), out)
        return out


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _graph_from_run(model: nn.Module, example_input: torch.Tensor) -> Graph:
    recorder = _Recorder()
    recorder.add("input", "input", (), example_input)
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _LAYER_TYPES):

            def pre(mod, args, name=name):
                recorder.depth += 1

            def post(mod, args, out, name=name):
                recorder.depth -= 1
                if recorder.depth == 0:
                    recorder.add("layer", name, args, out)

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):

            def enter(mod, args, name=name) -> None:
                recorder.norms.append(name)

            def leave(mod, args, out) -> None:  # returns None: the output stays as it is
                recorder.norms.pop()

            handles += [
                module.register_forward_pre_hook(enter),
                module.register_forward_hook(leave),
            ]
    try:
        with eval_mode(model), torch.no_grad(), recorder:
            model(example_input)
    except Exception as err:
        raise SgcnnError(
            f"the model failed on an example input of shape {tuple(example_input.shape)}: {err}. "
            "Pass the input size the model expects (input_size=(C, H, W), or --input-size)."
        ) from err
    finally:
        for h in handles:
            h.remove()
    return Graph(recorder.nodes)


def trace_graph(model: nn.Module, example_input: torch.Tensor | None = None) -> Graph:
    """The dataflow graph of ``model``: recorded on ``example_input`` if given, else by fx.

    Raises :class:`SgcnnError` when fx cannot trace the model and no input was given.
    """
    if example_input is not None:
        return _graph_from_run(model, example_input)
    try:
        return _graph_from_fx(model)
    except Exception as err:  # fx rejects data-dependent control flow and other dynamic code
        raise SgcnnError(
            f"could not trace {type(model).__name__} symbolically ({type(err).__name__}: {err}); "
            "pass the model's input size (input_size=(C, H, W), or --input-size) so that sgcnn "
            "can run it once instead"
        ) from err
