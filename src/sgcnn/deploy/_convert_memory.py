"""Memory planning for :func:`sgcnn.deploy.convert.convert`: padded hand-offs and in-place
residuals between native layers."""

from __future__ import annotations

from torch import fx, nn

from sgcnn.deploy import fast as F_

# ---------------------------------------------------------------- memory planning


def _plan_memory(gm: fx.GraphModule) -> None:
    """Two exact savings between native layers (flags on the modules, graph unchanged):

    - *padded hand-off*: when a native convolution with zero padding (stride 1) is the only
      reader of another native layer's output, the producer writes its output with that zero
      border already in place, and the consumer skips its padded copy of the input;
    - *in-place residual*: when the residual added by a native layer is a fresh tensor made by
      a fast module and every other reader of it runs earlier, the layer accumulates into it
      instead of allocating (and page-faulting in) a new output.
    """
    modules = dict(gm.named_modules())  # (fusion gave every call site its own module)
    order = {node: i for i, node in enumerate(gm.graph.nodes)}

    def only_reader(producer: fx.Node, node: fx.Node) -> bool:
        """``node`` reads ``producer``'s output once, as its input, and nothing else does."""
        uses = [a for a in (*node.args, *node.kwargs.values()) if a is producer]
        return len(producer.users) == 1 and len(uses) == 1 and node.args[0] is producer

    def fast_call(node) -> bool:
        return (
            isinstance(node, fx.Node)
            and node.op == "call_module"
            and F_.is_fast(modules.get(node.target))
        )

    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(
            modules.get(node.target), F_.NativeGroupConv2d
        ):
            continue
        layer = modules[node.target]
        producer = node.args[0]
        if (
            layer.padding != (0, 0)
            and layer.stride == (1, 1)
            and fast_call(producer)
            and isinstance(modules[producer.target], F_.NativeGroupConv2d)
            and only_reader(producer, node)
        ):
            source = modules[producer.target]
            if source.out_pad == (0, 0) and not source.accumulate:
                source.out_pad = layer.padding
                layer.input_padded = True
        if len(node.args) == 2:
            root, readers = _alias_root(node.args[1], modules)
            if (
                fast_call(root)
                and root is not _alias_root(producer, modules)[0]
                and getattr(modules[root.target], "out_pad", (0, 0)) == (0, 0)
                and all(fast_call(u) and (u is node or order[u] < order[node]) for u in readers)
            ):
                layer.accumulate = True


def _alias_root(node, modules) -> tuple[object, list[fx.Node]]:
    """The node whose tensor ``node`` is (looking through ``nn.Identity`` calls, which return
    their input itself) and every node that reads that tensor other than through identities."""
    while (
        isinstance(node, fx.Node)
        and node.op == "call_module"
        and isinstance(modules.get(node.target), nn.Identity)
    ):
        node = node.args[0]
    readers, stack = [], [node] if isinstance(node, fx.Node) else []
    while stack:
        for user in stack.pop().users:
            if user.op == "call_module" and isinstance(modules.get(user.target), nn.Identity):
                stack.append(user)
            else:
                readers.append(user)
    return node, readers
