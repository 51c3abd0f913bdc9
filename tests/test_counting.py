"""Params / FLOPs counting against hand-computed values."""

import numpy as np
import pytest
import torch
import torchvision
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


class _Attend(nn.Module):
    """A 1x1 convolution to ``E = 8`` channels, its pixels as tokens, self-attention."""

    def __init__(self, batch_first, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.attn = nn.MultiheadAttention(8, num_heads=2, batch_first=batch_first, **kwargs)

    def forward(self, x):
        tokens = self.conv(x).flatten(2)  # [1, E, L]
        tokens = tokens.transpose(1, 2) if self.attn.batch_first else tokens.permute(2, 0, 1)
        return self.attn(tokens, tokens, tokens, need_weights=False)[0]


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_by_hand(batch_first):
    c = sgcnn.count(_Attend(batch_first), (3, 2, 3))  # L = S = 6 tokens, E = 8
    qkv, scores_and_sum, out = 3 * 6 * 8 * 8, 2 * 6 * 6 * 8, 6 * 8 * 8
    assert c["flops"] == 3 * 8 * 6 + qkv + scores_and_sum + out
    assert c["params"] == (3 * 8 + 8) + (3 * 8 * 8 + 3 * 8) + (8 * 8 + 8)
    assert c["params"] == c["params_total"]
    assert [layer["name"] for layer in c["layers"]] == ["conv", "attn"]  # out_proj inside


def test_multihead_attention_with_kdim_vdim_and_bias_kv():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
            self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=6, add_bias_kv=True)

        def forward(self, x):
            small = nn.functional.avg_pool2d(x, 2)
            q = self.q(x).flatten(2).permute(2, 0, 1)  # [L = 16, 1, 8]
            k = self.k(small).flatten(2).permute(2, 0, 1)  # [S = 4, 1, 4]
            v = self.v(small).flatten(2).permute(2, 0, 1)  # [S = 4, 1, 6]
            return self.attn(q, key=k, value=v, need_weights=False)[0]

    c = sgcnn.count(Cross(), (3, 4, 4))
    attn = next(layer for layer in c["layers"] if layer["name"] == "attn")
    # q / k / v projections, then Q K^T and A V over S + 1 = 5 keys (bias_k), out projection
    assert attn["flops"] == 16 * 8 * 8 + 4 * 8 * 4 + 4 * 8 * 6 + 2 * 16 * 5 * 8 + 16 * 8 * 8
    assert attn["params"] == 8 * 8 + 8 * 4 + 8 * 6 + 3 * 8 + 8 * 8 + 8  # not bias_k / bias_v
    convs = (3 * 8) * 16 + (3 * 4 + 3 * 6) * 4
    assert c["flops"] == convs + attn["flops"]


@pytest.mark.parametrize("batch_first", [True, False])
def test_transformer_encoder_counts_every_token(batch_first):
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=batch_first)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=batch_first)

        def forward(self, x):
            tokens = self.conv(x).flatten(2)  # [1, E, L]
            tokens = tokens.transpose(1, 2) if batch_first else tokens.permute(2, 0, 1)
            padding = torch.zeros(1, tokens.shape[1 if batch_first else 0], dtype=torch.bool)
            padding[:, -2:] = True
            return self.encoder(tokens, src_key_padding_mask=padding)

    # sequence-first linear layers ([L, 1, E]) count all L tokens; in eval mode a padded batch
    # first must not be packed into nested tensors (the fast path), nor attention be skipped
    c = sgcnn.count(Encoder(), (3, 2, 3))  # L = 6
    attention = 3 * 6 * 64 + 2 * 6 * 6 * 8 + 6 * 64
    assert c["flops"] == 3 * 8 * 6 + attention + 6 * (8 * 16 + 16 * 8)
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def _tiny_swin(v2=False):
    swin = torchvision.models.swin_transformer
    extra = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2}
    return swin.SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[4, 4],
        num_classes=10,
        **(extra if v2 else {}),
    )


def _swin_macs(grid, padded1, grid2, padded2):
    """A tiny Swin's MACs by hand: patches on a grid x grid map (padded1 x padded1 once padded
    to the 4 x 4 window), C = 16; then grid2 x grid2 (padded2) after merging, C = 32."""
    stage1 = (
        padded1**2 * (16 * 48 + 16 * 16)  # qkv and proj on every padded token
        + padded1**2 * 2 * 16 * 16  # Q K^T and A V: 16 tokens per window, C = 16
        + grid**2 * (16 * 64 + 64 * 16)  # MLP
    )
    stage2 = padded2**2 * (32 * 96 + 32 * 32 + 2 * 16 * 32) + grid2**2 * (32 * 128 * 2)
    patches, merging, head = grid**2 * 16 * 3 * 16, grid2**2 * 64 * 32, 32 * 10
    return patches + stage1 + merging + stage2 + head


