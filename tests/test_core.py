"""The SG-CNN algorithm, step by step (docs/method.md section 1)."""

import numpy as np
import pytest
import torch
from torch import nn

import sgcnn
from sgcnn.core.clustering import cluster_filters
from sgcnn.core.importance import importance_vectors
from sgcnn.core.pruning import centroid_prune, group_centroids
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear


def test_importance_is_masked_l1_of_each_kernel():
    conv = nn.Conv2d(3, 4, 3)
    mask = torch.rand(4, 3) > 0.3
    got = importance_vectors(conv, mask)
    w = conv.weight.detach().double()
    for n in range(4):
        for c in range(3):
            want = (w[n, c].abs().sum() * mask[n, c]).item()
            assert got[n, c].item() == pytest.approx(want)
    fc = nn.Linear(5, 2)
    assert torch.equal(importance_vectors(fc), fc.weight.detach().abs().double())


def test_importance_rejects_nan_weights():
    conv = nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(sgcnn.SgcnnError, match="NaN or inf"):
        importance_vectors(conv)


def test_kmeans_finds_planted_groups_and_is_seeded():
    rng = np.random.default_rng(0)
    centers = rng.uniform(0, 10, size=(4, 6))
    points = np.repeat(centers, 5, axis=0) + rng.normal(0, 0.01, size=(20, 6))
    labels = cluster_filters(torch.from_numpy(points), groups=4, seed=0)
    for block in labels.view(4, 5):  # each planted group is one cluster
        assert len(set(block.tolist())) == 1
    assert len(set(labels.tolist())) == 4
    assert torch.equal(labels, cluster_filters(torch.from_numpy(points), groups=4, seed=0))


def test_kmeans_clamps_groups_and_relabels_densely():
    data = torch.zeros(5, 3, dtype=torch.float64)  # identical vectors: one group
    labels = cluster_filters(data, groups=16, seed=0)
    assert labels.tolist() == [0] * 5
    labels = cluster_filters(torch.rand(3, 4, dtype=torch.float64), groups=16, seed=0)
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_centroid_pruning_matches_the_rule_by_hand():
    importance = torch.tensor(
        [[1.0, 8.0, 3.0], [3.0, 6.0, 1.0], [5.0, 0.0, 9.0], [7.0, 2.0, 7.0]], dtype=torch.float64
    )
    labels = torch.tensor([0, 0, 1, 1])
    mask = torch.ones(4, 3, dtype=torch.bool)
    centroids = group_centroids(importance, labels)
    assert centroids.tolist() == [[2.0, 7.0, 2.0], [6.0, 1.0, 8.0]]
    keep, new_mask = centroid_prune(importance, labels, mask, 0.5)
    # values (each centroid once per member): 2,7,2,2,7,2,6,1,8,6,1,8 -> median 4.0
    assert keep.tolist() == [[False, True, False], [True, False, True]]
    assert new_mask.tolist() == [[False, True, False]] * 2 + [[True, False, True]] * 2


def test_centroid_pruning_never_regrows_and_zero_prunes_nothing():
    importance = torch.rand(8, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mask = torch.rand(8, 5) > 0.5
    _, new_mask = centroid_prune(importance * mask, labels, mask, 0.0)
    assert torch.equal(new_mask, mask)
    _, new_mask = centroid_prune(importance * mask, labels, mask, 0.7)
    assert not (new_mask & ~mask).any()


def _fresh(name="test_resnet", **kw):
    torch.manual_seed(0)
    return sgcnn.create_model(name, **kw)


def test_self_group_swaps_layers_and_leaves_stem_and_shortcuts_dense():
    model = _fresh()
    report = sgcnn.self_group_(model, 0.5)
    structure = sgcnn.group_structure(model)
    modules = dict(model.named_modules())
    assert report.stems and report.shortcuts
    for name in report.stems + report.shortcuts:
        assert type(modules[name]) is nn.Conv2d, name
        assert name not in structure
    for name in structure:
        assert isinstance(modules[name], (MaskedConv2d, MaskedLinear))
    # the shortcut projection is a 1x1 conv, found structurally
    assert all(modules[n].kernel_size == (1, 1) for n in report.shortcuts)


def test_structural_detection_on_torchvision_resnet():
    model = sgcnn.create_model("resnet18", num_classes=10)
    report = sgcnn.self_group_(model, 0.3, groups=4, include=["layer1.*", "layer2.*"])
    assert report.stems == ["conv1"]
    assert report.shortcuts == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]
    assert all(r.name.startswith(("layer1.", "layer2.")) for r in report.layers)
    assert "layer2.0.downsample.0" not in {r.name for r in report.layers}


