"""sgcnn: Self-grouping Convolutional Neural Networks (Guo et al., Neural Networks 2020).

The public API::

    import sgcnn
    model = sgcnn.create_model("resnet50")
    report = sgcnn.self_group_(model, conv_sparsity=0.6, fc_sparsity=0.6, groups=16)
    sgcnn.count(model, 224)             # {"params": ..., "flops": ..., ...}
    sgcnn.group_structure(model)        # {"layer1.0.conv1": LayerGroups(labels, keep, mask), ...}
    fast = sgcnn.convert(model, torch.randn(16, 3, 224, 224))  # exact, fast modules
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

__all__ = [
    "GroupingReport",
    "LayerGroups",
    "SelfGrouper",
    "SgcnnError",
    "convert",
    "count",
    "create_model",
    "group_structure",
    "list_models",
    "self_group_",
]
