"""The baselines of self-grouping (grouping.method): structure, sparsity, errors."""

import pytest
import torch
from torch import nn

import sgcnn
from sgcnn.core.alternatives import METHODS, create_pruner
from sgcnn.core.filter_pruning import producer_consumers
from sgcnn.engine.config import resolve_config
from sgcnn.nn.masked import MaskedConv2d

SIZE = (3, 16, 16)


def _model(name="test_resnet"):
    torch.manual_seed(0)
    return sgcnn.create_model(name)


def _masks(model):
    return {n: m.sg_mask.clone() for n, m in model.named_modules() if isinstance(m, MaskedConv2d)}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "l1filter"])
def test_every_method_prunes_the_same_layers_to_the_target(method):
    model = _model()
    report = create_pruner(method, model, groups=4, seed=0, input_size=SIZE).step(0.5)
    sg_layers = sgcnn.SelfGrouper(_model(), groups=4, seed=0, input_size=SIZE).selection.layers
    assert [r.name for r in report.layers] == sg_layers
    for r in report.layers:
        assert abs(r.sparsity - 0.5) <= 0.5 / r.inputs + 1e-9, r


def test_groupconv_is_standard_group_convolution_at_one_minus_one_over_g():
    model = _model("test_vgg")
    create_pruner("groupconv", model, input_size=SIZE).step(0.75)  # g = 4
    for name, layer in model.named_modules():
        if isinstance(layer, MaskedConv2d):
            n, c = layer.sg_mask.shape
            assert torch.equal(torch.bincount(layer.sg_labels), torch.full((4,), n // 4))
            assert layer.sg_keep.sum(0).eq(1).all()  # each channel in exactly one group: disjoint
            for j in range(4):  # group j: filters block j, channels block j
                want = torch.zeros(n, c, dtype=torch.bool)
                want[j * n // 4 : (j + 1) * n // 4, j * c // 4 : (j + 1) * c // 4] = True
                block = layer.sg_mask & (layer.sg_labels == j).unsqueeze(1)
                assert torch.equal(block, want), name


def test_random_keeps_sg_group_sizes_and_kept_counts_but_not_the_choice():
    sg, rnd = _model(), _model()
    sgcnn.SelfGrouper(sg, groups=4, seed=0, input_size=SIZE).step(0.6)
    create_pruner("random", rnd, groups=4, seed=0, input_size=SIZE).step(0.6)
    sg_layers = dict(sg.named_modules())
    differs = False
    for name, layer in rnd.named_modules():
        if isinstance(layer, MaskedConv2d):
            ref = sg_layers[name]
            assert torch.equal(torch.bincount(layer.sg_labels), torch.bincount(ref.sg_labels))
            assert torch.equal(layer.sg_keep.sum(1), ref.sg_keep.sum(1))
            assert torch.equal(layer.sg_mask, layer.sg_keep[layer.sg_labels])
            differs |= not torch.equal(layer.sg_mask, ref.sg_mask)
    assert differs
    again = _model()
    create_pruner("random", again, groups=4, seed=0, input_size=SIZE).step(0.6)
    assert all(
        torch.equal(a, b) for a, b in zip(_masks(again).values(), _masks(rnd).values(), strict=True)
    )


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_kernel_l1_keeps_each_filters_strongest_channels_and_sg_kernel_count(target):
    model, sg = _model(), _model()
    create_pruner("kernel_l1", model, input_size=SIZE).step(target)
    sgcnn.SelfGrouper(sg, groups=4, seed=0, input_size=SIZE).step(target)
    layer = model.layer1[0].conv2
    dense = _model().layer1[0].conv2.weight.detach()
    norms = dense.abs().sum((2, 3))
    n_filters, c = norms.shape
    total = round((1 - target) * n_filters * c)  # 8 x 8 at 0.7: 19 kernels, not 8 x round(2.4)
    assert layer.sg_mask.sum() == total
    sg_kept = sg.layer1[0].conv2.sg_mask.sum().item()  # SG: the target up to its groups' sizes
    assert abs(sg_kept - total) <= torch.bincount(sg.layer1[0].conv2.sg_labels).max()
    counts = layer.sg_mask.sum(1)
    assert set(counts.tolist()) <= {total // n_filters, total // n_filters + 1}
    for n in range(n_filters):
        kept = layer.sg_mask[n].nonzero().flatten()
        assert norms[n, kept].min() >= norms[n][~layer.sg_mask[n]].max()
    extra, k = counts > total // n_filters, total // n_filters  # the extra kernel went to the
    nxt = norms.sort(1, descending=True).values[:, k]  # filters whose next channel is strongest
    if extra.any() and (~extra).any():
        assert nxt[extra].min() >= nxt[~extra].max()
    assert torch.equal(layer.sg_labels, torch.arange(n_filters))


def test_l1filter_removes_whole_filters_and_their_consumer_inputs_at_sg_flops():
    model, sg = _model(), _model()
    pruner = create_pruner("l1filter", model, input_size=SIZE)
    pairs = [("layer1.0.conv1", "layer1.0.conv2"), ("layer2.0.conv1", "layer2.0.conv2")]
    assert pruner.pairs == pairs
    pruner.step(0.5)
    sgcnn.SelfGrouper(sg, groups=4, seed=0, input_size=SIZE).step(0.5)
    flops, sg_flops = sgcnn.count(model, SIZE)["flops"], sgcnn.count(sg, SIZE)["flops"]
    assert abs(flops - sg_flops) <= 0.05 * sg_flops  # 8-filter layers: coarse steps
    conv1, conv2 = model.layer1[0].conv1, model.layer1[0].conv2
    removed = ~conv1.sg_mask.any(1)
    assert 0 < removed.sum() < len(removed)
    assert conv1.sg_mask[~removed].all()  # kept filters are whole
    assert torch.equal(conv2.sg_mask.any(0), ~removed)  # consumer reads only kept channels
    norms = _model().layer1[0].conv1.weight.detach().abs().sum((1, 2, 3))
    assert norms[removed].max() <= norms[~removed].min()  # smallest L1 norms went
    assert not conv1.weight[removed].any()


def test_l1filter_masked_model_equals_the_smaller_dense_network():
    model = _model().eval()
    create_pruner("l1filter", model, input_size=SIZE).step(0.5)
    block = model.layer1[0]
    x = torch.randn(2, 8, 16, 16)
    keep = block.conv1.sg_mask.any(1)
    small1 = nn.Conv2d(8, int(keep.sum()), 3, padding=1, bias=False)
    small1.weight.data = block.conv1.weight[keep].detach()
    small2 = nn.Conv2d(int(keep.sum()), 8, 3, padding=1, bias=False)
    small2.weight.data = block.conv2.masked_weight()[:, keep].detach()
    bn = block.bn1
    stats = (bn.running_mean[keep], bn.running_var[keep], bn.weight[keep], bn.bias[keep])
    h = torch.relu(nn.functional.batch_norm(small1(x), *stats, eps=bn.eps))
    want = small2(h)
    got = block.conv2(block.relu(block.bn1(block.conv1(x))))
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", METHODS)
def test_pruned_weights_stay_zero_after_a_training_step(method):
    model = _model()
    create_pruner(method, model, groups=4, seed=0, input_size=SIZE).step(0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        loss = model(torch.randn(4, *SIZE)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for layer in model.modules():
        if isinstance(layer, MaskedConv2d):
            assert (layer.weight[~layer.sg_mask] == 0).all()


def test_unreachable_sparsity_names_the_layer_and_changes_nothing():
    model = _model()
    pruner = create_pruner("groupconv", model, input_size=SIZE)
    before = _masks(model)
    with pytest.raises(sgcnn.SgcnnError, match=r"layer 'layer1\.0\.conv1'.*reached 87\.5%"):
        pruner.step(0.99)  # 8 input channels: at least 1 of 8 is kept
    assert all(torch.equal(before[n], m) for n, m in _masks(model).items())


def test_l1filter_without_removable_filters_and_unknown_method_are_errors():
    with pytest.raises(sgcnn.SgcnnError, match="l1filter finds no layer"):
        create_pruner("l1filter", _model(), include=["layer1.0.conv2"], input_size=SIZE)
    with pytest.raises(sgcnn.SgcnnError, match="valid: sg, groupconv, random"):
        create_pruner("magic", _model())
    with pytest.raises(sgcnn.SgcnnError, match="left to self-group"):
        create_pruner("groupconv", nn.Sequential(nn.Conv2d(3, 3, 3, groups=3)))


@pytest.mark.parametrize("method", ["groupconv", "random", "kernel_l1", "l1filter"])
def test_alternatives_prune_once_from_dense_and_say_so_when_built(method):
    """Refused when the pruner is built (before a run trains anything), not at its step."""
    model = _model()
    create_pruner("kernel_l1", model, input_size=SIZE).step(0.3)
    with pytest.raises(sgcnn.SgcnnError, match="already pruned"):
        create_pruner(method, model, input_size=SIZE)


def test_config_checks_the_method():
    assert resolve_config({}).grouping.method == "sg"
    with pytest.raises(sgcnn.SgcnnError, match=r"grouping\.method must be one of sg, groupconv"):
        resolve_config({"grouping": {"method": "l2", "scheme": "G", "conv": [0.5]}})
    with pytest.raises(sgcnn.SgcnnError, match=r"use grouping\.scheme=G"):
        resolve_config({"grouping": {"method": "random", "scheme": "LG", "conv": [0.5]}})


def test_l1filter_takes_input_size_in_the_forms_selfgrouper_takes():
    for size in (SIZE[1], SIZE, torch.zeros(2, *SIZE)):
        report = create_pruner("l1filter", _model(), input_size=size).step(0.5)
        assert report.layers


def test_producer_consumer_search_skips_residual_outputs():
    model = _model()
    pruner = sgcnn.SelfGrouper(model, input_size=SIZE)
    pairs = producer_consumers(model, pruner.selection.layers, torch.zeros(1, *SIZE))
    assert all(p.endswith("conv1") and c.endswith("conv2") for p, c in pairs)


def test_slim_gives_the_smaller_dense_network_that_computes_the_same():
    from sgcnn.core.filter_pruning import slim

    model = _model()
    create_pruner("l1filter", model, input_size=SIZE).step(0.5)
    model.eval()
    x = torch.randn(2, *SIZE)
    small = slim(model, x)
    assert not any(isinstance(m, MaskedConv2d) for m in small.modules())
    conv1, kept = small.layer1[0].conv1, model.layer1[0].conv1.sg_mask.any(1)
    assert conv1.out_channels == conv1.weight.shape[0] == int(kept.sum()) < len(kept)
    assert small.layer1[0].bn1.num_features == small.layer1[0].conv2.in_channels == kept.sum()
    new = torch.randn(3, *SIZE)  # another input and batch size than the example
    with torch.no_grad():
        torch.testing.assert_close(small(new), model(new), atol=1e-5, rtol=1e-5)
    assert sgcnn.count(small, SIZE)["flops"] == sgcnn.count(model, SIZE)["flops"]


def test_slim_refuses_a_model_that_is_not_filter_pruned():
    from sgcnn.core.filter_pruning import slim

    model = _model()
    sgcnn.SelfGrouper(model, groups=4, seed=0, input_size=SIZE).step(0.5)
    with pytest.raises(sgcnn.SgcnnError, match="not filter-pruned"):
        slim(model, torch.randn(1, *SIZE))
    with pytest.raises(sgcnn.SgcnnError, match="no pruned layers"):
        slim(_model(), torch.randn(1, *SIZE))
