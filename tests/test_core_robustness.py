"""Robustness of the core on ordinary models that are not the paper's: frozen BatchNorm, other
weight dtypes, all-zero layers, threaded clustering, and l1filter's channel paths."""

import copy
import threading
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import sgcnn
from _shared import FAST_KMEANS
from sgcnn.core.alternatives import create_pruner
from sgcnn.core.clustering import cluster_filters
from sgcnn.core.filter_pruning import slim
from sgcnn.core.importance import importance_vectors
from sgcnn.core.pruning import centroid_prune
from sgcnn.nn.masked import MaskedConv2d

SIZE = (3, 16, 16)


# --- a frozen BatchNorm stays frozen -----------------------------------------------------------


def _frozen_bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = sgcnn.create_model("test_resnet").train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # frozen BN in a model in train mode (detection, fine-tuning)
    return model


def _bn_modes(model):
    return [m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize(
    "call",
    [
        lambda m: sgcnn.SelfGrouper(m, input_size=SIZE),
        lambda m: sgcnn.count(m, SIZE),
    ],
    ids=["SelfGrouper", "count"],
)
def test_tracing_and_counting_keep_each_module_mode(call):
    model = _frozen_bn_model()
    call(model)
    assert model.training and not any(_bn_modes(model))
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        model(torch.randn(4, *SIZE))  # a training-mode forward: frozen stats must not move
    after = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))


def test_modes_are_restored_when_the_model_fails():
    model = _frozen_bn_model()
    with pytest.raises(sgcnn.SgcnnError, match="failed on an input"):
        sgcnn.count(model, (5, 16, 16))  # wrong channel count
    assert model.training and not any(_bn_modes(model))


# --- importance is summed in float64, whatever the weight's dtype ------------------------------


def test_importance_is_summed_in_float64_for_any_dtype():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3).to(torch.bfloat16)
    want = conv.weight.detach().double().abs().sum((2, 3))
    assert torch.equal(importance_vectors(conv), want)
    assert torch.equal(importance_vectors(conv), importance_vectors(copy.deepcopy(conv).float()))


def test_a_bf16_model_groups_as_its_float32_copy():
    torch.manual_seed(0)
    body = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1)]
    bf16 = nn.Sequential(*body, nn.ReLU(), nn.Conv2d(128, 64, 3, padding=1)).to(torch.bfloat16)
    fp32 = copy.deepcopy(bf16).float()  # the same weight values
    for model in (bf16, fp32):
        sgcnn.self_group_(model, 0.7, groups=16, seed=0)
    for name, groups in sgcnn.group_structure(bf16).items():
        assert torch.equal(groups.mask, sgcnn.group_structure(fp32)[name].mask), name


# --- ties at zero never prune a layer past its target ------------------------------------------


def test_all_zero_importance_prunes_to_the_target_not_the_whole_layer():
    importance = torch.zeros(10, 32, dtype=torch.float64)
    labels = torch.zeros(10, dtype=torch.long)
    mask = torch.ones(10, 32, dtype=torch.bool)
    keep, new_mask = centroid_prune(importance, labels, mask, 0.5)
    assert new_mask.sum() == 160  # P = floor(319 / 2) + 1 = 160 pruned: whole channels
    assert new_mask[:, 16:].all() and not new_mask[:, :16].any()  # ties broken by channel
    assert torch.equal(new_mask, mask & keep[labels])


def test_zero_ties_are_pruned_before_nothing_else_and_only_up_to_the_target():
    torch.manual_seed(0)
    importance = torch.rand(8, 10, dtype=torch.float64) + 0.1
    importance[:, :7] = 0  # 70 % of the pairs tie at zero
    labels = torch.arange(8) % 2
    mask = torch.ones(8, 10, dtype=torch.bool)
    _, new_mask = centroid_prune(importance, labels, mask, 0.5)
    assert new_mask[:, 7:].all()  # every nonzero pair is kept
    assert 1 - new_mask.float().mean() <= 0.5  # not the 70 % a strict '>' would give
    assert 1 - new_mask.float().mean() >= 0.5 - 4 / 80  # within one group's block
    # already sparser than the target (LG): nothing more goes, masks only shrink
    mask = torch.ones(8, 10, dtype=torch.bool)
    mask[:, :6] = False
    _, again = centroid_prune(importance * mask, labels, mask, 0.5)
    assert torch.equal(again, mask)