def test_swin_window_attention_by_hand():
    model = _tiny_swin()
    assert sgcnn.count(model, 32)["flops"] == _swin_macs(8, 8, 4, 4)
    assert sgcnn.count(model, 40)["flops"] == _swin_macs(10, 12, 5, 8)  # padded windows
    attn = [layer for layer in sgcnn.count(model, 32)["layers"] if "attn" in layer["name"]]
    assert [a["params"] for a in attn] == [16 * 48 + 48 + 16 * 16 + 16, 32 * 96 + 96 + 32 * 32 + 32]


def test_swin_v2_counts_its_position_bias_mlp():
    cpb = (2 * 512 + 512 * 2) * 7 * 7  # Linear(2, 512), Linear(512, heads) on a 7 x 7 table
    assert sgcnn.count(_tiny_swin(v2=True), 32)["flops"] == _swin_macs(8, 8, 4, 4) + 2 * cpb


def test_maxvit_attention_by_hand():
    class Grid(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.attn = torchvision.models.maxvit.RelativePositionalMultiHeadAttention(8, 4, 16)

        def forward(self, x):  # G = 2 groups of P = 16 tokens
            return self.attn(self.conv(x).flatten(2).transpose(1, 2).reshape(1, 2, 16, 8))

    c = sgcnn.count(Grid(), (3, 4, 8))
    assert c["flops"] == 3 * 8 * 32 + 32 * (8 * 24 + 8 * 8) + 2 * 2 * 16 * 16 * 8


def test_weights_applied_with_f_linear_or_f_conv2d_count_as_their_layers_calls():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            y = nn.functional.conv2d(x, self.conv.weight, self.conv.bias)  # [1, 4, 2, 2]
            return nn.functional.linear(y.flatten(2).transpose(1, 2), self.fc.weight)

    c = sgcnn.count(nn.Sequential(Functional()), (3, 2, 2))
    assert [(layer["name"], layer["flops"]) for layer in c["layers"]] == [
        ("0.conv", 12 * 4),
        ("0.fc", 20 * 4),
    ]


def test_a_weight_computed_with_otherwise_is_an_error():
    class MatMul(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            return self.conv(x).flatten(2).transpose(1, 2) @ self.fc.weight.t()

    with pytest.raises(sgcnn.SgcnnError, match=r"'0\.fc' \(Linear\): its weight is computed"):
        sgcnn.count(nn.Sequential(MatMul()), (3, 2, 2))


def test_metadata_reads_and_tied_idle_heads_are_no_use():
    """Reading an idle layer's dtype is no use of it; an idle head tied to the classifier is
    idle (the classifier's own calls use the shared weight)."""

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 5)
            self.aux = nn.Linear(4, 5)
            self.aux.weight = self.fc.weight
            self.spare = nn.Linear(4, 5)

        def forward(self, x):
            x = x.to(self.spare.weight.dtype)
            return self.fc(self.conv(x).mean((2, 3)))

    c = sgcnn.count(Heads(), (3, 2, 2))
    assert {layer["name"]: layer["flops"] for layer in c["layers"]} == {
        "conv": 48, "fc": 20, "aux": 0, "spare": 0,
    }  # fmt: skip


def test_a_linear_layer_on_rows_costs_one_row_per_image():
    """``[N, F]`` rows (the batch first, e.g. a detector's box head on its proposals) cost one
    row per image, whatever N: the count does not depend on how many rows a model makes."""

    class Rows(nn.Module):
        def __init__(self, rows):
            super().__init__()
            self.rows = rows
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x.mean((2, 3)).expand(self.rows, 3))

    assert sgcnn.count(Rows(7), (3, 2, 2))["flops"] == sgcnn.count(Rows(1), (3, 2, 2))["flops"] == 6


def test_counting_leaves_the_attention_fast_path_setting_alone():
    enabled = torch.backends.mha.get_fastpath_enabled()
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten(2))
    sgcnn.count(model, (3, 2, 2))
    assert torch.backends.mha.get_fastpath_enabled() == enabled


