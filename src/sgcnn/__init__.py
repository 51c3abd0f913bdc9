"""sgcnn: Self-grouping Convolutional Neural Networks (Guo et al., Neural Networks 2020).

The public API::

    import sgcnn
    model = sgcnn.create_model("resnet50")
    report = sgcnn.self_group_(model, conv_sparsity=0.6, fc_sparsity=0.6, groups=16)
    sgcnn.count(model, 224)             # {"params": ..., "flops": ..., ...}
    sgcnn.group_structure(model)        # {"layer1.0.conv1": LayerGroups(labels, keep, mask), ...}
    fast = sgcnn.convert(model, torch.randn(16, 3, 224, 224))  # exact, fast modules
    sgcnn.export(model, "r50.onnx", torch.randn(1, 3, 224, 224), format="onnx")  # or "pt2"
    program = sgcnn.load("r50.pt2")     # a saved .pt2, without the model's class
"""

from sgcnn.core.grouper import (
    GroupingReport,
    LayerGroups,
    SelfGrouper,
    group_structure,
    self_group_,
)
from sgcnn.errors import SgcnnError
from sgcnn.metrics.counting import count
from sgcnn.models.registry import create_model, list_models
from sgcnn.nn.convert import convert

__version__ = "0.1.0"

_LAZY = {"export": "sgcnn.exporting", "load": "sgcnn.exporting"}


def __getattr__(name: str):
    """``export`` and ``load`` import the exporters on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sgcnn' has no attribute {name!r}")


__all__ = [
    "GroupingReport",
    "LayerGroups",
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
