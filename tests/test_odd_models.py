"""Models outside the paper's: layers a mask cannot stand in for, shared modules and weights,
residual blocks that are not ResNet's, and user mistakes refused before anything changes."""

import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.nn.parameter import is_lazy

import sgcnn
from _shared import FAST_KMEANS
from sgcnn.core.selection import select_layers
from sgcnn.nn.masked import MaskedConv2d, MaskedLinear
from sgcnn.nn.swap import replace_modules_

MASKED = (MaskedConv2d, MaskedLinear)


def _group(model, sparsity=0.5, **kw):
    return sgcnn.self_group_(model, sparsity, groups=2, kmeans=FAST_KMEANS, **kw)


def _group_warned(model, sparsity=0.5, **kw):
    """The report and the messages of the warnings about layers left dense (checked by the
    tests after the behaviour)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = _group(model, sparsity, **kw)
    return report, [str(w.message) for w in caught if "stay dense" in str(w.message)]


class _Net(nn.Module):
    """stem conv -> ``body`` -> conv -> linear head; ``body`` maps 8 to 16 channels."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = body
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.conv(torch.relu(self.body(torch.relu(self.stem(x)))))
        return self.head(x.mean((2, 3)))


# -- 1. a Conv2d / Linear subclass with its own forward, or a parametrized layer ------------


class _StdConv2d(nn.Conv2d):
    """timm-style weight standardisation, in forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class _Conv2dSame(nn.Conv2d):
    """TF "same" padding computed in forward (timm's Conv2dSame); built with padding 0."""

    def _conv_forward(self, x, weight, bias):
        x = F.pad(x, (1, 1, 1, 1))
        return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, self.groups)


class _LinearScaled(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: _StdConv2d(8, 16, 3, padding=1),
        lambda: _Conv2dSame(8, 16, 3),
        lambda: nn.utils.parametrizations.spectral_norm(nn.Conv2d(8, 16, 3, padding=1)),
        lambda: nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 16, 3, padding=1)),
    ],
    ids=["std-conv", "conv-same", "spectral-norm", "weight-norm"],
)
def test_layers_with_their_own_forward_stay_dense_and_are_listed(make):
    model = _Net(make()).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
    kind = type(model.body)
    report, said = _group_warned(model, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)  # nothing changed at sparsity 0
    assert type(model.body) is kind
    assert "body" not in {r.name for r in report.layers} | set(sgcnn.group_structure(model))
    assert list(report.skipped) == ["body"]
    assert report.to_dict()["skipped"] == report.skipped
    assert len(said) == 1 and "1 layer(s) stay dense" in said[0] and "'body'" in said[0]
    _group_warned(model, 0.6)  # a real step prunes the others, not it
    assert isinstance(model.conv, MaskedConv2d) and model.conv.sparsity() > 0.4
    assert type(model.body) is kind


def test_a_linear_subclass_with_its_own_forward_stays_dense():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), _LinearScaled(8, 8), nn.Linear(8, 2))
    report, said = _group_warned(model)
    assert type(model[2]) is _LinearScaled and isinstance(model[3], MaskedLinear)
    why = "_LinearScaled has its own forward, which a masked layer would drop"
    assert report.skipped == {"2": why} and why in said[0]


def test_timms_linear_is_grouped_like_nn_linear():
    """timm's Linear overrides forward, but only to cast under TorchScript: it is grouped
    (GhostNet's classifier), and the masked model computes what ``W * M`` gives."""
    timm = pytest.importorskip("timm")
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), timm.layers.Linear(8, 8), nn.Linear(8, 2))
    report, said = _group_warned(model, 0.5)
    assert isinstance(model[2], MaskedLinear) and not report.skipped and not said
    x = torch.randn(3, 8)
    with torch.no_grad():
        hidden, fc = F.relu(model[0](x)), model[2]
        want = F.linear(hidden, fc.weight * fc.weight_mask(), fc.bias)
        torch.testing.assert_close(fc(hidden), want)
    assert fc.sparsity() > 0.3


def test_from_dense_refuses_a_layer_it_cannot_stand_in_for():
    with pytest.raises(sgcnn.SgcnnError, match="_StdConv2d has its own forward"):
        MaskedConv2d.from_dense(_StdConv2d(4, 4, 3))
    with pytest.raises(sgcnn.SgcnnError, match="parametrized"):
        MaskedConv2d.from_dense(nn.utils.parametrizations.spectral_norm(nn.Conv2d(4, 4, 3)))
    with pytest.raises(sgcnn.SgcnnError, match="not a Conv2d"):
        MaskedConv2d.from_dense(nn.Linear(4, 4))


