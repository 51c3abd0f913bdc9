"""Model registry and zoo: every model builds, runs, honours num_classes, and has the size
its paper states (parameters and multiply-accumulates counted by hand with forward hooks)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from sgcnn.errors import SgcnnError
from sgcnn.models import create_model, list_models, model_entry, register_model, registry

ZOO = list_models(source="sgcnn")


def conv_linear_params(model: nn.Module) -> int:
    """Weights and biases of Conv2d and Linear layers (BatchNorm left out, as in the paper)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return sum(p.numel() for m in layers for p in m.parameters(recurse=False))


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one image: conv ``weight.numel() * H_out * W_out``, linear
    ``weight.numel()``; BatchNorm, pooling and activations are not counted."""
    macs = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal macs
        spatial = output.shape[-2] * output.shape[-1] if isinstance(module, nn.Conv2d) else 1
        macs += module.weight.numel() * spatial

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *input_size))
    for h in handles:
        h.remove()
    return macs


def test_zoo_is_registered():
    expected = {
        "lenet5",
        "resnet20",
        "resnet32",
        "resnet56",
        "resnet110",
        "densenet121_cifar",
        "vgg16_cifar",
        "test_resnet",
        "test_densenet",
        "test_vgg",
        "test_convnet",
    }
    assert set(ZOO) == expected
    assert set(ZOO) <= set(list_models())


def test_every_torchvision_classifier_is_registered():
    names = set(torchvision.models.list_models(module=torchvision.models))
    assert set(list_models(source="torchvision")) == names
    assert {"resnet50", "densenet201", "mobilenet_v2", "vit_b_16"} <= names
    assert not names & set(ZOO)
    for name in names:
        entry = model_entry(name)
        assert entry.num_classes == 1000
        assert entry.input_size == ((3, 299, 299) if name == "inception_v3" else (3, 224, 224))


@pytest.mark.parametrize("name", ZOO)
def test_zoo_forward_default_and_custom_classes(name):
    torch.manual_seed(0)
    entry = model_entry(name)
    x = torch.randn(2, *entry.input_size)
    model = create_model(name)
    assert model(x).shape == (2, entry.num_classes)
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


def test_tiny_models_are_tiny():
    for name in ("test_resnet", "test_densenet", "test_vgg", "test_convnet"):
        assert sum(p.numel() for p in create_model(name).parameters()) < 50_000


def test_lenet5_matches_caffe_and_paper():
    model = create_model("lenet5")
    # conv1 20*1*25+20, conv2 50*20*25+50, fc1 800*500+500, fc2 500*10+10
    assert conv_linear_params(model) == 520 + 25_050 + 400_500 + 5_010 == 431_080
    # conv1 500*24*24, conv2 25000*8*8, fc1 400000, fc2 5000 (paper: 2294K, which adds the
    # 510 fc biases: 2,293,510).
    assert count_macs(model, (1, 28, 28)) == 288_000 + 1_600_000 + 400_000 + 5_000 == 2_293_000
    assert [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))] == [
        "conv1",
        "conv2",
        "fc1",
        "fc2",
    ]


@pytest.mark.parametrize(
    ("num_classes", "params", "macs"), [(10, 6.89e6, 888.36e6), (100, 6.99e6, 888.45e6)]
)
def test_densenet121_cifar_matches_paper(num_classes, params, macs):
    model = create_model("densenet121_cifar", num_classes=num_classes)
    assert conv_linear_params(model) == pytest.approx(params, rel=0.01)
    assert count_macs(model, (3, 32, 32)) == pytest.approx(macs, rel=0.01)
    # Channel counts pin these exactly: 1024 features into the classifier.
    assert model.classifier.in_features == 1024
    assert conv_linear_params(model) == 6_862_528 + 1025 * num_classes
    assert count_macs(model, (3, 32, 32)) == 888_340_480 + 1024 * num_classes


def test_cifar_resnet_sizes():
    # ResNet-56, option A: the well-known 0.85M (853,018 with BatchNorm).
    model = create_model("resnet56")
    assert conv_linear_params(model) == 848_954
    assert sum(p.numel() for p in model.parameters()) == 853_018
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 55  # stem + 27 blocks x 2: option A adds no conv
    # Option B adds two 1x1 projections: 16*32 + 32*64 weights.
    model_b = create_model("resnet56", shortcut="B")
    assert conv_linear_params(model_b) == 848_954 + 16 * 32 + 32 * 64
    assert [m.kernel_size for m in model_b.modules() if isinstance(m, nn.Conv2d)].count((1, 1)) == 2
    for depth in (20, 32, 110):
        n_convs = sum(isinstance(m, nn.Conv2d) for m in create_model(f"resnet{depth}").modules())
        assert n_convs + 1 == depth  # convs + fc


def test_option_a_shortcut_is_subsample_and_zero_pad():
    torch.manual_seed(0)
    block = create_model("resnet20").layer2[0]
    x = torch.randn(2, 16, 8, 8)
    s = block.downsample(x)
    assert s.shape == (2, 32, 4, 4)
    torch.testing.assert_close(s[:, 8:24], x[:, :, ::2, ::2])
    assert s[:, :8].abs().sum() == 0 and s[:, 24:].abs().sum() == 0


def test_bad_shortcut_is_a_user_error():
    with pytest.raises(SgcnnError, match="shortcut"):
        create_model("resnet20", shortcut="C")


def test_vgg16_cifar_structure():
    model = create_model("vgg16_cifar")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert isinstance(model.classifier, nn.Linear) and model.classifier.in_features == 512
    assert conv_linear_params(model) == 14_715_594
    assert count_macs(model, (3, 32, 32)) == 313_201_664


def test_tiny_models_have_their_edge_cases():
    convs = [m for m in create_model("test_resnet").modules() if isinstance(m, nn.Conv2d)]
    assert sum(m.kernel_size == (1, 1) for m in convs) == 1  # one 1x1 projection shortcut
    assert isinstance(create_model("test_resnet").layer1[0].downsample, nn.Identity)
    convs = [m for m in create_model("test_convnet").modules() if isinstance(m, nn.Conv2d)]
    assert any(m.groups == 2 for m in convs)
    assert any(m.groups == m.in_channels == m.out_channels > 1 for m in convs)  # depthwise
    names = [n for n, _ in create_model("test_densenet").named_modules()]
    assert "features.transition1.conv" in names and "features.denseblock2.denselayer2" in names


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "googlenet"])
def test_torchvision_models_build_and_run(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    y = model.train()(torch.randn(2, 3, 64, 64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 7)


def test_torchvision_kwargs_reach_the_builder():
    model = create_model("googlenet", num_classes=5, aux_logits=True)
    assert model.aux1 is not None
    with pytest.raises(SgcnnError, match="resnet18"):
        create_model("resnet18", no_such_argument=1)


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(SgcnnError, match="'resnet50' is registered already"):
        register_model("resnet50", num_classes=10, input_size=(3, 32, 32))(lambda **kw: None)
    register_model("dummy", num_classes=2, input_size=(1, 4, 4))(lambda **kw: nn.Identity())
    with pytest.raises(SgcnnError, match="dummy"):
        register_model("dummy", num_classes=2, input_size=(1, 4, 4))(lambda **kw: nn.Identity())


def test_unknown_model_suggests_close_names():
    with pytest.raises(SgcnnError) as info:
        create_model("resnet5")
    message = str(info.value)
    assert "resnet5'" in message
    assert "resnet50" in message or "resnet56" in message
    with pytest.raises(SgcnnError, match="num_classes"):
        create_model("lenet5", num_classes=0)
