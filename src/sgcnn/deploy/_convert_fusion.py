"""Fusion for :func:`sgcnn.deploy.convert.convert` (``torch.fx`` passes): find each layer to
realize and the BatchNorm, ReLU and residual addition that fold into its epilogue."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from sgcnn.deploy import fast as F_
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear, is_masked

_RELUS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_}
_ADDS = {operator.add, operator.iadd, torch.add}
_IN_PLACE_ADDS = {operator.iadd, "add_", "__iadd__"}  # they write into their first operand


class _Tracer(fx.Tracer):
    """Keeps Conv2d / Linear / BatchNorm (masked subclasses included) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, qualname)


@dataclass
class _Site:
    """One layer to realize: where it is in the graph and what to fold into it."""

    name: str  # submodule name in the converted model
    layer: nn.Module
    bn: nn.Module | None
    relu: bool
    input_shape: tuple[int, ...]
    residual_shape: tuple[int, ...] | None
    channels_last: bool = False  # the input arrives in channels-last memory (tuned that way)


# ------------------------------------------------------------------ graph fusion


def _users(node: fx.Node) -> list[fx.Node]:
    return list(node.users)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = _users(node)
    return users[0] if len(users) == 1 else None


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELUS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _residual_of(node: fx.Node, prev: fx.Node) -> fx.Node | None:
    """The other operand if ``node`` is ``prev + other`` of equal shape and dtype (at the
    example's batch size and at another), else None.

    An in-place addition counts only as ``prev += other``: ``other += prev`` writes into
    ``other``, which an alias taken earlier (``skip = other``) sees; the fused layer returns
    a new tensor and would leave ``other`` as it was."""
    is_add = (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_", "__add__", "__iadd__")
    )
    if not is_add or node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    if node.target in _IN_PLACE_ADDS and a is not prev:
        return None
    other = b if a is prev else a if b is prev else None
    if not isinstance(other, fx.Node) or other is prev:
        return None
    meta_p, meta_o = prev.meta.get("tensor_meta"), other.meta.get("tensor_meta")
    if meta_p is None or meta_o is None or not hasattr(meta_o, "shape"):
        return None
    if meta_p.shape != meta_o.shape or meta_p.dtype != meta_o.dtype:
        return None
    # equal at another batch size too: not an operand that broadcasts (see convert._trace)
    if prev.meta.get("other_batch_shape") != other.meta.get("other_batch_shape"):
        return None
    return other


# Exactly these classes are folded or realized: a subclass may compute something else in its
# forward (timm's BatchNormAct2d applies an activation, Conv2dSame pads by the input's size,
# StdConv2d standardizes its weight), so it is left to run as it is.
_FOLDABLE_NORMS = (nn.BatchNorm2d,)
_REALIZABLE_LAYERS = (nn.Conv2d, nn.Linear, MaskedConv2d, MaskedLinear)


def _is_eval_bn(m: nn.Module | None) -> bool:
    """A BatchNorm that is an affine map per channel: exact class, running statistics."""
    return (
        type(m) in _FOLDABLE_NORMS
        and m.track_running_stats
        and m.running_var is not None
        and m.running_mean is not None
    )


def _realizable(m: nn.Module | None) -> bool:
    return type(m) in _REALIZABLE_LAYERS and F_.is_supported_layer(m)


def _is_norm_act(m: nn.Module | None) -> bool:
    """timm's ``BatchNormAct2d`` (exact class): ``act(drop(batch_norm(x)))``."""
    cls = type(m)
    return (
        cls.__name__ == "BatchNormAct2d"
        and cls.__module__.startswith("timm.")
        and isinstance(m, nn.BatchNorm2d)
        and isinstance(getattr(m, "act", None), nn.Module)
        and isinstance(getattr(m, "drop", None), nn.Module)
    )


def _split_norm_acts(gm: fx.GraphModule) -> None:
    """Rewrite every call of a BatchNorm-with-activation module as its three steps
    ``act(drop(bn(x)))`` with ``bn`` a plain ``nn.BatchNorm2d`` sharing its statistics and
    parameters, so that fusion can fold the BatchNorm and keep the activation."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not _is_norm_act(modules.get(node.target)):
            continue
        m = modules[node.target]
        bn = nn.BatchNorm2d(
            m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats
        ).eval()
        bn.weight, bn.bias = m.weight, m.bias
        bn.running_mean, bn.running_var = m.running_mean, m.running_var
        bn.num_batches_tracked = m.num_batches_tracked
        name = f"{node.target}.sgcnn_bn"
        gm.add_submodule(name, bn)
        with gm.graph.inserting_before(node):
            y = gm.graph.call_module(name, node.args, node.kwargs)
            y = gm.graph.call_module(f"{node.target}.drop", (y,))
            y = gm.graph.call_module(f"{node.target}.act", (y,))
        y.meta = dict(node.meta)
        node.replace_all_uses_with(y)
        gm.graph.erase_node(node)


def _fuse_sites(gm: fx.GraphModule, fuse: bool) -> list[tuple[_Site, fx.Node, list[fx.Node]]]:
    """Find the layers to realize and the chain of nodes each one replaces."""
    modules = dict(gm.named_modules())
    found = []
    used_names = set(modules)  # a second call's module must not replace an existing one
    site_names: set[str] = set()
    claimed: set[fx.Node] = set()  # nodes already fused into an earlier layer

    def free(user: fx.Node | None) -> fx.Node | None:
        return user if user is not None and user not in claimed else None

    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        layer = modules.get(node.target)
        if not _realizable(layer):
            continue
        chain, cur = [node], node
        bn, relu, residual = None, False, None
        if fuse:
            user = free(_single_user(cur))
            if (
                isinstance(layer, nn.Conv2d)
                and user is not None
                and user.op == "call_module"
                and _is_eval_bn(modules.get(user.target))
            ):
                bn, cur = modules[user.target], user
                chain.append(cur)
            user = free(_single_user(cur))
            if user is not None and _is_relu(user, modules):
                relu, cur = True, user
                chain.append(cur)
            elif user is not None and (other := _residual_of(user, cur)) is not None:
                residual, cur = other, user
                chain.append(cur)
                user = free(_single_user(cur))
                if user is not None and _is_relu(user, modules):
                    relu, cur = True, user
                    chain.append(cur)
        if not is_masked(layer) and len(chain) == 1 and not isinstance(layer, nn.Conv2d):
            continue  # a plain linear layer with nothing fused stays as it is
        claimed.update(chain)
        name = str(node.target)
        if name in site_names:  # a layer called more than once: one fast module per call
            i = 1
            while f"{name}_{i}" in used_names:
                i += 1
            name = f"{name}_{i}"
        used_names.add(name)
        site_names.add(str(node.target))
        x = node.args[0]
        site = _Site(
            name,
            layer,
            bn,
            relu,
            tuple(x.meta["tensor_meta"].shape),
            tuple(residual.meta["tensor_meta"].shape) if residual is not None else None,
            _is_channels_last(x.meta["tensor_meta"]),
        )
        found.append((site, residual, chain))
    return found


def _is_channels_last(meta) -> bool:
    """A 4-D tensor laid out channels-last and not also plain contiguous (as 1x1 maps are)."""
    if len(meta.shape) != 4:
        return False
    probe = torch.empty_strided(meta.shape, meta.stride, device="meta")
    return probe.is_contiguous(memory_format=torch.channels_last) and not probe.is_contiguous()


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)