def test_a_zero_initialised_head_is_pruned_to_its_target():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    nn.init.zeros_(model[6].weight)
    report = sgcnn.self_group_(model, 0.5, groups=4)
    head = next(r for r in report.layers if r.name == "6")
    assert head.sparsity == pytest.approx(0.5)
    conv = next(r for r in report.layers if r.name == "2")
    assert abs(conv.sparsity - 0.5) <= max(conv.group_sizes) / (32 * 16) + 1e-9


# --- clustering leaves the process's warning state alone ---------------------------------------


def test_clustering_in_threads_leaves_warning_filters_alone_and_leaks_nothing(monkeypatch):
    """Two layers clustered at once, interleaved so that the first finishes while the second
    runs (as the grouper's worker threads do): warnings.catch_warnings in a thread would leave
    its 'ignore' filter behind and let the other thread's ConvergenceWarning through."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    fit = KMeans.fit
    a_in, b_in, a_done = threading.Event(), threading.Event(), threading.Event()

    def interleaved_fit(self, *args, **kwargs):
        if threading.current_thread().name == "A":
            a_in.set()
            b_in.wait(10)
        else:
            b_in.set()
            a_done.wait(10)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(KMeans, "fit", interleaved_fit)
    data = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 3, dtype=torch.float64)  # 2 distinct
    results = {}

    def run(name):
        results[name] = cluster_filters(data, 4, 0)
        if name == "A":
            a_done.set()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        first = threading.Thread(target=run, args=("A",), name="A")
        first.start()
        assert a_in.wait(10)
        second = threading.Thread(target=run, args=("B",), name="B")
        second.start()
        first.join()
        second.join()
        assert warnings.filters == before
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for labels in results.values():
        assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # identical rows together, two groups


def test_self_group_of_layers_with_duplicate_rows_warns_nothing():
    from sklearn.exceptions import ConvergenceWarning

    torch.manual_seed(0)
    model = sgcnn.create_model("resnet20")
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels > 3:
            with torch.no_grad():
                m.weight[::2] = 0  # half the filters identical: fewer distinct rows than g
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        before = list(warnings.filters)
        sgcnn.self_group_(model, 0.5, groups=16, kmeans=FAST_KMEANS)
        assert warnings.filters == before
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]


# --- l1filter follows only channel-wise paths, and slim slices every BatchNorm on them ---------


class _Scale(nn.Module):
    """A per-channel scale: an unknown module, which slim could not slice."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