def test_a_spare_layer_beside_used_ones_costs_nothing():
    """A layer defined but never used (its weight neither) is not an error: it costs 0 MACs."""

    class Spare(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.unused = nn.Linear(4, 5)

        def forward(self, x):
            return self.conv(x)

    c = sgcnn.count(Spare(), (3, 2, 2))
    assert c["flops"] == 12 * 4 and c["params"] == 16 + 25
    assert [layer["flops"] for layer in c["layers"]] == [48, 0]


def test_input_sizes_of_other_types_are_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 1))
    for size in (np.int64(2), [2, 2], (np.int64(3), 2, 2), np.array([3, 2, 2])):
        assert sgcnn.count(model, size)["flops"] == 48
    for bad in (2.0, "22", "abc", (2, 2.5), True, None, np.array([3.0, 2.0, 2.0])):
        with pytest.raises(sgcnn.SgcnnError, match="input_size must be"):
            sgcnn.count(model, bad)


def test_idle_branches_cost_nothing():
    class WithAux(nn.Module):  # like GoogLeNet's auxiliary heads, run in training only
        def __init__(self):
            super().__init__()
            self.body = _Attend(batch_first=True)
            self.aux = nn.Sequential(_Attend(batch_first=True), nn.Linear(8, 10))

        def forward(self, x):
            return self.aux(x) if self.training else self.body(x)

    c = sgcnn.count(WithAux().train(), (3, 2, 3))
    assert c["flops"] == 3 * 8 * 6 + 3 * 6 * 64 + 2 * 6 * 6 * 8 + 6 * 64
    assert {layer["name"] for layer in c["layers"] if not layer["flops"]} == {
        "aux.0.conv",
        "aux.0.attn",
        "aux.1",
    }


def test_a_transposed_weight_is_still_that_weight():
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            return self.conv(x).mean((2, 3)) @ self.fc.weight.T

    with pytest.raises(sgcnn.SgcnnError, match=r"'fc' \(Linear\): its weight is computed"):
        sgcnn.count(Transposed(), (3, 2, 2))