def test_old_style_weight_norm_is_still_masked():
    with pytest.warns(FutureWarning):
        body = nn.utils.weight_norm(nn.Conv2d(8, 16, 3, padding=1))
    model = _Net(body)
    _group(model, 0.5)
    assert isinstance(model.body, MaskedConv2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model(x)  # the weight_norm pre-hook recomputes the weight, the mask still applies
        b = model.body
        want = F.conv2d(F.relu(model.stem(x)), b.weight * b.weight_mask(), b.bias, padding=1)
        torch.testing.assert_close(b(F.relu(model.stem(x))), want)
    assert b.sparsity() > 0.3  # (the hook recomputes the weight: masked in forward only)


# -- 2. a layer whose weight its parent applies itself ----------------------------------------


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.attn(x, x, x, need_weights=False)[0]
        return self.head(torch.relu(self.fc(x)).mean(1))


@pytest.mark.parametrize("traced", ["fx", "run"])
def test_multihead_attention_out_proj_stays_dense(traced):
    model = _Attention()
    size = (3, 6, 6) if traced == "run" else None
    report, said = _group_warned(model, 0.7, input_size=size)
    assert not isinstance(model.attn.out_proj, MASKED)
    assert {r.name for r in report.layers} == {"fc", "head"}
    assert list(report.skipped) == ["attn.out_proj"]
    assert "MultiheadAttention applies its weight itself" in said[0]


def test_transformer_encoder_layer_linears_stay_dense():
    """Its inference fast path passes linear1 / linear2's weights to one fused op: a mask there
    would be ignored whenever the model is evaluated."""
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 8), nn.Linear(8, 2))
    report, said = _group_warned(model, 0.5)
    assert type(layer.linear1) is nn.Linear and type(layer.linear2) is nn.Linear
    assert {r.name for r in report.layers} == {"2", "3"}
    assert set(report.skipped) == {"1.self_attn.out_proj", "1.linear1", "1.linear2"}
    assert "TransformerEncoderLayer applies its weight itself" in said[0]


@pytest.mark.parametrize("v2", [False, True])
def test_swin_window_attention_projections_stay_dense(v2):
    swin = torchvision.models.swin_transformer
    extra = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    model = swin.SwinTransformer(
        [4, 4], 16, [1, 1], [2, 2], [4, 4], num_classes=10, **(extra if v2 else {})
    )
    report, said = _group_warned(model, 0.5)
    attention = {f"features.{i}.0.attn.{p}" for i in (1, 3) for p in ("qkv", "proj")}
    modules = dict(model.named_modules())
    assert not any(isinstance(modules[n], MASKED) for n in attention)
    assert report.layers  # the MLPs are still self-grouped
    assert set(report.skipped) == attention and "ShiftedWindowAttention" in said[0]


class _Functional(nn.Module):
    """``fc``'s weight is applied with F.linear by its parent; ``fc`` itself never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.conv = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(torch.relu(self.stem(x))).mean((2, 3))
        return self.head(F.linear(x, self.fc.weight, self.fc.bias))


@pytest.mark.parametrize("traced", ["fx", "run"])
def test_a_weight_applied_outside_its_layer_is_found_and_left_dense(traced):
    model = _Functional()
    size = (3, 8, 8) if traced == "run" else None
    report, said = _group_warned(model, 0.5, input_size=size)
    assert type(model.fc) is nn.Linear
    assert {r.name for r in report.layers} == {"conv", "head"}
    assert list(report.skipped) == ["fc"] and "used outside its forward" in said[0]


# -- 3. shared modules and tied weights -------------------------------------------------------


class _Aliased(nn.Module):
    def __init__(self, other_parent: bool) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        holder = nn.Module() if other_parent else self
        holder.alias = self.body  # the same module under a second name
        self.holder = holder if other_parent else None
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        alias = self.holder.alias if self.holder is not None else self.alias
        x = torch.relu(alias(torch.relu(self.body(torch.relu(self.stem(x))))))
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("other_parent", [False, True], ids=["same-parent", "other-parent"])
def test_a_module_under_two_names_is_masked_at_both(other_parent):
    model = _Aliased(other_parent)
    report = _group(model, 0.6)
    alias = model.holder.alias if other_parent else model.alias
    assert alias is model.body and isinstance(model.body, MaskedConv2d)
    assert "body" in {r.name for r in report.layers}
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    pruned = ~model.body.sg_mask
    assert pruned.any() and (model.body.weight.grad[pruned] == 0).all()


def test_replace_modules_gives_every_reference_the_same_replacement():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.Sequential(shared), nn.ReLU())
    model.add_module("again", shared)
    names = replace_modules_(model, lambda m, n: n == "0", lambda m, n: nn.Identity())
    assert names == ["0", "1.0", "again"]
    assert model[0] is model[1][0] is model.again and isinstance(model[0], nn.Identity)


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.h1 = nn.Linear(16, 16)
        self.h2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 20)
        self.out.weight = self.emb.weight  # tied input and output embeddings

    def forward(self, tokens):
        return self.out(torch.relu(self.h2(torch.relu(self.h1(self.emb(tokens))))))


def test_tied_weights_stay_dense_and_the_embedding_untouched():
    model = _Tied()
    table = model.emb.weight.detach().clone()
    report, said = _group_warned(model, 0.5)
    assert torch.equal(model.emb.weight, table)
    assert type(model.out) is nn.Linear and model.out.weight is model.emb.weight
    assert [r.name for r in report.layers] == ["h2"]
    assert list(report.skipped) == ["out"] and "'out': its weight is also emb.weight" in said[0]


# -- 4. residual branches that are not shortcut projections -----------------------------------


class _RepVGG(nn.Module):
    """RepVGG's training block: relu(bn(conv3x3(x)) + bn(conv1x1(x)) + bn(x))."""

    def __init__(self, order: str) -> None:
        super().__init__()
        self.order = order
        self.dense = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.one = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.identity = nn.BatchNorm2d(8)

    def forward(self, x):
        terms = {"3": self.dense(x), "1": self.one(x), "i": self.identity(x)}
        a, b, c = (terms[k] for k in self.order)
        return torch.relu(a + b + c)


