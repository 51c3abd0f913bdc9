"""Masked Conv2d / Linear layers: the layer computes with ``W * M``.

The mask is stored at the granularity self-grouping prunes at: one boolean per (filter, input
channel) pair, ``sg_mask[n, c]``, which stands for the whole ``k x k`` kernel slice
``M[n, c, :, :]`` of docs/method.md section 1. Beside it each layer keeps its group assignment
(``sg_labels[n]``, the self-group of filter ``n``) and the input channels each group keeps
(``sg_keep[j, c]``). All three are buffers, so they live in the ``state_dict``.

The modules subclass ``nn.Conv2d`` / ``nn.Linear``: code that inspects layers by type keeps
working, and the parameter names (``weight``, ``bias``) are unchanged, so a dense checkpoint loads
into a masked model, strictly: a layer whose entry in the checkpoint has parameters but none of
the three buffers loads as :meth:`~_MaskedMixin.from_dense` makes it (all-ones mask, one group),
i.e. dense, as the checkpoint is. Pruned weights are zeroed when a mask is applied
(:meth:`apply_mask_`), and since the forward pass multiplies by the mask, their gradients are
exactly zero too: plain SGD, momentum and weight decay all leave them at zero.

Only a layer that computes exactly ``nn.Conv2d``'s / ``nn.Linear``'s forward can be masked
(:func:`why_not_maskable`): the masked forward replaces the layer's own.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from sgcnn.errors import SgcnnError

_BUFFERS = ("sg_mask", "sg_labels", "sg_keep")


class _MaskedMixin:
    """Buffers and helpers shared by :class:`MaskedConv2d` and :class:`MaskedLinear`."""

    dense_type: type[nn.Module]  # the layer type a masked layer stands for
    weight: nn.Parameter
    sg_mask: torch.Tensor
    sg_labels: torch.Tensor
    sg_keep: torch.Tensor

    @classmethod
    def from_dense(cls, layer: nn.Module):
        """A masked copy of ``layer`` (its dense base class) sharing its parameters, with an
        all-ones mask. The parameters are the same tensors: zeroing pruned weights of the
        masked layer zeroes them in ``layer`` too (copy ``layer`` first to keep it intact).
        A layer :func:`why_not_maskable` refuses is an error."""
        why = why_not_maskable(layer)
        if not isinstance(layer, cls.dense_type):
            why = f"it is not a {cls.dense_type.__name__}"
        if why is not None:
            raise SgcnnError(f"cannot mask {type(layer).__name__}: {why}")
        masked = cls.__new__(cls)
        masked.__dict__ = layer.__dict__.copy()
        masked._parameters = dict(layer._parameters)
        masked._buffers = dict(layer._buffers)
        masked._modules = dict(layer._modules)
        masked._init_mask_buffers()
        return masked

    def _init_mask_buffers(self) -> None:
        n, c = self.weight.shape[:2]
        device = self.weight.device
        self.register_buffer("sg_mask", torch.ones(n, c, dtype=torch.bool, device=device))
        self.register_buffer("sg_labels", torch.zeros(n, dtype=torch.long, device=device))
        self.register_buffer("sg_keep", torch.ones(1, c, dtype=torch.bool, device=device))

    def weight_mask(self) -> torch.Tensor:
        """The mask ``M`` broadcast to the weight's shape (as the weight's dtype)."""
        extra = (1,) * (self.weight.dim() - 2)
        return self.sg_mask.view(*self.sg_mask.shape, *extra).to(self.weight.dtype)

    def masked_weight(self) -> torch.Tensor:
        """``W * M``: the weight the layer computes with."""
        return self.weight * self.weight_mask()

    @torch.no_grad()
    def set_groups_(self, labels: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor) -> None:
        """Store a new group assignment and mask, then zero the pruned weights."""
        device = self.weight.device
        self.sg_labels = labels.to(device=device, dtype=torch.long)
        self.sg_keep = keep.to(device=device, dtype=torch.bool)
        self.sg_mask = mask.to(device=device, dtype=torch.bool)
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the pruned weights in place (``W <- W * M``)."""
        self.weight.mul_(self.weight_mask())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        params = any(prefix + name in state_dict for name in self._parameters)
        if params and not any(prefix + name in state_dict for name in _BUFFERS):
            # A dense checkpoint: this layer loads dense, as from_dense makes it.
            n, c = self.weight.shape[:2]
            ones = torch.ones(n, c, dtype=torch.bool)
            dense = {"sg_mask": ones, "sg_labels": torch.zeros(n, dtype=torch.long)}
            dense["sg_keep"] = ones[:1]
            state_dict = {**state_dict, **{prefix + k: v for k, v in dense.items()}}
        # Group count differs between checkpoints: resize the buffers to what is being loaded.
        for name in _BUFFERS:
            value = state_dict.get(prefix + name)
            if value is not None and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sparsity(self) -> float:
        """Fraction of (filter, input channel) kernels that are pruned."""
        return 1.0 - self.sg_mask.float().mean().item()


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` computing with ``W * M``; build one with :meth:`from_dense`."""

    dense_type = nn.Conv2d

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.masked_weight(), self.bias)


class MaskedLinear(_MaskedMixin, nn.Linear):
    """``nn.Linear`` computing with ``W * M``; build one with :meth:`from_dense`."""

    dense_type = nn.Linear

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.masked_weight(), self.bias)


MASKED_TYPES = (MaskedConv2d, MaskedLinear)


def is_masked(module: nn.Module) -> bool:
    """Whether ``module`` is a self-grouped (masked) layer."""
    return isinstance(module, MASKED_TYPES)


# Subclasses whose forward is the base's in eager mode (checked against their source):
# timm's Linear only casts the weight to the input's dtype when TorchScript-scripted.
_SAME_FORWARD = frozenset({"timm.layers.linear.Linear", "timm.models.layers.linear.Linear"})


def why_not_maskable(layer: nn.Module) -> str | None:
    """Why a Conv2d / Linear ``layer`` cannot be masked, or None when it can.

    The masked forward is ``nn.Conv2d``'s / ``nn.Linear``'s own on ``W * M``, so a layer is
    maskable only when its forward is exactly that: not a subclass with its own ``forward`` or
    ``_conv_forward`` (weight standardisation, padding computed at run time), nor a layer under
    ``torch.nn.utils.parametrize`` (``parametrizations.spectral_norm`` / ``weight_norm``),
    whose weight is computed from other tensors. The old-style ``torch.nn.utils.weight_norm``
    is maskable: its pre-hook sets ``weight`` before the masked forward reads it, and so are
    the few known subclasses whose forward is the base's in eager mode (timm's ``Linear``).
    """
    if is_masked(layer):
        return None
    if parametrize.is_parametrized(layer):
        return "its weight is parametrized (torch.nn.utils.parametrize)"
    base = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
    cls = type(layer)
    if "forward" not in vars(layer) and f"{cls.__module__}.{cls.__qualname__}" in _SAME_FORWARD:
        return None
    own = "forward" in vars(layer) or cls.forward is not base.forward
    if base is nn.Conv2d and cls._conv_forward is not nn.Conv2d._conv_forward:
        own = True
    return f"{cls.__name__} has its own forward, which a masked layer would drop" if own else None


def to_dense(module: MaskedConv2d | MaskedLinear) -> nn.Conv2d | nn.Linear:
    """A plain layer holding ``W * M`` (what the masked layer computes)."""
    base = nn.Conv2d if isinstance(module, MaskedConv2d) else nn.Linear
    dense = base.__new__(base)
    dense.__dict__ = module.__dict__.copy()
    dense._parameters = dict(module._parameters)
    dense._parameters["weight"] = nn.Parameter(module.masked_weight().detach().clone())
    dense._buffers = {k: v for k, v in module._buffers.items() if not k.startswith("sg_")}
    dense._modules = dict(module._modules)
    return dense
