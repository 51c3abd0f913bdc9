"""VGG-16 with BatchNorm for CIFAR (Simonyan & Zisserman, "Very deep convolutional networks
for large-scale image recognition", ICLR 2015, configuration D; BatchNorm after Ioffe &
Szegedy 2015).

Thirteen ``conv3x3-BN-ReLU`` layers in five stages of 64, 128, 256, 512, 512 channels, each
stage ending in a 2x2 max pool, which takes 32x32 inputs down to 1x1. The classifier is the
common CIFAR one, a single ``Linear(512, classes)``: the ImageNet 4096-4096 head would hold
most of the parameters and overfit CIFAR. Convolutions have no bias (the BatchNorm that follows
each one makes it redundant): 14,715,594 conv + linear parameters and 313.2M
multiply-accumulates at 32x32 for 10 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgcnn.models._defaults import CIFAR
from sgcnn.models.registry import register_model

# Output channels of each 3x3 conv; "M" is a 2x2 max pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """``features`` (conv-BN-ReLU and max pools, from ``config``), global pool, one linear."""

    def __init__(
        self, config: Sequence[int | str], num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(channels, int(v), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(inplace=True),
                ]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        # The identity at 32x32 (already 1x1); lets other input sizes work too.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model("vgg16_cifar", num_classes=10, input_size=(3, 32, 32), defaults=CIFAR)
def vgg16_cifar(num_classes: int = 10, **kwargs) -> CifarVGG:
    """VGG-16 with BatchNorm for CIFAR, single linear classifier."""
    return CifarVGG(VGG16_CONFIG, num_classes=num_classes, **kwargs)