def test_depthwise_and_grouped_convs():
    model = _fresh("test_convnet")
    report = sgcnn.self_group_(model, 0.5, groups=4)
    modules = dict(model.named_modules())
    assert report.depthwise, "test_convnet has a depthwise conv"
    for name in report.depthwise:
        assert modules[name].weight.shape[1] == 1 and not isinstance(modules[name], MaskedConv2d)
    grouped = [n for n, m in modules.items() if isinstance(m, MaskedConv2d) and m.groups > 1]
    assert grouped
    for name in grouped:
        layer = modules[name]
        g = sgcnn.group_structure(model)[name]
        assert g.mask.shape == (layer.out_channels, layer.in_channels // layer.groups)
        # self-groups never span two convolution groups: their filters see other inputs
        per_block = layer.out_channels // layer.groups
        for block in g.labels.split(per_block):
            others = set(g.labels.tolist()) - set(block.tolist())
            assert not (set(block.tolist()) & others)


def test_achieved_sparsity_within_one_point():
    model = _fresh("resnet20")
    for target in (0.3, 0.6, 0.9):
        report = sgcnn.self_group_(model, target)
        for r in report.layers:
            granularity = max(r.group_sizes) / (r.filters * r.inputs)
            assert abs(r.sparsity - r.target_sparsity) <= max(0.01, granularity) + 1e-9, r


def test_same_seed_same_masks_and_groups_share_kept_sets():
    a, b = _fresh(), _fresh()
    sgcnn.self_group_(a, 0.6, seed=3)
    sgcnn.self_group_(b, 0.6, seed=3)
    sa, sb = sgcnn.group_structure(a), sgcnn.group_structure(b)
    assert sa.keys() == sb.keys()
    for name, g in sa.items():
        assert torch.equal(g.mask, sb[name].mask) and torch.equal(g.labels, sb[name].labels)
        # fresh model: each filter's mask is exactly its group's kept set
        assert torch.equal(g.mask, g.keep[g.labels])


def test_progressive_steps_only_shrink_masks_and_zero_weights():
    model = _fresh("resnet20")
    grouper = sgcnn.SelfGrouper(model, groups=16, seed=0)
    previous = None
    for target in (0.1, 0.2, 0.3, 0.5, 0.7):
        report = grouper.step(target)
        masks = {n: g.mask.clone() for n, g in sgcnn.group_structure(model).items()}
        if previous is not None:
            for n, m in masks.items():
                assert not (m & ~previous[n]).any(), f"{n} regrew at {target}"
        previous = masks
        assert all(abs(r.sparsity - target) < 0.02 for r in report.layers)
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            assert (m.weight[~m.sg_mask] == 0).all()


def test_masked_weights_get_zero_gradient_and_stay_zero_through_sgd():
    model = _fresh()
    sgcnn.self_group_(model, 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3, 16, 16)).sum().backward()
        opt.step()
    for m in model.modules():
        if isinstance(m, MaskedConv2d):
            assert (m.weight[~m.sg_mask] == 0).all()
            assert (m.weight.grad[~m.sg_mask] == 0).all()


def test_masked_model_computes_with_w_times_m():
    model = _fresh().eval()
    x = torch.randn(2, 3, 16, 16)
    sgcnn.self_group_(model, 0.5)
    for m in model.modules():  # put garbage where the mask is zero: output must not change
        if isinstance(m, MaskedConv2d):
            reference = model(x)
            with torch.no_grad():
                m.weight[~m.sg_mask] = 123.0
            torch.testing.assert_close(model(x), reference)
            break


def test_overrides_and_separate_fc_ratio():
    model = _fresh("lenet5")
    report = sgcnn.self_group_(
        model, 0.9, fc_sparsity=0.5, overrides={"fc2": {"sparsity": 0.2, "groups": 2}}
    )
    by_name = {r.name: r for r in report.layers}
    assert by_name["conv2"].target_sparsity == 0.9
    assert by_name["fc1"].target_sparsity == 0.5
    assert by_name["fc2"].target_sparsity == 0.2 and by_name["fc2"].groups <= 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"conv_sparsity": 1.0}, "conv_sparsity must be a fraction"),
        ({"conv_sparsity": -0.1}, "conv_sparsity must be a fraction"),
        ({"conv_sparsity": 0.5, "fc_sparsity": float("nan")}, "fc_sparsity"),
        ({"conv_sparsity": 0.5, "groups": 0}, "groups must be an integer"),
        ({"conv_sparsity": 0.5, "include": ["nope.*"]}, "include pattern 'nope.*' matches no"),
        ({"conv_sparsity": 0.5, "exclude": ["*"]}, "no layer .* is left to self-group"),
        ({"conv_sparsity": 0.5, "overrides": {"x": {"sparsty": 0.1}}}, "unknown keys"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(sgcnn.SgcnnError, match=match):
        sgcnn.self_group_(_fresh("lenet5"), **kwargs)


def test_model_without_eligible_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, groups=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(sgcnn.SgcnnError, match="no layer of Sequential is left"):
        sgcnn.self_group_(model, 0.5)


def test_untraceable_model_needs_input_size_then_works():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3)
            self.body = nn.Conv2d(8, 8, 3)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            x = self.stem(x)
            if x.sum() > -1e9:  # data-dependent control flow: fx cannot trace this
                x = self.body(x)
            return self.head(x.mean((2, 3)))

    with pytest.raises(sgcnn.SgcnnError, match="input_size"):
        sgcnn.self_group_(Dynamic(), 0.5)
    model = Dynamic()
    report = sgcnn.self_group_(model, 0.5, groups=2, input_size=(3, 12, 12))
    assert report.stems == ["stem"]
    assert [r.name for r in report.layers] == ["body", "head"]


