"""Params / FLOPs counting against hand-computed values."""

import pytest
import torch
from torch import nn

import sgcnn
from sgcnn.nn.masked import MaskedConv2d


def test_conv_and_linear_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 8x8 -> 4x4
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 4, 1, bias=False),
        nn.Flatten(),
        nn.Linear(4 * 16, 10),
    )
    c = sgcnn.count(model, (3, 8, 8))
    assert c["params"] == (8 * 3 * 9 + 8) + 8 * 4 + (64 * 10 + 10)
    assert c["flops"] == 8 * 3 * 9 * 16 + 8 * 4 * 16 + 64 * 10
    assert c["params_with_bn"] == c["params"] + 16
    assert c["params_total"] == sum(p.numel() for p in model.parameters())
    assert [layer["name"] for layer in c["layers"]] == ["0", "2", "4"]


def test_masked_weights_are_not_counted():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    model[0] = MaskedConv2d.from_dense(model[0])
    mask = torch.zeros(6, 4, dtype=torch.bool)
    mask[:3, :2] = True  # 6 of 24 kernels kept
    model[0].set_groups_(torch.zeros(6, dtype=torch.long), mask[:1], mask)
    c = sgcnn.count(model, (4, 5, 5))
    assert c["params"] == 6 * 9 + 6
    assert c["flops"] == 6 * 9 * 25
    assert c["params_total"] == 6 * 9 + 6


def test_grouped_conv_and_linear_on_sequences():
    conv = nn.Conv2d(8, 8, 3, groups=4, bias=False)  # weight [8, 2, 3, 3]
    assert sgcnn.count(nn.Sequential(conv), (8, 5, 5))["flops"] == 8 * 2 * 9 * 9

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.proj = nn.Linear(4, 5)

        def forward(self, x):
            return self.proj(self.conv(x).flatten(2).transpose(1, 2))  # 6 tokens

    assert sgcnn.count(Tokens(), (3, 2, 3))["flops"] == 3 * 4 * 6 + 4 * 5 * 6


def test_count_restores_training_mode():
    model = sgcnn.create_model("lenet5").train()
    sgcnn.count(model, 28)
    assert model.training


def test_full_shape_and_example_tensor_give_per_image_counts():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 10))
    one = sgcnn.count(model, (3, 6, 6))
    for size in ((5, 3, 6, 6), torch.randn(5, 3, 6, 6), torch.randn(3, 6, 6)):
        c = sgcnn.count(model, size)
        assert (c["params"], c["flops"]) == (one["params"], one["flops"])
    assert one["flops"] == 8 * 3 * 9 * 36 + 8 * 36 * 10


def test_bad_example_input_is_a_user_error():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    for bad in (torch.randn(3, 6), (1, 2, 3, 4, 5), (0, 4, 4)):
        with pytest.raises(sgcnn.SgcnnError, match="input"):
            sgcnn.count(model, bad)