def _chain(*middle) -> nn.Module:
    """stem -> a -> (middle ops) -> b -> ReLU -> BN -> c -> pool -> fc, 32 channels wide;
    ``middle`` are the modules between ``a`` and ``b``, named m0, m1, ..."""
    torch.manual_seed(0)
    layers = [("stem", nn.Conv2d(3, 32, 3, padding=1)), ("act", nn.ReLU())]
    layers += [("a", nn.Conv2d(32, 32, 3, padding=1))]
    layers += [(f"m{i}", m) for i, m in enumerate(middle)]
    layers += [("b", nn.Conv2d(32, 32, 3, padding=1)), ("relu", nn.ReLU())]
    layers += [("bn", nn.BatchNorm2d(32)), ("c", nn.Conv2d(32, 16, 3, padding=1))]
    layers += [("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(16, 4))]
    model = nn.Sequential(OrderedDict(layers))
    for m in model.modules():  # statistics and affine terms that matter when sliced wrong
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm):
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            if m.weight is not None:
                nn.init.uniform_(m.weight, 0.5, 2)
                nn.init.uniform_(m.bias, -1, 1)
    return model


def _prune_and_slim(model):
    pruner = create_pruner("l1filter", model, input_size=SIZE)
    pruner.step(0.5)
    model.eval()
    small = slim(model, torch.randn(2, *SIZE))
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    return pruner, small


@pytest.mark.parametrize(
    "middle",
    [
        [nn.ReLU(), nn.BatchNorm2d(32)],  # BN after the activation
        [nn.BatchNorm2d(32), nn.ReLU(), nn.BatchNorm2d(32)],  # two BNs, both sliced
        [nn.BatchNorm2d(32), nn.Dropout(), nn.MaxPool2d(3, 1, 1), nn.Identity(), nn.SiLU()],
    ],
    ids=["relu-bn", "bn-relu-bn", "bn-dropout-pool-identity-silu"],
)
def test_slim_slices_every_batchnorm_on_a_channelwise_path(middle):
    model = _chain(*middle)
    pruner, small = _prune_and_slim(model)
    assert pruner.pairs == [("a", "b"), ("b", "c")]
    kept = int(model.a.sg_mask.any(1).sum())
    assert 0 < kept < 32 and small.a.out_channels == small.b.in_channels == kept
    for i, m in enumerate(middle):
        if isinstance(m, nn.BatchNorm2d):
            assert getattr(small, f"m{i}").num_features == kept


@pytest.mark.parametrize(
    "middle",
    [
        [nn.ReLU(), nn.GroupNorm(4, 32)],  # mixes channels: not even a smaller network
        [nn.ReLU(), nn.InstanceNorm2d(32, affine=True)],  # per-channel affine slim can't slice
        [nn.ReLU(), nn.LayerNorm([32, 16, 16])],
        [nn.ReLU(), _Scale(32)],  # an unknown module
        [nn.PReLU(32)],
    ],
    ids=["groupnorm", "instancenorm", "layernorm", "unknown-module", "prelu"],
)
def test_other_ops_end_the_path_and_leave_the_producer_whole(middle):
    model = _chain(*middle)
    pruner, small = _prune_and_slim(model)
    assert pruner.pairs == [("b", "c")]
    assert model.a.sg_mask.all() and model.b.sg_mask.any(0).all()  # a whole, b reads all
    assert small.a.out_channels == 32


def test_slim_failing_forward_is_a_clear_error():
    class ShapeDependent(nn.Module):
        """Reads the width of a's output outside any torch op (slim cannot see it)."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, padding=1)
            self.a = nn.Conv2d(32, 32, 3, padding=1)
            self.b = nn.Conv2d(32, 16, 3, padding=1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            h = torch.relu(self.a(torch.relu(self.stem(x))))
            y = self.b(h) * torch.ones(1, h.shape[1] // 2, 1, 1)
            return self.fc(y.mean((2, 3)))

    torch.manual_seed(0)
    model = ShapeDependent()
    create_pruner("l1filter", model, input_size=SIZE).step(0.5)
    with pytest.raises(sgcnn.SgcnnError, match="slimmed network fails on the example input"):
        slim(model.eval(), torch.randn(2, *SIZE))


def test_l1filter_step_requires_a_sparsity():
    pruner = create_pruner("l1filter", _chain(nn.ReLU()), input_size=SIZE)
    with pytest.raises(sgcnn.SgcnnError, match="conv_sparsity is required"):
        pruner.step(None)
    assert all(layer.sg_mask.all() for layer in pruner.layers.values())


def test_l1filter_on_a_model_with_multihead_attention():
    class ConvAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 16, 3, padding=1)
            self.a = nn.Conv2d(16, 16, 3, padding=1)
            self.bn = nn.BatchNorm2d(16)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            x = self.b(torch.relu(self.bn(self.a(torch.relu(self.stem(x))))))
            tokens = x.flatten(2).transpose(1, 2)
            tokens, _ = self.attn(tokens, tokens, tokens)
            return self.fc(tokens.mean(1))

    torch.manual_seed(0)
    model = ConvAttention()
    pruner = create_pruner("l1filter", model, input_size=(3, 8, 8))
    assert pruner.pairs == [("a", "b")]
    pruner.step(0.5)
    assert not model.a.sg_mask.all(1).all()  # filters were removed
    model.eval()
    small = slim(model, torch.randn(2, 3, 8, 8))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    assert isinstance(model.a, MaskedConv2d) and small.a.out_channels < 16


_NEAR_DUPLICATES = """
import warnings, torch
from sgcnn.core.clustering import cluster_filters
base = torch.rand(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
data = base.repeat_interleave(4, 0) + torch.arange(8, dtype=torch.float64)[:, None] * 1e-12
with warnings.catch_warnings(record=True) as caught:
    labels = cluster_filters(data, 6, 0)
print(len(set(labels.tolist())), [str(w.message)[:60] for w in caught])
"""


def test_rows_distinct_only_in_their_last_bits_leak_no_warning():
    """k is capped at exactly distinct rows; rows that differ by 1e-12 are distinct to that
    count but one point to k-means: its 'found fewer clusters' warning is filtered by the
    filter sgcnn installs (in a fresh process: pytest resets filters around each test)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _NEAR_DUPLICATES], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    groups, caught = run.stdout.split(" ", 1)
    assert 1 <= int(groups) <= 6 and caught.strip() == "[]"


def test_importance_of_a_layer_without_filters_is_empty():
    from sgcnn.core.importance import importance_vectors

    assert importance_vectors(nn.Conv2d(3, 0, 3)).shape == (0, 3)
