"""The max-pooling pass of :func:`sgcnn.deploy.convert.convert`: 2-D max pooling swapped for
the exact native :class:`sgcnn.deploy.fast.MaxPool2d` where the native kernels may run."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn

from sgcnn.deploy import _native
from sgcnn.deploy import fast as F_


def _max_pool_args(node: fx.Node, modules: dict[str, nn.Module]) -> dict | None:
    """The arguments of a max-pooling node the native pool can run, else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if type(m) is not nn.MaxPool2d or m.return_indices or m.dilation not in (1, (1, 1)):
            return None
        return {
            "kernel_size": m.kernel_size,
            "stride": m.stride,
            "padding": m.padding,
            "ceil_mode": m.ceil_mode,
        }
    if node.op != "call_function" or node.target not in (
        nn.functional.max_pool2d,
        torch.max_pool2d,
    ):
        return None
    names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    args = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
    if args.get("return_indices") or args.get("dilation", 1) not in (1, (1, 1), [1, 1]):
        return None
    if any(isinstance(v, fx.Node) for k, v in args.items() if k != "input"):
        return None
    return {
        "kernel_size": args["kernel_size"],
        "stride": args.get("stride"),
        "padding": args.get("padding", 0),
        "ceil_mode": bool(args.get("ceil_mode", False)),
    }


def _uses_native(device: torch.device, allowed: Sequence[str] | None) -> bool:
    """Whether the native kernels may run in the converted model."""
    return (allowed is None or "native" in allowed) and device.type == "cpu" and _native.available()


def _replace_max_pools(gm: fx.GraphModule) -> None:
    """Swap 2-D max pooling for :class:`sgcnn.deploy.fast.MaxPool2d` (exact, faster in NCHW)."""
    modules = dict(gm.named_modules())
    for i, node in enumerate(list(gm.graph.nodes)):
        args = _max_pool_args(node, modules)
        meta = node.meta.get("tensor_meta")
        if args is None or meta is None or len(getattr(meta, "shape", ())) != 4:
            continue
        name = f"sgcnn_max_pool_{i}"
        gm.add_submodule(name, F_.MaxPool2d(**args))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
