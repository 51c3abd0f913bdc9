"""sgcnn: Self-grouping Convolutional Neural Networks (Guo et al., Neural Networks 2020).

The public API::

    import sgcnn
    model = sgcnn.create_model("resnet50")
    report = sgcnn.self_group_(model, conv_sparsity=0.6, fc_sparsity=0.6, groups=16)
    sgcnn.count(model, 224)             # {"params": ..., "flops": ..., ...}
    sgcnn.group_structure(model)        # {"layer1.0.conv1": LayerGroups(labels, keep, mask), ...}
    fast = sgcnn.convert(model, torch.randn(16, 3, 224, 224))  # exact, fast modules
    sgcnn.export(model, "r50.onnx", torch.randn(1, 3, 224, 224))  # or "r50.pt2"
    program = sgcnn.load("r50.pt2")     # a saved .pt2, without the model's class
"""

from sgcnn.errors import SgcnnError

__version__ = "0.1.0"

# Public name -> the module defining it. Each module is imported on first use of one of its
# names (PEP 562), so ``import sgcnn`` stays cheap: scikit-learn, torch.fx and the fast kernels
# load only when the grouping, counting or conversion functions are first reached.
_LAZY = {
    "GroupingReport": "sgcnn.core.grouper",
    "LayerGroups": "sgcnn.core.grouper",
    "LayerReport": "sgcnn.core.grouper",
    "SelfGrouper": "sgcnn.core.grouper",
    "group_structure": "sgcnn.core.grouper",
    "self_group_": "sgcnn.core.grouper",
    "count": "sgcnn.metrics.counting",
    "create_model": "sgcnn.models.registry",
    "list_models": "sgcnn.models.registry",
    "convert": "sgcnn.deploy.convert",
    "export": "sgcnn.deploy.export",
    "load": "sgcnn.deploy.export",
}


def __getattr__(name: str):
    """Import the module behind a public name on first use and cache the name here (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sgcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "GroupingReport",
    "LayerGroups",
    "LayerReport",
    "SelfGrouper",
    "SgcnnError",
    "convert",
    "count",
    "create_model",
    "export",
    "group_structure",
    "list_models",
    "load",
    "self_group_",
]
