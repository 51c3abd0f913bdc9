"""Tiny ``test_*`` models for unit tests: a few thousand parameters, fast on one CPU core.

Each one has the structure of a real zoo model (or, for ``test_convnet``, the awkward layers
real models contain) at a fraction of the width and depth, at 16x16 input:

- ``test_resnet``: a CIFAR ResNet with stages of 8 and 16 channels, one basic block each; the
  first block has an identity shortcut, the second a 1x1 conv + BN projection (option B).
- ``test_densenet``: DenseNet-BC with growth 4, two dense blocks of 2 layers and a transition.
- ``test_vgg``: VGG-style conv-BN-ReLU stages with max pools and one linear classifier.
- ``test_convnet``: a plain conv net with a grouped conv (``groups=2``), a depthwise conv and
  a two-layer classifier: edge cases for code that walks Conv2d / Linear layers.
"""

from __future__ import annotations

import torch
from torch import nn

from sgcnn.models._defaults import SYNTHETIC
from sgcnn.models.cifar_resnet import CifarResNet
from sgcnn.models.densenet_cifar import CifarDenseNet
from sgcnn.models.registry import register_model
from sgcnn.models.vgg_cifar import CifarVGG


@register_model("test_resnet", num_classes=10, input_size=(3, 16, 16), defaults=SYNTHETIC)
def test_resnet(num_classes: int = 10, **kwargs) -> CifarResNet:
    """Two-stage CIFAR ResNet (8, 16 channels), identity and 1x1-projection shortcuts."""
    return CifarResNet((1, 1), (8, 16), num_classes=num_classes, shortcut="B", **kwargs)


@register_model("test_densenet", num_classes=10, input_size=(3, 16, 16), defaults=SYNTHETIC)
def test_densenet(num_classes: int = 10, **kwargs) -> CifarDenseNet:
    """DenseNet-BC, growth 4, blocks (2, 2), stem of 8 channels."""
    return CifarDenseNet(4, (2, 2), stem_channels=8, num_classes=num_classes, **kwargs)


@register_model("test_vgg", num_classes=10, input_size=(3, 16, 16), defaults=SYNTHETIC)
def test_vgg(num_classes: int = 10, **kwargs) -> CifarVGG:
    """VGG-style: 8, 8, M, 16, 16, M, 32, M, single linear classifier."""
    return CifarVGG((8, 8, "M", 16, 16, "M", 32, "M"), num_classes=num_classes, **kwargs)


class TestConvNet(nn.Module):
    """conv3x3 -> grouped conv3x3 (groups=2, stride 2) -> depthwise conv3x3 -> conv1x1 ->
    global pool -> fc 32 -> fc classes, with BN-ReLU after every conv."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()

        def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1):
            conv = nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

        self.features = nn.Sequential(
            conv_bn(in_channels, 8, 3),
            conv_bn(8, 16, 3, stride=2, groups=2),  # grouped: each filter sees 4 of 8 channels
            conv_bn(16, 16, 3, groups=16),  # depthwise: one input channel per filter
            conv_bn(16, 32, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32, 32)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.fc2(self.relu(self.fc1(x)))


@register_model("test_convnet", num_classes=10, input_size=(3, 16, 16), defaults=SYNTHETIC)
def test_convnet(num_classes: int = 10, **kwargs) -> TestConvNet:
    """Plain conv net with a grouped (groups=2) and a depthwise conv."""
    return TestConvNet(num_classes=num_classes, **kwargs)
