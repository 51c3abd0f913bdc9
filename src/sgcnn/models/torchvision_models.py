"""Every torchvision classification model, registered under its torchvision name.

The architectures are torchvision's own (``torchvision.models.list_models(module=
torchvision.models)``: resnet50, densenet201, mobilenet_v2, vit_b_16, ...), built with
``weights=None``: random initialisation, nothing is ever downloaded. Pretrained weights a user
holds load with ``model.load_state_dict``. Defaults: 1000 classes, 224x224 input (299x299 for
inception_v3). GoogLeNet and Inception-v3 are built without their auxiliary classifiers
(``aux_logits=False``) so that ``forward`` returns a plain tensor, and with
``init_weights=True`` (their historical initialisation, which also silences torchvision's
warning); callers may override both.
"""

from __future__ import annotations

import torchvision
from torch import nn

from sgcnn.models._defaults import NO_BATCHNORM
from sgcnn.models.registry import register_model

# Keyword defaults for models whose torchvision defaults do not give a tensor-valued forward.
_DEFAULT_KWARGS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}
_INPUT_SIZE: dict[str, tuple[int, int, int]] = {"inception_v3": (3, 299, 299)}
_NO_BATCHNORM = {"alexnet", "vgg11", "vgg13", "vgg16", "vgg19"}  # trained at a lower rate


def _register(name: str) -> None:
    def builder(num_classes: int = 1000, **kwargs) -> nn.Module:
        kwargs = {**_DEFAULT_KWARGS.get(name, {}), **kwargs}
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"torchvision's {name} with random weights."
    input_size = _INPUT_SIZE.get(name, (3, 224, 224))
    defaults = NO_BATCHNORM if name in _NO_BATCHNORM else None
    register_model(
        name, num_classes=1000, input_size=input_size, source="torchvision", defaults=defaults
    )(builder)


for _name in torchvision.models.list_models(module=torchvision.models):
    _register(_name)
