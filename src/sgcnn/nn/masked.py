"""Masked Conv2d / Linear layers: the layer computes with ``W * M``.

The mask is stored at the granularity self-grouping prunes at: one boolean per (filter, input
channel) pair, ``sg_mask[n, c]``, which stands for the whole ``k x k`` kernel slice
``M[n, c, :, :]`` of docs/method.md section 1. Beside it each layer keeps its group assignment
(``sg_labels[n]``, the self-group of filter ``n``) and the input channels each group keeps
(``sg_keep[j, c]``). All three are buffers, so they live in the ``state_dict``.

The modules subclass ``nn.Conv2d`` / ``nn.Linear``: code that inspects layers by type keeps
working, and the parameter names (``weight``, ``bias``) are unchanged, so a dense checkpoint loads
into a masked model. Pruned weights are zeroed when a mask is applied (:meth:`apply_mask_`), and
since the forward pass multiplies by the mask, their gradients are exactly zero too: plain SGD,
momentum and weight decay all leave them at zero.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class _MaskedMixin:
    """Buffers and helpers shared by :class:`MaskedConv2d` and :class:`MaskedLinear`."""

    weight: nn.Parameter
    sg_mask: torch.Tensor
    sg_labels: torch.Tensor
    sg_keep: torch.Tensor

    @classmethod
    def from_dense(cls, layer: nn.Module):
        """A masked copy of ``layer`` (its dense base class) sharing its parameters, with an
        all-ones mask. The parameters are the same tensors: zeroing pruned weights of the
        masked layer zeroes them in ``layer`` too (copy ``layer`` first to keep it intact)."""
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
        # Group count differs between checkpoints: resize the buffers to what is being loaded.
        for name in ("sg_mask", "sg_labels", "sg_keep"):
            value = state_dict.get(prefix + name)
            if value is not None and value.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(value, device=self.weight.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sparsity(self) -> float:
        """Fraction of (filter, input channel) kernels that are pruned."""
        return 1.0 - self.sg_mask.float().mean().item()


class MaskedConv2d(_MaskedMixin, nn.Conv2d):
    """``nn.Conv2d`` computing with ``W * M``; build one with :meth:`from_dense`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.masked_weight(), self.bias)


class MaskedLinear(_MaskedMixin, nn.Linear):
    """``nn.Linear`` computing with ``W * M``; build one with :meth:`from_dense`."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.masked_weight(), self.bias)


MASKED_TYPES = (MaskedConv2d, MaskedLinear)


def is_masked(module: nn.Module) -> bool:
    """Whether ``module`` is a self-grouped (masked) layer."""
    return isinstance(module, MASKED_TYPES)


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
