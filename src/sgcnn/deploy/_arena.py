"""Reused activation buffers for converted models.

A fresh output tensor per layer is not free on the CPU: large allocations come straight from
the operating system, so every forward pass page-faults its activations in again (about
1 us per 4 KiB page, some 10x the cost of writing the memory; 37.6k faults per ResNet-50
forward pass at batch 16 before this, 12.5k after). Runtimes such as onnxruntime avoid this with an
arena, and so do converted models: at conversion time :func:`plan` gives every layer that
writes its output through sgcnn's kernels a *slot*, shared by layers whose outputs are never
alive at the same time; at run time :meth:`Arena.take` hands out a view of the slot's buffer,
which grows to the largest need and is then reused call after call.

Rules that keep this exact:

- a tensor that leaves the model (reaches the graph's output, through any chain of ops that
  may return a view of it) never lives in the arena;
- a slot's lifetime runs from the node that writes it to the last node that reads it or
  anything that may alias it (every op not known to return a fresh tensor is assumed to
  alias its inputs), and two tensors share a slot only if their lifetimes do not overlap;
- buffers are per thread, so one converted model may run in several threads at once (and
  are freed when their thread ends).

Only eager calls use the arena: tracers (``torch.export``, ``torch.jit.trace``) record the
operators, which allocate. A forward hook that keeps an intermediate output of a converted
model must clone it: the next call overwrites it. :func:`release` frees the buffers.
"""

from __future__ import annotations

import operator
import threading
import weakref

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["Arena", "plan", "release"]


class _Buffers(list):
    """One thread's buffers, by slot: a list that a weak set can hold (by identity)."""

    __eq__ = object.__eq__
    __hash__ = object.__hash__


class Arena:
    """``slots`` flat buffers per thread, each grown to the largest request and then reused;
    a thread's buffers are freed when the thread ends."""

    def __init__(self, slots: int) -> None:
        self.slots = int(slots)
        self._local = threading.local()  # .buffers: the calling thread's _Buffers
        self._all: weakref.WeakSet[_Buffers] = weakref.WeakSet()  # every live thread's
        self._lock = threading.Lock()

    def take(
        self, slot: int, numel: int, dtype: torch.dtype, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """A 1-D tensor of ``numel`` elements in ``slot``'s buffer of the calling thread (its
        contents are whatever the slot's last user left there)."""
        return self.buffer(slot, numel, dtype, torch.device(device))[:numel]

    def buffer(self, slot: int, numel: int, dtype: torch.dtype, device: torch.device):
        """``slot``'s whole 1-D buffer of the calling thread, at least ``numel`` elements (the
        same tensor call after call until a larger one is needed)."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = _Buffers([None] * self.slots)
            with self._lock:
                self._all.add(buffers)
        buf = buffers[slot]
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of that mode
                buf = buffers[slot] = torch.empty(numel, dtype=dtype, device=device)
        return buf

    def _threads(self) -> list[_Buffers]:
        with self._lock:
            return list(self._all)

    def nbytes(self) -> int:
        """Bytes held by the buffers of all threads still running."""
        return sum(
            b.numel() * b.element_size() for bs in self._threads() for b in bs if b is not None
        )

    def clear(self) -> None:
        """Drop every thread's buffers (they are allocated again on the next call)."""
        for buffers in self._threads():
            buffers[:] = [None] * self.slots

    def __reduce__(self):  # pickled and copied empty; the plan (slot count) is kept
        return (Arena, (self.slots,))

    def __repr__(self) -> str:
        return f"Arena(slots={self.slots}, bytes={self.nbytes()})"


def release(model: nn.Module) -> int:
    """Free the reused activation buffers of a converted ``model``; returns the bytes freed.

    Modules that keep views of arena buffers between calls (the native layers' call plans keep
    their last output) define ``release_views()``, which is called too: a kept view would keep
    the buffer's memory."""
    arenas = {id(a): a for m in model.modules() if (a := _arena_of(m)) is not None}
    freed = sum(a.nbytes() for a in arenas.values())
    for a in arenas.values():
        a.clear()
    for m in model.modules():
        release_views = getattr(m, "release_views", None)
        if callable(release_views):
            release_views()
    return freed


def _arena_of(module: nn.Module) -> Arena | None:
    slot = getattr(module, "arena_slot", None)
    return slot[0] if slot is not None else None


# Ops whose result never shares memory with their inputs. Anything else (views, reshapes,
# in-place ops, unknown functions and modules) is assumed to return an alias.
_FRESH_FUNCTIONS = {
    operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.cat, torch.sigmoid,
    F.adaptive_avg_pool2d, F.avg_pool2d, F.linear, F.conv2d, F.max_pool2d, torch.mean,
}  # fmt: skip
_FRESH_MODULES = (
    nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d, nn.BatchNorm2d,
)  # fmt: skip


def plan(gm: fx.GraphModule) -> int:
    """Give the arena-capable modules of ``gm`` slots of one shared :class:`Arena`; returns the
    number of slots (0: nothing planned)."""
    from sgcnn.deploy import fast as F_

    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}

    def module_of(node: fx.Node) -> nn.Module | None:
        return modules.get(node.target) if node.op == "call_module" else None

    def writes_own_output(node: fx.Node) -> bool:
        m = module_of(node)
        return (
            isinstance(m, F_.MaxPool2d)
            or (isinstance(m, F_.NativeGroupConv2d) and not m.accumulate)
            or (isinstance(m, F_.DenseConv2d) and m.mode == "matmul")
        )

    def fresh(user: fx.Node, source: fx.Node) -> bool:
        """Whether ``user``'s result certainly does not alias ``source``."""
        if user.op == "call_function":
            return (
                user.target in _FRESH_FUNCTIONS
                and not user.kwargs.get("inplace", False)
                and "out" not in user.kwargs
            )
        m = module_of(user)
        if isinstance(m, F_.NativeGroupConv2d) and m.accumulate:
            return len(user.args) < 2 or user.args[1] is not source  # returns its residual
        return F_.is_fast(m) or isinstance(m, (F_.MaxPool2d, *_FRESH_MODULES))

    def last_use(node: fx.Node) -> int | None:
        """Index of the last node reading ``node``'s tensor or an alias; None: it escapes."""
        last, stack, seen = order[node], [node], {node}
        while stack:
            current = stack.pop()
            for user in current.users:
                if user.op == "output":
                    return None
                last = max(last, order[user])
                if not fresh(user, current) and user not in seen:
                    seen.add(user)
                    stack.append(user)
        return last

    calls: dict[int, int] = {}
    for node in nodes:
        if (m := module_of(node)) is not None:
            calls[id(m)] = calls.get(id(m), 0) + 1
    free: list[int] = []
    busy: list[tuple[int, int]] = []  # (last use, slot)
    slots = 0
    assigned: list[tuple[nn.Module, int]] = []
    for node in nodes:
        if not writes_own_output(node) or calls[id(module_of(node))] > 1:
            continue
        end = last_use(node)
        if end is None:
            continue
        start = order[node]
        for item in [b for b in busy if b[0] < start]:
            busy.remove(item)
            free.append(item[1])
        if free:
            slot = free.pop()
        else:
            slot, slots = slots, slots + 1
        busy.append((end, slot))
        assigned.append((module_of(node), slot))
    if not slots:
        return 0
    arena = Arena(slots)
    for module, slot in assigned:
        module.arena_slot = (arena, slot)
    return slots
