"""MACs of products of two activations (``q @ k.transpose(-2, -1)``, ``torch.bmm``,
``torch.einsum``, ``F.scaled_dot_product_attention``) outside the counted modules.

:func:`sgcnn.metrics.counting.count` counts convolution and linear layers from their forward
hooks and the attention modules it knows as a whole; a model's own attention (timm's ViT,
MobileViT, a non-local block) multiplies activations with torch functions in a plain module's
forward. :class:`ActivationProducts`, a torch function mode active during the counted forward,
adds those products, attributed to the innermost module whose forward makes them:

- ``matmul`` / ``@`` / ``mm`` / ``bmm`` / ``mv`` / ``dot`` and ``baddbmm`` / ``addmm`` /
  ``addbmm``: ``(output elements) x K`` with ``K`` the contracted size (``addbmm`` sums its
  batch: ``B x N x M x K``);
- ``einsum`` of two or more operands: ``(output elements) x (product of the summed index
  sizes)``;
- ``scaled_dot_product_attention(q [.., L, E], k [.., S, E], v [.., S, Ev])``:
  ``(q elements / E) x S x (E + Ev)``, the scores and the weighted sum.

A product with a watched layer weight is not counted here (:mod:`sgcnn.metrics._weight_use`
decides about those), nor one made inside a counted module's forward (``running``): the
attention modules that :mod:`sgcnn.metrics.counting` knows count their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_MATMULS = {
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.mm,
    torch.bmm, torch.Tensor.bmm, torch.mv, torch.Tensor.mv, torch.dot, torch.Tensor.dot,
}  # fmt: skip
_ADD_MATMULS = {torch.baddbmm, torch.Tensor.baddbmm, torch.addmm, torch.Tensor.addmm}
_ADDBMM = {torch.addbmm, torch.Tensor.addbmm}


def _operands(func, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    if func is torch.einsum:
        rest = args[1:]
        if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
            rest = tuple(rest[0])
        return [t for t in rest if isinstance(t, torch.Tensor)]
    if func is F.scaled_dot_product_attention:
        names = ("query", "key", "value")
        return [args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names)]
    values = (*args, *kwargs.values())
    return [t for t in values if isinstance(t, torch.Tensor)]


def _einsum_macs(equation: str, out: torch.Tensor, operands: list[torch.Tensor]) -> int:
    """``(output elements) x (sizes of the summed indices)``; 0 for one operand."""
    if len(operands) < 2:
        return 0
    equation = equation.replace(" ", "")
    inputs, _, output = equation.partition("->")
    letters = re.sub(r"[^A-Za-z,]", "", inputs).split(",")
    if "->" not in equation:  # implicit output: the letters that appear once
        joined = "".join(letters)
        output = "".join(c for c in joined if joined.count(c) == 1)
    sizes: dict[str, int] = {}
    for spec, tensor in zip(inputs.split(","), operands, strict=True):
        named = spec.replace("...", "")
        # an ellipsis stands for the leading or middle dims: align the letters around it
        head, _, tail = spec.partition("...")
        dims = list(tensor.shape)
        positions = list(range(len(head))) + list(range(len(dims) - len(tail), len(dims)))
        for letter, dim in zip(named, positions, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), dims[dim])
    summed = 1
    for letter in set("".join(letters)) - set(output):
        summed *= sizes.get(letter, 1)
    return out.numel() * summed


def product_macs(func, args: tuple, kwargs: dict, out) -> int | None:
    """The MACs of one call of ``func``, or None when it is not a product counted here."""
    if not isinstance(out, torch.Tensor):
        return None
    if func in _MATMULS:
        a = args[0]
        return out.numel() * a.shape[-1]
    if func in _ADD_MATMULS:
        m1 = args[1] if len(args) > 1 else kwargs.get("batch1", kwargs.get("mat1"))
        return out.numel() * m1.shape[-1]
    if func in _ADDBMM:
        b1 = args[1] if len(args) > 1 else kwargs["batch1"]
        return out.numel() * b1.shape[0] * b1.shape[-1]
    if func is torch.Tensor.__rmatmul__:  # b.__rmatmul__(a) is a @ b
        return out.numel() * args[1].shape[-1]
    if func is torch.einsum and isinstance(args[0], str):  # torch turns sublists into a string
        return _einsum_macs(args[0], out, _operands(func, args, kwargs))
    if func is F.scaled_dot_product_attention:
        q, k, v = _operands(func, args, kwargs)
        return q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return None


class ActivationProducts(TorchFunctionMode):
    """See the module docstring. ``owner()``: the name of the innermost module running;
    ``running``: the counted modules inside their forward; ``is_weight(t)``: whether ``t`` is
    a watched layer weight (or a view of one). ``macs``: owner name -> MACs counted."""

    def __init__(
        self, owner: Callable[[], str], running: set[str], is_weight: Callable[[object], bool]
    ) -> None:
        super().__init__()
        self.owner = owner
        self.running = running
        self.is_weight = is_weight
        self.macs: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.running:
            return out
        macs = product_macs(func, args, kwargs, out)
        if macs and not any(self.is_weight(t) for t in _operands(func, args, kwargs)):
            owner = self.owner()
            self.macs[owner] = self.macs.get(owner, 0) + int(macs)
        return out
