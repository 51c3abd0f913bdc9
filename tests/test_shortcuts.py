"""Shortcut projections are found by following the data path, whatever sits on the branch."""

import pytest
import torch
from torch import nn

import sgcnn
from sgcnn.core.selection import select_layers


class _Block(nn.Module):
    """A residual block whose shortcut is ``pre -> 1x1 conv -> BN`` (ResNet-D when ``pre`` is
    an average pool)."""

    def __init__(self, pre: nn.Module, main_convs: int = 2) -> None:
        super().__init__()
        layers = [nn.Conv2d(8, 16, 3, 2, 1)] + [nn.Conv2d(16, 16, 3, 1, 1)] * (main_convs - 1)
        self.main = nn.Sequential(*layers)
        self.down = nn.Sequential(pre, nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16))

    def forward(self, x):
        return torch.relu(self.main(x) + self.down(x))


class _Net(nn.Module):
    def __init__(self, pre: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.block = _Block(pre)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.block(torch.relu(self.stem(x)))
        return self.head(x.mean((2, 3)))


class _Pad(nn.Module):
    def forward(self, x):
        return nn.functional.pad(x, (0, 1, 0, 1))[..., :-1:2, :-1:2]


@pytest.mark.parametrize(
    "pre",
    [
        nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),  # ResNet-D
        nn.Sequential(nn.BatchNorm2d(8), nn.AvgPool2d(2)),  # BatchNorm, then pooling
        _Pad(),  # padding (and a strided slice)
    ],
    ids=["avgpool", "bn-avgpool", "pad"],
)
@pytest.mark.parametrize("traced", ["fx", "run"])
def test_projection_after_pooling_padding_or_bn_stays_a_shortcut(pre, traced):
    example = torch.zeros(1, 3, 8, 8) if traced == "run" else None
    s = select_layers(_Net(pre), example_input=example)
    assert s.shortcuts == ["block.down.1"]
    assert s.stems == ["stem"]
    assert "block.down.1" not in s.layers and "block.main.0" in s.layers


def test_a_branch_with_two_convolutions_is_not_a_shortcut():
    class TwoConvBranch(_Net):
        def __init__(self) -> None:
            super().__init__(nn.Conv2d(8, 8, 3, 2, 1))  # a weighted layer before the 1x1 conv

    s = select_layers(TwoConvBranch())
    assert s.shortcuts == []
    assert {"block.down.0", "block.down.1"} <= set(s.layers)


def test_densenet_transitions_stay_self_grouped():
    model = sgcnn.create_model("test_densenet")
    s = select_layers(model)
    assert s.shortcuts == []
    transitions = [n for n, m in model.named_modules() if "trans" in n and isinstance(m, nn.Conv2d)]
    assert transitions and set(transitions) <= set(s.layers)


@pytest.mark.parametrize("name", ["resnet18", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_resnet_variants(name):
    model = sgcnn.create_model(name, num_classes=10)
    first = 1 if name == "resnet18" else 0  # bottleneck stages project in layer1 too
    s = select_layers(model)
    assert s.stems == ["conv1"]
    assert s.shortcuts == [f"layer{i}.0.downsample.0" for i in range(1 + first, 5)]


@pytest.mark.parametrize(
    ("name", "stages"),
    [("resnet18d", (2, 3, 4)), ("resnet26t", (1, 2, 3, 4)), ("resnet18", (2, 3, 4))],
)
def test_timm_resnet_variants_keep_their_shortcuts_dense(name, stages):
    timm = pytest.importorskip("timm")
    want = [f"layer{i}.0.downsample.{0 if name == 'resnet18' else 1}" for i in stages]
    for example in (None, torch.zeros(1, 3, 64, 64)):  # fx and a recorded forward agree
        model = timm.create_model(name, pretrained=False, num_classes=10)
        s = select_layers(model, example_input=example)
        assert s.shortcuts == want
        assert not set(want) & set(s.layers)


def test_resnet18d_self_grouping_leaves_its_shortcuts_dense():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18d", pretrained=False, num_classes=10)
    report = sgcnn.self_group_(model, 0.5, groups=4, include=["layer2.*"])
    assert report.shortcuts == [f"layer{i}.0.downsample.1" for i in (2, 3, 4)]
    modules = dict(model.named_modules())
    assert type(modules["layer2.0.downsample.1"]) is nn.Conv2d
    assert "layer2.0.downsample.1" not in sgcnn.group_structure(model)