class _EDSR(nn.Module):
    """relu(x + bn(conv(x))): a residual body of one convolution beside the identity."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


def _residual_net(block: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), block, nn.Conv2d(8, 16, 3), nn.Flatten(0)
    )


@pytest.mark.parametrize("traced", ["fx", "run"])
@pytest.mark.parametrize("order", ["31i", "i13", "1i3"])
def test_repvgg_branches_are_self_grouped_not_shortcuts(order, traced):
    example = torch.zeros(1, 3, 8, 8) if traced == "run" else None
    s = select_layers(_residual_net(_RepVGG(order)), example_input=example)
    assert s.shortcuts == [] and s.stems == ["0"]
    assert {"2.dense.0", "2.one.0"} <= set(s.layers)


@pytest.mark.parametrize("traced", ["fx", "run"])
@pytest.mark.parametrize("k", [3, 1])
def test_a_one_conv_residual_body_is_self_grouped(k, traced):
    model = _residual_net(_EDSR(k))
    size = (3, 8, 8) if traced == "run" else None
    report = _group(model, 0.7, input_size=size)
    assert report.shortcuts == [] and isinstance(model[2].conv, MaskedConv2d)
    assert model[2].conv.sparsity() > 0.5  # a Conv-70 request prunes the body


# -- 5. mistakes refused before any layer changes ---------------------------------------------


def _state(model):
    """Module types and a copy of the state (lazy and meta tensors have no values to copy)."""
    copy = {k: v if is_lazy(v) or v.is_meta else v.clone() for k, v in model.state_dict().items()}
    return [type(m) for m in model.modules()], copy


def _assert_untouched(model, before):
    types, state = _state(model)
    assert types == before[0]
    assert state.keys() == before[1].keys()
    for k, v in state.items():
        if is_lazy(v) or v.is_meta:
            assert type(v) is type(before[1][k]) and (is_lazy(v) or v.shape == before[1][k].shape)
        else:
            torch.testing.assert_close(v, before[1][k], rtol=0, atol=0, equal_nan=True)


def _small():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(1))


def _nan():
    model = _small()
    with torch.no_grad():
        model[2].weight[0, 0, 0, 0] = float("nan")
    return model


def _meta():
    with torch.device("meta"):
        return _small()


def _lazy():
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(1), nn.LazyLinear(4))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: nn.Linear(64, 32), r"single Linear layer.*nn\.Sequential\(layer\)"),
        (lambda: nn.Conv2d(3, 8, 3), r"single Conv2d layer.*wrap it"),
        (_meta, "meta device"),
        (_lazy, r"uninitialised \(lazy\) parameters \(3\.weight"),
        (_nan, r"layer '2'.*NaN or inf"),
    ],
    ids=["bare-linear", "bare-conv", "meta", "lazy", "nan"],
)
def test_mistakes_are_refused_before_any_layer_changes(make, match):
    model = make()
    before = _state(model)
    with pytest.raises(sgcnn.SgcnnError, match=match):
        _group(model, 0.5)
    _assert_untouched(model, before)


# -- 6. a dense checkpoint loads into a masked model ------------------------------------------


def test_a_dense_checkpoint_loads_strictly_into_a_masked_model():
    dense = _Net(nn.Conv2d(8, 16, 3, padding=1))
    masked = _Net(nn.Conv2d(8, 16, 3, padding=1))
    _group(masked, 0.7)
    masked.load_state_dict(dense.state_dict())  # strict
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(masked(x), dense(x))
    for m in masked.modules():
        if isinstance(m, MASKED):
            assert m.sg_mask.all() and m.sparsity() == 0.0 and m.sg_keep.shape[0] == 1
    _group(masked, 0.5)  # and groups again from there
    assert masked.conv.sparsity() > 0.3


def test_a_checkpoint_missing_some_mask_buffers_is_still_an_error():
    masked = _Net(nn.Conv2d(8, 16, 3, padding=1))
    _group(masked, 0.5)
    state = masked.state_dict()
    del state["conv.sg_labels"]
    with pytest.raises(RuntimeError, match=r"conv\.sg_labels"):
        masked.load_state_dict(state)