def test_input_size_takes_the_forms_count_takes():
    """SelfGrouper's input_size and count's accept the same forms (H, (C, H, W), a full
    shape, an example tensor) and give the same selection."""
    layers = set()
    for size in (16, (3, 16, 16), (2, 3, 16, 16), torch.zeros(2, 3, 16, 16)):
        grouper = sgcnn.SelfGrouper(_fresh(), input_size=size)
        layers.add(tuple(grouper.selection.layers))
    assert len(layers) == 1 and layers.pop()


def test_run_tracing_finds_shortcuts_like_fx():
    by_fx = sgcnn.self_group_(_fresh(), 0.5)
    by_run = sgcnn.self_group_(_fresh(), 0.5, input_size=(3, 16, 16))
    assert by_fx.stems == by_run.stems and by_fx.shortcuts == by_run.shortcuts


def test_percentile_over_multiplicities_is_numpy_percentile_exactly():
    from sgcnn.core.pruning import percentile_of_repeated

    rng = np.random.default_rng(0)
    for trial in range(200):
        values = rng.integers(0, 6, size=7).astype(float) if trial % 2 else rng.random(7)
        counts = rng.integers(0, 5, size=7)
        counts[0] += 1
        q = float(rng.choice([0.0, 10.0, 50.0, 95.0, 99.0, 100.0, rng.uniform(0, 100)]))
        want = np.percentile(np.repeat(values, counts), q)
        assert percentile_of_repeated(values, counts, q) == want


def test_centroid_pruning_equals_the_flattened_list_rule():
    rng = np.random.default_rng(1)
    for _ in range(20):
        importance = torch.from_numpy(rng.random((30, 9)))
        labels = torch.from_numpy(rng.integers(0, 5, size=30))
        labels = torch.unique(labels, return_inverse=True)[1]
        mask = torch.from_numpy(rng.random((30, 9)) > 0.3)
        importance = importance * mask
        p = float(rng.uniform(0.05, 0.95))
        keep, new_mask = centroid_prune(importance, labels, mask, p)
        centroids = group_centroids(importance, labels)
        values = (centroids[labels] * mask).numpy().ravel()
        threshold = np.percentile(values, 100 * p)
        assert torch.equal(keep, centroids > threshold)
        assert torch.equal(new_mask, mask & (centroids > threshold)[labels])


def test_patterns_that_match_nothing_and_bad_seeds_are_errors():
    """A typo in an exclude pattern or override would prune what was meant to be kept; a
    string is one pattern, not a list of its characters."""
    from sgcnn.errors import SgcnnError

    def fresh():
        return sgcnn.create_model("test_convnet")

    model = fresh()
    sgcnn.self_group_(model, 0.5, groups=2, exclude="fc1")
    assert not isinstance(model.fc1, MaskedLinear) and isinstance(model.fc2, MaskedLinear)
    with pytest.raises(SgcnnError, match="exclude pattern 'fc9' matches no"):
        sgcnn.self_group_(fresh(), 0.5, groups=2, exclude=["fc9"])
    with pytest.raises(SgcnnError, match="override pattern 'nomatch\\*' matches none"):
        sgcnn.self_group_(fresh(), 0.5, groups=2, overrides={"nomatch*": {"sparsity": 0.3}})
    model = fresh()
    sgcnn.self_group_(model, 0.6, groups=2)
    with pytest.warns(UserWarning, match="already sparser than this step's target"):
        sgcnn.self_group_(model, 0.3, groups=2)  # cumulative: nothing changes, and it says so
    with pytest.raises(SgcnnError, match="conv_sparsity is required"):
        sgcnn.self_group_(fresh(), conv_sparsity=None)
    for seed in (-1, 1.5, 2**32):
        with pytest.raises(SgcnnError, match="seed must be an integer"):
            sgcnn.self_group_(fresh(), 0.5, groups=2, seed=seed)
