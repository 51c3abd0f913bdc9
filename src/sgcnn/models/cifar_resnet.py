"""ResNet-20/32/56/110 for CIFAR (He et al., "Deep residual learning for image recognition",
CVPR 2016, section 4.2).

A 3x3 stem conv of 16 channels, then three stages of ``n = (depth - 2) / 6`` basic blocks with
16, 32 and 64 channels at 32x32, 16x16 and 8x8 (the first block of stages 2 and 3 has stride 2),
global average pooling and a linear classifier: ``depth = 6n + 2`` weighted layers.

A basic block is ``conv3x3-BN-ReLU-conv3x3-BN``, added to the shortcut, then ReLU. Where the
shape changes the shortcut is, as in the paper:

- option "A" (default, the standard CIFAR variant): identity on every other pixel with the new
  channels zero-padded, parameter free. ResNet-56 then has 853,018 parameters (848,954 without
  BatchNorm) and 125.5M multiply-accumulates at 32x32.
- option "B": a 1x1 conv + BN projection (the ``downsample`` of torchvision's ResNets).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sgcnn.errors import SgcnnError
from sgcnn.models._defaults import CIFAR
from sgcnn.models.registry import register_model


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the channels to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Pad the channel dimension (third from last) evenly on both sides.
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.downsample = PadShortcut(in_channels, out_channels, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                    nn.BatchNorm2d(out_channels),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    """Stem, stages of basic blocks (``blocks[i]`` blocks of ``widths[i]`` channels), pool, fc."""

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int] = (16, 32, 64),
        num_classes: int = 10,
        shortcut: str = "A",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise SgcnnError(
                f"shortcut must be 'A' (zero-padding) or 'B' (1x1 conv), got {shortcut!r}"
            )
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        # Stages are named layer1, layer2, ... as in torchvision's ResNets.
        self.stages: list[str] = []
        channels = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths, strict=True)):
            stage = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(BasicBlock(channels, width, stride, shortcut))
                channels = width
            self.stages.append(f"layer{i + 1}")
            self.add_module(self.stages[-1], nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(x)))


def cifar_resnet(depth: int, num_classes: int = 10, shortcut: str = "A", **kwargs) -> CifarResNet:
    """The CIFAR ResNet of ``depth = 6n + 2`` layers."""
    if (depth - 2) % 6 != 0:
        raise SgcnnError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), num_classes=num_classes, shortcut=shortcut, **kwargs)


@register_model("resnet20", num_classes=10, input_size=(3, 32, 32), defaults=CIFAR)
def resnet20(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-20 for CIFAR: 3 x 3 basic blocks, 0.27M parameters."""
    return cifar_resnet(20, num_classes=num_classes, **kwargs)


@register_model("resnet32", num_classes=10, input_size=(3, 32, 32), defaults=CIFAR)
def resnet32(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-32 for CIFAR: 3 x 5 basic blocks, 0.46M parameters."""
    return cifar_resnet(32, num_classes=num_classes, **kwargs)


@register_model("resnet56", num_classes=10, input_size=(3, 32, 32), defaults=CIFAR)
def resnet56(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-56 for CIFAR: 3 x 9 basic blocks, 0.85M parameters."""
    return cifar_resnet(56, num_classes=num_classes, **kwargs)


@register_model("resnet110", num_classes=10, input_size=(3, 32, 32), defaults=CIFAR)
def resnet110(num_classes: int = 10, **kwargs) -> CifarResNet:
    """ResNet-110 for CIFAR: 3 x 18 basic blocks, 1.7M parameters."""
    return cifar_resnet(110, num_classes=num_classes, **kwargs)
