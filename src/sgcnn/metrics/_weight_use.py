"""Which layers' weights a forward pass computes with outside the layers' own forwards.

:func:`sgcnn.metrics.counting.count` counts a layer's MACs from its forward hook. A parent may
also apply a layer's weight itself (``F.linear(x, self.fc.weight)``, ``x @ self.fc.weight.T``,
attention modules); :class:`WeightUse`, a torch function mode active during the counted
forward, sees those calls:

- the weight given to ``F.linear`` / ``F.conv2d`` outside the layer's own forward counts as a
  call of the layer (``count_call``);
- what a weight turns into through views and copies (``.T``, ``.t()``, ``detach``, ``to``,
  ``view``, ...) is watched as that weight;
- reading metadata (shape, dtype, device) is no use;
- any other computation with a watched tensor outside its layer's forward is recorded in
  ``uncounted``; :meth:`WeightUse.check` raises for a layer in it that was never called
  (neither as a module nor through ``F.linear`` / ``F.conv2d``): its FLOPs were not seen.
  A layer that was called may also have its weight read otherwise (``x.type_as(w)``, an EMA
  copy) without error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sgcnn.errors import SgcnnError

# Tensor methods and properties that read a weight's metadata, not its values.
_METADATA = {
    "size", "dim", "numel", "nelement", "ndimension", "is_floating_point", "is_complex",
    "stride", "element_size", "is_contiguous", "data_ptr", "__len__", "type", "get_device",
    "shape", "dtype", "device", "requires_grad", "ndim", "is_cuda", "is_cpu", "layout",
    "is_sparse", "is_quantized", "is_meta", "grad_fn", "is_leaf", "names", "__repr__",
    "__format__", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
}  # fmt: skip
# Methods and properties whose result is the weight itself under another view, type or place.
_SAME_VALUES = {
    "T", "mT", "H", "mH", "data", "t", "detach", "clone", "to", "cpu", "cuda", "float",
    "half", "double", "bfloat16", "contiguous", "view", "reshape", "permute", "transpose",
    "flatten", "squeeze", "unsqueeze", "expand", "__getitem__", "type_as", "view_as",
    "reshape_as", "expand_as", "narrow", "select", "flip", "requires_grad_",
}  # fmt: skip


def _name(func) -> str:
    """A torch function's name; a property's own name for its getter (``T``, ``shape``)."""
    name = getattr(func, "__name__", "")
    if name == "__get__":
        return getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class WeightUse(TorchFunctionMode):
    """See the module docstring. ``watched``: layer name -> weight tensor (held here, so no
    other tensor takes its id while the mode runs); ``running``: the names of the layers
    inside their own forward; ``count_call(name, output)``: count a functional call."""

    def __init__(self, watched: dict[str, torch.Tensor], running: set[str], count_call) -> None:
        super().__init__()
        self.running = running
        self.count_call = count_call
        self.owners: dict[int, list[str]] = {}
        self.alive: list[torch.Tensor] = []  # every watched tensor, kept alive
        for name, weight in watched.items():
            self._watch(weight, [name])
        self.called: set[str] = set()
        self.uncounted: set[str] = set()

    def _watch(self, tensor: torch.Tensor, names: list[str]) -> None:
        known = self.owners.setdefault(id(tensor), [])
        known.extend(n for n in names if n not in known)
        self.alive.append(tensor)

    def is_watched(self, value: object) -> bool:
        """Whether ``value`` is a watched weight or a view or copy of one."""
        return isinstance(value, torch.Tensor) and id(value) in self.owners

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = _name(func)
        if name in _METADATA:
            return out
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        for value in (*args, *kwargs.values()):
            names = self.owners.get(id(value)) if isinstance(value, torch.Tensor) else None
            if not names or any(n in self.running for n in names):
                continue
            if func in (F.linear, F.conv2d) and value is weight:
                self.called.add(names[0])
                self.count_call(names[0], out)
            elif name in _SAME_VALUES and value is (args[0] if args else None):
                if isinstance(out, torch.Tensor):
                    self._watch(out, names)
            else:
                self.uncounted.update(names)
        return out

    def check(self, called_as_modules: set[str], types: dict[str, str]) -> None:
        """Raise for a layer whose weight was computed with although the layer was never
        called (see the module docstring)."""
        for name in sorted(self.uncounted - self.called - called_as_modules):
            raise SgcnnError(
                f"cannot count the FLOPs of layer {name!r} ({types[name]}): its weight is "
                "computed with outside its forward (e.g. a matmul with layer.weight) and the "
                "layer itself never runs; sgcnn counts layers called as modules or applied "
                "with F.linear / F.conv2d"
            )