def test_reading_the_weights_of_layers_that_run_is_no_error():
    """dtype / device idioms and an EMA copy of a layer that is called as usual."""

    class Idioms(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            x = x.type_as(self.conv.weight).to(self.conv.weight)
            ema = self.fc.weight.detach().clone().mul_(0.9)
            bias = self.fc.weight.new_zeros(1, 5) + 0 * ema.sum()
            return self.fc(self.conv(x).mean((2, 3))) + bias

    assert sgcnn.count(Idioms(), (3, 2, 2))["flops"] == 48 + 20


def test_parametrized_layers_count_every_time():
    """weight_norm makes the weight anew at each read: nothing stale is taken for a use."""
    from torch.nn.utils import parametrizations

    layers = [parametrizations.weight_norm(nn.Conv2d(3, 3, 1)) for _ in range(6)]
    model = nn.Sequential(*[m for conv in layers for m in (conv, nn.ReLU())])
    for _ in range(4):
        assert sgcnn.count(model, (3, 2, 2))["flops"] == 6 * 9 * 4


def test_windows_folded_into_the_first_dimension_all_count():
    class Windows(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.qkv = nn.Linear(4, 12)

        def forward(self, x):  # [1, 4, 8, 8] -> 4 windows of 16 tokens: [4, 16, 4]
            y = self.conv(x).permute(0, 2, 3, 1).reshape(1, 2, 4, 2, 4, 4)
            return self.qkv(y.permute(0, 1, 3, 2, 4, 5).reshape(4, 16, 4))

    c = sgcnn.count(Windows(), (3, 8, 8))
    assert {layer["name"]: layer["flops"] for layer in c["layers"]} == {
        "conv": 12 * 64,
        "qkv": 48 * 64,
    }


class _OwnAttention(nn.Module):
    """timm-style attention written with torch functions: a ``qkv`` linear layer on the pixels
    of a 1x1 convolution (``L`` tokens of width ``E = 8``, two heads), then ``Q K^T`` and
    ``A V`` in the way ``how`` names."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 8, 1)
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # [1, L, 8]
        q, k, v = self.qkv(tokens).unflatten(-1, (3, 2, 4)).permute(2, 0, 3, 1, 4)  # [1, 2, L, 4]
        if self.how == "sdpa":
            return nn.functional.scaled_dot_product_attention(q, k, v)
        if self.how == "einsum":
            scores = torch.einsum("bhld,bhsd->bhls", q, k).softmax(-1)
            return torch.einsum("bhls,bhsd->bhld", scores, v)
        if self.how == "einsum_sublists":  # einsum(op, [dims], op, [dims], [output dims])
            scores = torch.einsum(q, [0, 1, 2, 3], k, [0, 1, 4, 3], [0, 1, 2, 4]).softmax(-1)
            return torch.einsum(scores, [..., 2, 4], v, [..., 4, 3])
        if self.how == "bmm":
            scores = torch.bmm(q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2)).softmax(-1)
            return torch.bmm(scores, v.flatten(0, 1))
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v


@pytest.mark.parametrize("how", ["matmul", "sdpa", "einsum", "einsum_sublists", "bmm"])
def test_products_of_activations_count_once_whatever_function_makes_them(how):
    c = sgcnn.count(_OwnAttention(how), (3, 2, 3))  # L = 6 tokens, E = 8 over two heads
    by_name = {layer["name"]: layer["flops"] for layer in c["layers"]}
    assert by_name == {
        "conv": 3 * 8 * 6,
        "qkv": 8 * 24 * 6,
        "_OwnAttention (products)": 2 * 6 * 6 * 8,  # Q K^T and A V: L x S x E each
    }
    assert c["flops"] == sum(by_name.values()) and c["params"] == (3 * 8 + 8) + (8 * 24 + 24)


def test_products_are_attributed_to_the_module_that_makes_them_and_not_counted_twice():
    model = nn.Sequential(_OwnAttention("matmul"), _Attend(batch_first=True))
    model[1].conv = nn.Conv2d(2, 8, 1)  # fed the first block's [1, 2, 6, 4]: 24 tokens
    c = sgcnn.count(model, (3, 2, 3))
    by_name = {layer["name"]: layer["flops"] for layer in c["layers"]}
    assert by_name["0 (products)"] == 2 * 6 * 6 * 8
    assert "1 (products)" not in by_name and "1.attn (products)" not in by_name  # MHA's own
    assert by_name["1.attn"] == 3 * 24 * 8 * 8 + 2 * 24 * 24 * 8 + 24 * 8 * 8


def test_product_formulas_for_every_function_form():
    from sgcnn.metrics._products import product_macs

    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    calls = [
        (torch.matmul, (a, b), {}, 2 * 3 * 5 * 4),
        (torch.matmul, (torch.randn(4), b), {}, 2 * 5 * 4),
        (torch.mv, (a[0], torch.randn(4)), {}, 3 * 4),
        (torch.dot, (torch.randn(4), torch.randn(4)), {}, 4),
        (torch.baddbmm, (torch.zeros(2, 3, 5), a, b), {}, 2 * 3 * 5 * 4),
        (torch.addbmm, (torch.zeros(3, 5), a, b), {}, 2 * 3 * 5 * 4),
        (torch.einsum, ("...ij,...jk", a, b), {}, 2 * 3 * 5 * 4),
        (torch.einsum, ("bij,bjk->bik", a, b), {}, 2 * 3 * 5 * 4),
        (torch.einsum, ("bij->bji", a), {}, 0),  # one operand: no product
    ]
    for func, args, kwargs, want in calls:
        assert product_macs(func, args, kwargs, func(*args, **kwargs)) == want, func
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 3)
    out = nn.functional.scaled_dot_product_attention(q, k, v)
    sdpa = nn.functional.scaled_dot_product_attention
    assert product_macs(sdpa, (q,), {"key": k, "value": v}, out) == 2 * 6 * 5 * (4 + 3)
    assert product_macs(torch.add, (a, a), {}, a + a) is None


def test_timms_vit_counts_like_torchvisions_same_network():
    """timm's attention is torch functions in a plain module; torchvision's is
    ``nn.MultiheadAttention``: the same ViT-Ti/16 counts the same either way."""
    timm = pytest.importorskip("timm")
    from torchvision.models.vision_transformer import VisionTransformer

    ours = sgcnn.count(timm.create_model("vit_tiny_patch16_224"), 224)
    reference = sgcnn.count(VisionTransformer(224, 16, 12, 3, 192, 768), 224)
    assert (ours["flops"], ours["params"]) == (reference["flops"], reference["params"])
    assert sum("(products)" in layer["name"] for layer in ours["layers"]) == 12
