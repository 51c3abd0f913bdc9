"""DenseNet-BC-121 for CIFAR (Huang et al., "Densely connected convolutional networks",
CVPR 2017), the DenseNet-121 baseline of the SG-CNN paper (Guo et al. 2020, Table 2).

Growth rate ``k = 32``, four dense blocks of 6, 12, 24, 16 layers, and:

- stem: a single 3x3 conv 3 -> 2k = 64 at 32x32, no max pool (CIFAR images are small);
- dense layer (bottleneck, "B"): ``BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)``, whose k new
  channels are concatenated to its input;
- transition (compression 0.5, "C"): ``BN-ReLU-conv1x1(channels / 2)-avgpool 2``, so the blocks
  run at 32, 16, 8 and 4 pixels;
- head: ``BN-ReLU``, global average pooling, linear 1024 -> classes.

Convolutions have no bias: every consumer of a conv output is a BatchNorm, whose shift makes a
bias redundant. Conv + linear parameters (weights and biases, BatchNorm excluded) and
multiply-accumulates (``weight.numel() * H_out * W_out`` per conv, ``weight.numel()`` per
linear) at 32x32:

    10 classes:  6,872,778 params (paper 6.89M, -0.25%)   888,350,720 MACs (paper 888.36M)
    100 classes: 6,965,028 params (paper 6.99M, -0.36%)   888,442,880 MACs (paper 888.45M)

All channel counts are pinned by the paper's numbers (the 10 -> 100 class difference is
90 x 1024 weights), and the MACs agree to 0.001%. The printed figures are matched to the last
digit only by adding one term of 10,240 to the MACs and 20,480 to the params; 10,240 is the
number of conv output channels, so the paper's counter likely gave its convs biases and counted
them once more than here. Neither bias convention matters beyond 0.4%.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sgcnn.models._defaults import CIFAR
from sgcnn.models.registry import register_model


class DenseLayer(nn.Module):
    """``BN-ReLU-conv1x1-BN-ReLU-conv3x3``; returns the input with ``growth`` new channels."""

    def __init__(self, in_channels: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, bottleneck, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bottleneck)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.norm1(x)))
        out = self.conv2(self.relu2(self.norm2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Sequential):
    """``BN-ReLU-conv1x1-avgpool2``: compresses channels and halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)


class CifarDenseNet(nn.Module):
    """DenseNet-BC with a 3x3 stem; module names follow torchvision's DenseNet."""

    def __init__(
        self,
        growth: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        stem_channels: int = 64,
        bottleneck_factor: int = 4,  # bottleneck width = bottleneck_factor * growth
        compression: float = 0.5,  # a transition keeps floor(compression * channels)
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module(
            "conv0", nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False)
        )
        channels = stem_channels
        for i, n in enumerate(block_config, start=1):
            block = nn.Sequential()
            for j in range(1, n + 1):
                block.add_module(
                    f"denselayer{j}", DenseLayer(channels, growth, bottleneck_factor * growth)
                )
                channels += growth
            self.features.add_module(f"denseblock{i}", block)
            if i < len(block_config):
                out = int(channels * compression)
                self.features.add_module(f"transition{i}", Transition(channels, out))
                channels = out
        self.features.add_module(f"norm{len(block_config) + 1}", nn.BatchNorm2d(channels))
        self.features.add_module("relu", nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model("densenet121_cifar", num_classes=10, input_size=(3, 32, 32), defaults=CIFAR)
def densenet121_cifar(num_classes: int = 10, **kwargs) -> CifarDenseNet:
    """DenseNet-BC-121 for CIFAR: growth 32, blocks (6, 12, 24, 16), 3x3 stem of 64."""
    return CifarDenseNet(32, (6, 12, 24, 16), num_classes=num_classes, **kwargs)
