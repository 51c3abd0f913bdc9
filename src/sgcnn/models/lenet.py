"""LeNet-5, Caffe variant, for 28 x 28 MNIST digits.

The network of the Caffe MNIST example (LeCun et al., "Gradient-based learning applied to
document recognition", Proc. IEEE 1998, as trained in Caffe's ``lenet_train_test.prototxt``),
the LeNet-5 baseline of the SG-CNN paper (Guo et al. 2020, Table 1)::

    conv1 20@5x5 -> maxpool 2 -> conv2 50@5x5 -> maxpool 2 -> fc1 500 -> ReLU -> fc2 classes
    28x28           24x24        12x12          8x8          4x4 (800 features)

As in Caffe, the only non-linearity is the ReLU after ``fc1``. Conv and linear layers carry
biases: 431,080 parameters and 2,293,000 multiply-accumulates of their weights for 10 classes
(the paper quotes 431K / 2294K; 2,293,510 if the fc biases are counted too).
"""

from __future__ import annotations

import torch
from torch import nn

from sgcnn.models._defaults import MNIST
from sgcnn.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


@register_model("lenet5", num_classes=10, input_size=(1, 28, 28), defaults=MNIST)
def lenet5(num_classes: int = 10, **kwargs) -> LeNet5:
    """LeNet-5 (Caffe variant) for MNIST."""
    return LeNet5(num_classes=num_classes, **kwargs)
