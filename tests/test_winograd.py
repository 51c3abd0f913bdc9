"""The Winograd realizations F(2x2, 3x3) and F(4x4, 3x3): exact on any 3x3 stride-1 layer
(sizes not a multiple of the tile, padding, batch, residual, borders), planned like the direct
kernel, and visible to tracers."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

import sgcnn
from sgcnn.core.clustering import KMeansSettings
from sgcnn.deploy import _native, fast
from sgcnn.deploy.convert import convert

pytestmark = pytest.mark.skipif(not _native.available(), reason="native kernel unavailable")
FAST_KMEANS = KMeansSettings(n_init=1, max_iter=30)


def _spec(cin=24, cout=40, padding=1, conv_groups=1, relu=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.Conv2d(cin, cout, 3, 1, padding, groups=conv_groups)
    sgcnn.self_group_(
        nn.Sequential(layer), 0.6, groups=4, kmeans=FAST_KMEANS, default_exclusions=False
    )
    layer.bias.data.uniform_(-1, 1)
    return fast.spec_from_layer(layer, relu=relu)


def _close(got, want):
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got / scale, want / scale, atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("block", [1, 3])
@pytest.mark.parametrize(
    "batch,h,w,padding", [(2, 14, 14, 1), (3, 7, 9, 1), (1, 1, 1, 1), (2, 6, 5, 0), (1, 5, 8, 2)]
)
def test_matches_the_direct_convolution_with_its_epilogue(tile, block, batch, h, w, padding):
    spec = _spec(padding=padding)
    module = fast.WinogradGroupConv2d.from_spec(spec, block, tile=tile)
    x = torch.randn(batch, 24, h, w) * 3
    with torch.no_grad():
        plain = F.conv2d(x, spec.weight, spec.bias, 1, padding)
        residual = torch.randn_like(plain)
        _close(module(x), plain.relu())
        _close(module(x, residual.clone()), (plain + residual).relu())


@pytest.mark.parametrize("tile", [2, 4])
def test_convolution_groups_and_no_relu(tile):
    spec = _spec(cin=16, cout=32, conv_groups=2, relu=False)
    module = fast.WinogradGroupConv2d.from_spec(spec, tile=tile)
    x = torch.randn(2, 16, 10, 11)
    with torch.no_grad():
        _close(module(x), F.conv2d(x, spec.weight, spec.bias, 1, 1, groups=2))


def test_outputs_stay_finite_when_the_input_holds_huge_values():
    # F(4x4, 3x3) adds inputs with coefficients that cancel only in exact arithmetic: reads past
    # the valid input are zeros or real values, never garbage that could turn into inf / NaN
    spec = _spec()
    module = fast.WinogradGroupConv2d.from_spec(spec, tile=4)
    x = torch.randn(2, 24, 9, 7)
    with torch.no_grad():
        assert torch.isfinite(module(x)).all()


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("h,w", [(9, 7), (6, 5), (16, 16)])
def test_an_unpadded_layer_never_reads_past_its_input(tile, h, w):
    # padding 0 and an input of the caller's (no slack behind it): memory after the input
    # (NaN here) must not reach an output
    spec = _spec(padding=0)
    module = fast.WinogradGroupConv2d.from_spec(spec, tile=tile)
    n = 2 * 24 * h * w
    memory = torch.full((n + 4096,), float("nan"))
    x = memory[:n].view(2, 24, h, w)
    x.copy_(torch.randn(2, 24, h, w))
    with torch.no_grad():
        _close(module(x), F.conv2d(x, spec.weight, spec.bias).relu())


def test_refuses_what_it_cannot_compute():
    for layer in (nn.Conv2d(8, 8, 3, 2, 1), nn.Conv2d(8, 8, 5, 1, 2), nn.Conv2d(8, 8, 3, 1, 2, 2)):
        spec = fast.spec_from_layer(layer)
        assert not fast.WinogradGroupConv2d.supports(spec)
        with pytest.raises(ValueError, match="3x3 stride-1"):
            fast.WinogradGroupConv2d.from_spec(spec)
    with pytest.raises(ValueError, match="tile"):
        fast.WinogradGroupConv2d.from_spec(_spec(), tile=3)


@pytest.mark.parametrize("tile", [2, 4])
def test_spec_gives_the_layer_back_up_to_rounding_without_a_dense_copy(tile):
    spec = _spec()
    module = fast.WinogradGroupConv2d.from_spec(spec, tile=tile)
    assert all(t.shape != spec.weight.shape for t in [*module.parameters(), *module.buffers()])
    back = module.spec()
    torch.testing.assert_close(back.weight, spec.weight, atol=1e-6, rtol=1e-6)
    assert torch.equal(back.weight == 0, spec.weight == 0)  # the mask survives exactly
    assert torch.equal(back.bias, spec.bias) and back.kept_kernels == spec.kept_kernels


@pytest.mark.parametrize("tile,products", [(2, 16), (4, 36)])
def test_executes_fewer_multiply_adds_and_the_flop_counter_agrees(tile, products):
    spec = _spec()
    module = fast.WinogradGroupConv2d.from_spec(spec, tile=tile)
    for size, dropped in ((8, 0), (7, 15)):  # 7x7 outputs: tiles compute 8x8, drop 15
        x = torch.randn(2, 24, size, size)
        executed, padding = module.macs(x.shape)
        useful = fast.useful_macs(spec, x.shape)
        # (m + 2)^2 products per m x m outputs, where the direct convolution needs 9 m^2
        assert (executed - padding) * 9 * tile**2 == useful * products
        assert padding * size * size == (executed - padding) * dropped
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
        assert counter.get_total_flops() // 2 == executed


def _grouped_resnet(size=16):
    model = sgcnn.create_model("resnet20").eval()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, size, size))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model, torch.randn(2, 3, size, size)


def test_converted_network_with_padded_hand_offs_and_in_place_residuals_is_exact():
    masked, x = _grouped_resnet()
    converted = convert(masked, x, tune=False, realizations=("winograd", "native"))
    winograd = [m for m in converted.modules() if isinstance(m, fast.WinogradGroupConv2d)]
    assert len(winograd) >= 10
    assert any(m.input_padded for m in winograd) and any(m.out_pad != (0, 0) for m in winograd)
    assert any(m.accumulate for m in winograd)
    new = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        _close(converted(new), masked(new))
        _close(converted(new), masked(new))  # arena buffers reused


def test_tracers_record_the_operator_and_follow_a_new_input():
    masked, x = _grouped_resnet()
    converted = convert(masked, x, tune=False, realizations=("winograd", "native"))
    new = torch.randn_like(x) * 2
    with torch.no_grad():
        traced = torch.jit.trace(converted, x)
        kinds = {node.kind() for node in traced.inlined_graph.nodes()}
        assert "sgcnn::wino_conv2d" in kinds
        _close(traced(new), masked(new))
        program = torch.export.export(converted, (x,))
        _close(program.module()(new), masked(new))


def test_tracers_record_the_4x4_tile_operator():
    spec = _spec()
    module = nn.Sequential(fast.WinogradGroupConv2d.from_spec(spec, tile=4))
    x, new = torch.randn(2, 24, 9, 9), torch.randn(3, 24, 9, 9)
    with torch.no_grad():
        traced = torch.jit.trace(module, x)
        assert "sgcnn::wino4_conv2d" in {node.kind() for node in traced.inlined_graph.nodes()}
        _close(traced(new), module(new))
        _close(torch.export.export(module, (x,)).module()(x), module(x))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_shares_of_one_block_on_several_threads(threads):
    """Batch 1 on a small map: one block of tiles whose chunks are split into several work
    items; a thread reuses the block's transformed inputs for its next share. Exact whatever
    the number of threads."""
    spec = _spec(cin=32, cout=64)
    x = torch.randn(1, 32, 7, 7)
    with torch.no_grad():
        want = F.conv2d(x, spec.weight, spec.bias, 1, 1).relu()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for tile in (2, 4):
            module = fast.WinogradGroupConv2d.from_spec(spec, 1, rows=2, tile=tile)
            with torch.inference_mode():
                _close(module(x), want)
                _close(module(x), want)
    finally:
        torch.set_num_threads(before)
