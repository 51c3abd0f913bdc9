"""Converted models compute exactly what the masked models compute."""

import copy
import operator
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import sgcnn
from _shared import FAST_KMEANS
from sgcnn.deploy import _native, fast
from sgcnn.deploy._convert_checks import check_equivalent
from sgcnn.deploy.convert import convert, fuse_dense
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import model_entry

ATOL, RTOL = 1e-5, 1e-4


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that folding is really exercised."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_var is not None and m.affine:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def _grouped(name: str, size: int | None = None, sparsity: float = 0.5):
    model = sgcnn.create_model(name)
    c, h, w = model_entry(name).input_size
    if size is not None:
        h = w = size
    sgcnn.self_group_(model, sparsity, groups=16, kmeans=FAST_KMEANS, input_size=(c, h, w))
    _randomize_bn(model)
    return model.eval(), torch.randn(2, c, h, w)


def _assert_equivalent(converted, masked, x):
    """assert_close with atol 1e-5, rtol 1e-4 on outputs of unit scale (a deep network with
    random weights can reach logits of 1e4, where fp32 rounding alone exceeds 1e-5), on the
    example and on a new input of another batch size."""
    x_new = torch.randn(x.shape[0] + 1, *x.shape[1:])
    with torch.no_grad():
        want, want_new = masked(x), masked(x_new)
        got = converted(x)
        again = converted(x)  # in-place tricks must not leak state between calls
        got_new = converted(x_new)
    scale = max(1.0, float(want.abs().max()), float(want_new.abs().max()))
    torch.testing.assert_close(got / scale, want / scale, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(again / scale, want / scale, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(got_new / scale, want_new / scale, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------ single layers

LAYERS = [
    # in, out, kernel, stride, padding, dilation, groups, size
    (64, 64, 3, 1, 1, 1, 1, 14),
    (32, 48, 1, 1, 0, 1, 1, 9),
    (16, 32, 3, 2, 1, 1, 1, 15),
    (16, 32, 5, 1, 2, 1, 1, 12),
    (3, 64, 7, 2, 3, 1, 1, 20),
    (32, 32, 3, 1, 2, 2, 1, 11),
    (32, 64, 3, 1, 1, 1, 4, 10),
    (8, 16, 1, 2, 0, 1, 1, 8),
    (24, 40, (1, 3), 1, (0, 1), 1, 1, 7),
]


def _realizations(kind: str):
    table = fast.CONV_REALIZATIONS if kind == "conv" else fast.LINEAR_REALIZATIONS
    out = []
    for name, cls in table.items():
        if name in ("native", "winograd") and not _native.available():
            continue
        for mode in getattr(cls, "modes", [None]):
            out.append((cls, mode))
    return out


@pytest.mark.parametrize("shape", LAYERS, ids=lambda s: "x".join(map(str, s[:4])))
def test_every_conv_realization_matches_masked_layer_with_fused_epilogue(shape):
    cin, cout, k, stride, pad, dil, groups, size = shape
    conv = nn.Conv2d(cin, cout, k, stride, pad, dil, groups)
    model = nn.Sequential(conv)
    sgcnn.self_group_(model, 0.5, groups=8, kmeans=FAST_KMEANS, default_exclusions=False)
    layer = model[0]
    bn = nn.BatchNorm2d(cout).eval()
    _randomize_bn(bn)
    x = torch.randn(2, cin, size, size)
    with torch.no_grad():
        plain = bn(layer(x))
        residual = torch.randn_like(plain)
        want = torch.relu(plain + residual)
    for cls, mode in _realizations("conv"):
        spec = fast.spec_from_layer(layer, bn, relu=True)
        if cls is fast.WinogradGroupConv2d and not cls.handles(spec):
            continue  # 3x3 stride-1 layers only
        try:
            module = cls.from_spec(spec, mode) if mode else cls.from_spec(spec)
        except ValueError:
            assert mode == "matmul"  # only for unpadded, ungrouped 1x1 convolutions
            continue
        with torch.no_grad():
            got = module(x, residual.clone())
        torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL, msg=f"{cls.__name__}/{mode}")
        executed, padding = module.macs(x.shape)
        useful = fast.useful_macs(spec, x.shape)
        if cls is fast.WinogradGroupConv2d:
            useful = useful * 16 // 36  # F(2x2, 3x3): 16 products per tile where direct needs 36
        assert executed - padding == useful
        assert padding >= 0


def test_linear_realizations_match_masked_layer():
    model = nn.Sequential(nn.Linear(40, 24))
    sgcnn.self_group_(model, 0.6, groups=6, kmeans=FAST_KMEANS, default_exclusions=False)
    x = torch.randn(5, 3, 40)  # leading dimensions are kept
    with torch.no_grad():
        want = torch.relu(model(x))
    for cls, _ in _realizations("linear"):
        module = cls.from_masked(model[0], relu=True)
        with torch.no_grad():
            torch.testing.assert_close(module(x), want, atol=ATOL, rtol=RTOL)


def test_groups_are_exact_supports_and_merge_identical_channel_sets():
    mask = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=torch.bool)
    labels = torch.tensor([0, 1, 2, 2])  # groups 0 and 1 keep the same channels
    groups = fast.group_supports(mask, labels)
    as_lists = sorted((f.tolist(), c.tolist()) for f, c in groups)
    # group 2's filters differ (progressive pruning): its support is the union
    assert as_lists == [([0, 1], [0, 2]), ([2, 3], [0, 1])]


def test_group_that_kept_nothing_outputs_bias_only():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    model = nn.Sequential(conv)
    sgcnn.self_group_(model, 0.5, groups=3, kmeans=FAST_KMEANS, default_exclusions=False)
    layer = model[0]
    layer.sg_mask[layer.sg_labels == 0] = False  # one group loses every input channel
    layer.apply_mask_()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        want = layer(x)
    for cls, mode in _realizations("conv"):
        try:
            module = cls.from_masked(layer, mode=mode) if mode else cls.from_masked(layer)
        except ValueError:
            continue  # matmul mode: 1x1 convolutions only
        with torch.no_grad():
            torch.testing.assert_close(module(x), want, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------ whole models

ZOO = [
    "lenet5",
    "resnet20",
    "vgg16_cifar",
    "test_convnet",
    "test_densenet",
    "test_resnet",
    "test_vgg",
]
ZOO_SLOW = ["resnet32", "resnet56", "resnet110", "densenet121_cifar"]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_convert_exactly(name):
    masked, x = _grouped(name)
    _assert_equivalent(convert(masked, x, tune=False), masked, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_SLOW)
def test_larger_zoo_models_convert_exactly(name):
    masked, x = _grouped(name)
    _assert_equivalent(convert(masked, x, tune=False), masked, x)


TORCHVISION = [
    "resnet18",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "mnasnet0_5",
    "regnet_x_400mf",
]
# The rest of torchvision's classifiers, at the smallest input each accepts cheaply (the vision
# transformers fix their input size).
_FIXED_SIZE = {"inception_v3": 96, "maxvit_t": 224}


def _torchvision_slow() -> list[tuple[str, int]]:
    names = [
        n
        for n in sgcnn.list_models()
        if model_entry(n).source == "torchvision" and n not in TORCHVISION
    ]
    return [(n, 224 if n.startswith("vit_") else _FIXED_SIZE.get(n, 64)) for n in names]


TORCHVISION_SLOW = _torchvision_slow()
# ... of which these are also converted with each restricted set of realizations
_EVERY_REALIZATION = {
    "resnet50",
    "resnext50_32x4d",
    "densenet121",
    "vgg11_bn",
    "mobilenet_v2",
    "efficientnet_b0",
    "regnet_y_400mf",
    "convnext_tiny",
    "googlenet",
    "inception_v3",
}


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_models_convert_exactly(name):
    masked, x = _grouped(name, size=48)
    _assert_equivalent(convert(masked, x, tune=False), masked, x)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "size"), TORCHVISION_SLOW, ids=lambda v: str(v))
def test_every_torchvision_classifier_converts_exactly(name, size):
    masked, x = _grouped(name, size=size)
    every = (None, ("grouped", "dense"), ("loop",))
    for allowed in every if name in _EVERY_REALIZATION else (None,):
        _assert_equivalent(convert(masked, x, tune=False, realizations=allowed), masked, x)


@pytest.mark.parametrize("allowed", [("grouped", "dense"), ("loop",), ("dense",)])
def test_restricted_realizations_are_exact_and_respected(allowed):
    masked, x = _grouped("test_resnet")
    converted = convert(masked, x, tune=False, realizations=allowed)
    _assert_equivalent(converted, masked, x)
    chosen = {r["realization"].split("/")[0] for r in converted.sgcnn_conversion["layers"]}
    assert chosen <= set(allowed) | {"dense"}


def test_tuning_keeps_the_fastest_measured_candidate_and_records_it(monkeypatch):
    """With the timings fixed (the last candidate offered is the fastest, never the first),
    every layer keeps exactly that candidate and records those timings."""
    from sgcnn.deploy import _tuning as tuning

    offered = []

    def fake_times(calls, device, **kwargs):
        labels = list(calls)
        offered.append(labels)
        return {  # every output faulted in while timed: no allocation cost is added
            name: {"min_ms": 10.0 - i, "median_ms": 10.0 - i, "runs": 3, "faults": 10**9}
            for i, name in enumerate(labels)
        }

    monkeypatch.setattr(tuning, "time_candidates", fake_times)
    masked, x = _grouped("test_resnet")
    converted = convert(masked, x, tune=True)
    _assert_equivalent(converted, masked, x)
    records = [r for r in converted.sgcnn_conversion["layers"] if r.get("times_ms")]
    assert records and len(records) == len(offered)
    for record, labels in zip(records, offered, strict=True):
        assert any(label.startswith("dense") for label in labels)  # dense is always offered
        assert record["realization"] == labels[-1]
        assert record["times_ms"][labels[-1]]["min_ms"] == 10.0 - (len(labels) - 1)
    assert any(len(labels) > 1 and not labels[-1].startswith("dense") for labels in offered)


def test_tuning_charges_an_allocated_output_the_faults_its_timing_did_not_see(monkeypatch):
    """A candidate that allocates its output (dense NCHW) and took no page faults while timed
    is charged the first-touch time of that output; the arena-backed candidates are not. With
    dense NCHW 1 ms faster but 5 ms to fault in, an arena-backed candidate is kept; when the
    timed calls did fault the whole output in, dense NCHW is kept."""
    from sgcnn.deploy import _tuning as tuning

    def fake_times(faults):
        def times(calls, device, **kwargs):
            return {
                name: {
                    "min_ms": 1.0 if name == "dense/nchw" else 2.0,
                    "median_ms": 2.0,
                    "runs": 3,
                    "faults": faults if name == "dense/nchw" else 0,
                }
                for name in calls
            }

        return times

    monkeypatch.setattr(tuning, "first_touch_ms", lambda nbytes: 5.0 if nbytes else 0.0)
    masked, x = _grouped("test_resnet")
    for faults, kept_dense in ((0, False), (10**9, True)):
        monkeypatch.setattr(tuning, "time_candidates", fake_times(faults))
        converted = convert(masked, x, tune=True, realizations=["dense", "native"])
        records = [
            r for r in converted.sgcnn_conversion["layers"] if "dense/nchw" in r.get("times_ms", {})
        ]
        assert records
        for record in records:
            charged = record["times_ms"]["dense/nchw"]["alloc_ms"]
            assert charged == (0.0 if kept_dense else 5.0)
            assert (record["realization"] == "dense/nchw") == kept_dense
            assert all(
                "alloc_ms" not in t
                for name, t in record["times_ms"].items()
                if name.startswith("native")
            )


def test_first_touch_cost_grows_with_the_bytes():
    from sgcnn.deploy import _tuning as tuning

    assert tuning.first_touch_ms(0) == 0.0
    assert tuning.first_touch_ms(64 << 20) == 2 * tuning.first_touch_ms(32 << 20)
    if sys.platform.startswith("linux"):  # fresh anonymous pages fault in on first write
        assert tuning.first_touch_ms(32 << 20) > 0.0


class _PositionEmbedding(nn.Module):
    """timm PiT's pattern: a convolution plus a learnt [1, C, H, W] tensor."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 16, 8, 8))

    def forward(self, x):
        return self.conv(self.stem(x)) + self.pos


def test_an_operand_that_broadcasts_over_the_batch_is_not_fused_as_a_residual():
    """On a batch-1 example the [1, C, H, W] parameter has the activation's shape; fused as a
    residual, the converted model would fail at any other batch size."""
    torch.manual_seed(0)
    model = _PositionEmbedding().eval()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, 8, 8))
    converted = convert(model, torch.randn(1, 3, 8, 8), tune=False)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-4, rtol=1e-4)


class _CalledTwiceBesideItsRenaming(nn.Module):
    """`conv` runs twice; a fast module per call must not take the name `conv_1`, which is
    already a (non-realizable) submodule here."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_1 = nn.Hardtanh(-0.5, 0.5)

    def forward(self, x):
        return self.conv_1(self.conv(self.conv(self.stem(x))))


def test_a_layer_called_twice_never_takes_an_existing_submodules_name():
    torch.manual_seed(0)
    model = _CalledTwiceBesideItsRenaming().eval()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, 6, 6))
    converted = convert(model, torch.randn(2, 3, 6, 6), tune=False)
    assert isinstance(converted.get_submodule("conv_1"), nn.Hardtanh)
    x = torch.randn(3, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=1e-4, rtol=1e-4)


def test_fusion_folds_batchnorm_relu_and_residual_into_layers():
    masked, x = _grouped("test_resnet")
    converted = convert(masked, x, tune=False)
    kinds = {type(m) for m in converted.modules()}
    assert nn.BatchNorm2d not in kinds  # every BatchNorm followed a convolution
    assert not any(n.target in (operator.add, operator.iadd) for n in converted.graph.nodes)
    unfused = convert(masked, x, tune=False, fuse=False)
    assert nn.BatchNorm2d in {type(m) for m in unfused.modules()}
    _assert_equivalent(unfused, masked, x)


class _AddsIntoItsInput(nn.Module):
    """``skip = y`` then ``y`` grows in place by ``conv(y)``: ``skip`` sees the sum too."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.stem(x)
        skip = y
        if self.how == "add_":
            y.add_(self.conv(y))
        else:
            y += self.conv(y)
        return y + skip


@pytest.mark.parametrize("how", ["add_", "+="])
def test_an_add_into_the_residual_operand_in_place_stays_in_place(how):
    """``y.add_(conv(y))`` writes into ``y``, which ``skip`` also names: not fused as
    ``conv(y) + y`` (a new tensor). ``y += conv(y)`` is traced by torch.fx as ``y = y +
    conv(y)``: the graph differs from the forward, so the model is converted layer by layer."""
    model = _AddsIntoItsInput(how).eval()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    x = torch.randn(2, 3, 8, 8)
    if how == "+=":
        with pytest.warns(UserWarning, match="traced graph computes something else"):
            converted = convert(model, x, tune=False, check=False)
    else:
        converted = convert(model, x, tune=False, check=False)
    assert converted.sgcnn_conversion["fused"] == (how == "add_")
    assert fast.is_fast(converted.get_submodule("conv"))
    _assert_equivalent(converted, model, x)


@pytest.mark.skipif(not _native.available(), reason="native kernel unavailable")
def test_memory_planning_between_native_layers_is_exact_and_leaves_input_alone():
    masked, x = _grouped("resnet20")
    converted = convert(masked, x, tune=False, realizations=("native",))
    natives = [m for m in converted.modules() if isinstance(m, fast.NativeGroupConv2d)]
    assert any(m.input_padded for m in natives)
    assert any(m.accumulate for m in natives)
    for m in natives:
        if m.input_padded:
            assert m.padding != (0, 0) and m.stride == (1, 1)
    before = x.clone()
    _assert_equivalent(converted, masked, x)
    assert torch.equal(x, before)


class _OneConvResidual(nn.Module):
    """``relu(bn(b(x)) + x)`` with ``x`` from another convolution (EDSR's block): ``x`` is
    read twice by one node, so no padded hand-off may change it; or ``b`` applied twice,
    ``relu(b(b(x)) + x)``: each call is its own module after fusion, the hand-off between them
    stays."""

    def __init__(self, twice: bool) -> None:
        super().__init__()
        self.twice = twice
        self.stem, self.a, self.b = (nn.Conv2d(c, 16, 3, padding=1) for c in (3, 16, 16))
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x):
        x = torch.relu(self.a(torch.relu(self.stem(x))))
        y = self.b(self.b(x)) if self.twice else self.bn(self.b(x))
        return torch.relu(y + x)


@pytest.mark.skipif(not _native.available(), reason="native kernel unavailable")
@pytest.mark.parametrize("twice", [False, True], ids=["residual-is-the-input", "layer-twice"])
def test_a_producer_read_twice_or_a_layer_run_twice_keeps_its_own_output(twice):
    model = _OneConvResidual(twice).eval()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    converted = convert(model, torch.randn(2, 3, 16, 16), tune=False, realizations=("native",))
    assert isinstance(converted.get_submodule("b"), fast.NativeGroupConv2d)
    assert not converted.get_submodule("b").input_padded
    if twice:  # the second call reads the first's padded output
        assert converted.get_submodule("b_1").input_padded
    _assert_equivalent(converted, model, torch.randn(3, 3, 16, 16))


def test_flop_counter_agrees_with_count_apart_from_reported_padding():
    for name, allowed in (("test_resnet", None), ("lenet5", ("grouped", "dense"))):
        masked, x = _grouped(name)
        converted = convert(masked, x, tune=False, realizations=allowed)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            converted(x)
        executed = counter.get_total_flops() // 2
        layers = converted.sgcnn_conversion["layers"]
        padding = sum(r["padding_macs"] for r in layers)
        counted = sgcnn.count(masked, tuple(x.shape[1:]))["flops"] * x.shape[0]
        # Winograd layers F(m x m, 3x3) compute (m + 2)^2 products per tile where the direct
        # form needs 9 m^2
        saved = 0
        for r in layers:
            if r["realization"].startswith("winograd/f"):
                m = int(r["realization"][len("winograd/f")])
                saved += r["useful_macs"] - r["useful_macs"] * (m + 2) ** 2 // (9 * m * m)
        assert executed - padding == counted - saved


def test_fused_dense_baseline_is_exact():
    model = sgcnn.create_model("test_resnet").eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 16, 16)
    fused = fuse_dense(model, x, tune=False)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=ATOL, rtol=RTOL)
    assert all(r["realization"].startswith("dense") for r in fused.sgcnn_conversion["layers"])


def test_channels_last_example_is_tuned_and_kept_channels_last(monkeypatch):
    """A channels-last example is how a user asks for a channels-last deployment (the fast
    layout of cuDNN in half precision): every layer is tuned on channels-last inputs, under
    its own cache key, and the result is exact in either layout and at another batch size."""
    from sgcnn.deploy import _tuning as tuning
    from sgcnn.deploy._convert_fusion import _Site
    from sgcnn.deploy._convert_realize import _tuning_inputs

    monkeypatch.setenv("SGCNN_TUNING_CACHE", "0")
    masked, x = _grouped("test_resnet")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    # without the native kernels (as on a GPU) the layout carries from layer to layer
    converted = convert(masked, x_cl, tune=True, progress=False, realizations=("grouped", "dense"))
    layers = converted.sgcnn_conversion["layers"]
    convs = [r for r in layers if len(r["input_shape"]) == 4]
    assert convs and all(r.get("channels_last") for r in convs)
    assert any("times_ms" in r for r in convs)  # the tuner ran
    _assert_equivalent(converted, masked, x_cl)  # the new input is plain NCHW
    if _native.available():  # native layers write NCHW: what follows them is tuned NCHW
        native = convert(masked, x_cl, tune=True, progress=False)
        assert not any(r.get("channels_last") for r in native.sgcnn_conversion["layers"])
        _assert_equivalent(native, masked, x_cl)
    x_new = torch.randn(3, *x.shape[1:]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(converted(x_new), masked(x_new), atol=1e-4, rtol=1e-4)

    spec = fast.spec_from_layer(masked.get_submodule(convs[0]["name"]))
    shape = convs[0]["input_shape"]
    nchw = tuning.layer_key(spec, shape, None, torch.float32)
    assert tuning.layer_key(spec, shape, None, torch.float32, channels_last=True) != nchw
    site = _Site("c", None, None, False, (2, 8, 5, 5), (2, 8, 5, 5), channels_last=True)
    for t in _tuning_inputs(site, torch.device("cpu"), torch.float32):
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize(
    ("kernel", "padding", "dilation", "realized"),
    [(3, "same", 1, True), (3, "valid", 1, True), (4, "same", 2, True), (4, "same", 1, False)],
)
def test_string_padding_is_realized_where_it_is_symmetric(kernel, padding, dilation, realized):
    """``padding="same"`` / ``"valid"`` are explicit sizes in disguise, except where PyTorch
    pads one side more (an even kernel at odd dilation): that layer is left as it is."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, kernel, padding=padding, dilation=dilation),
    )
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    converted = convert(model, x, tune=False, progress=False)
    names = {r["name"] for r in converted.sgcnn_conversion["layers"]}
    assert ("2" in names) == realized
    _assert_equivalent(converted, model, x)


def test_dense_nhwc_mode_returns_the_layout_it_was_given():
    conv = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))
    sgcnn.self_group_(conv, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    module = fast.DenseConv2d.from_masked(conv[0], mode="nhwc")
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        want = conv(x)
        plain = module(x)
        kept = module(x.contiguous(memory_format=torch.channels_last))
    assert plain.is_contiguous()  # NCHW in, NCHW out (what the next native layer reads)
    assert kept.is_contiguous(memory_format=torch.channels_last) and not kept.is_contiguous()
    torch.testing.assert_close(plain, want, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(kept, want, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mode", ["nchw", "nhwc", "matmul", "linear"])
def test_every_dense_mode_refuses_an_input_it_was_not_built_for(mode):
    """Another channel count, or an unbatched image, is an error naming the shape expected
    (PyTorch's conv2d would take an unbatched image)."""
    if mode == "linear":
        module = fast.DenseLinear(fast.spec_from_layer(nn.Linear(8, 4)))
        wrong = [torch.randn(2, 5)]
    else:
        conv = nn.Conv2d(8, 16, 1 if mode == "matmul" else 3, padding=0 if mode == "matmul" else 1)
        module = fast.DenseConv2d(fast.spec_from_layer(conv), mode=mode)
        wrong = [torch.randn(2, 5, 6, 6), torch.randn(8, 6, 6)]
    for x in wrong:
        with torch.no_grad(), pytest.raises(sgcnn.SgcnnError, match=r"expects an input of shape"):
            module(x)


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return self.head(y.mean((2, 3)))


def test_untraceable_model_is_converted_layer_by_layer():
    model = _Untraceable()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    x = torch.randn(2, 3, 8, 8)
    converted = convert(model.eval(), x, tune=False)
    assert converted.sgcnn_conversion["fused"] is False
    assert fast.is_fast(converted.conv) and fast.is_fast(converted.head)
    _assert_equivalent(converted, model, x)


class _UntraceableWithUnusualPadding(nn.Module):
    """Data-dependent control flow around convolutions no fast module realizes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.reflect = nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect")
        self.even = nn.Conv2d(16, 16, 4, padding="same")

    def forward(self, x):
        y = self.stem(x)
        if y.sum() > 0:
            y = y * 2
        return self.even(self.reflect(y))


def test_untraceable_model_leaves_layers_it_cannot_realize_as_they_are():
    model = _UntraceableWithUnusualPadding()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    converted = convert(model, x, tune=False)
    assert converted.sgcnn_conversion["fused"] is False and fast.is_fast(converted.stem)
    assert not fast.is_fast(converted.reflect) and not fast.is_fast(converted.even)
    assert [r["name"] for r in converted.sgcnn_conversion["layers"]] == ["stem"]
    _assert_equivalent(converted, model, x)


class _Recording(nn.Module):
    """Keeps its last features and counts its calls: state a traced graph would not update."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)
        self.calls = 0
        self.means = []  # grows in place: the list stays the same object

    def forward(self, x):
        if not hasattr(self, "cache"):  # set on the first call only: not a side effect
            self.cache = torch.ones(1)
        self.features = torch.relu(self.bn(self.conv(x)))
        self.calls += 1
        self.means.append(self.features.mean())
        return self.head(self.features.mean((2, 3)))


def test_a_forward_that_sets_attributes_keeps_running_after_conversion():
    model = _Recording()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    with pytest.warns(UserWarning, match="on every call") as caught:
        converted = convert(model.eval(), torch.randn(2, 3, 8, 8), tune=False)
    said = str(caught[0].message)
    assert all(name in said for name in ("calls", "features", "means")) and "cache" not in said
    assert converted.sgcnn_conversion["fused"] is False and fast.is_fast(converted.conv)
    calls = converted.calls
    with torch.no_grad():
        converted(torch.randn(3, 3, 8, 8))
    assert converted.calls == calls + 1 and converted.features.shape == (3, 16, 8, 8)
    assert len(converted.means) == converted.calls


def test_weights_recomputed_by_norm_hooks_are_not_side_effects(recwarn):
    """spectral_norm / weight_norm pre-hooks set the weight on every call, from parameters."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.utils.spectral_norm(nn.Conv2d(16, 16, 3, padding=1)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    )
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    converted = convert(model.eval(), torch.randn(2, 3, 8, 8), tune=False)
    assert converted.sgcnn_conversion["fused"] and not recwarn.list
    _assert_equivalent(converted, model, torch.randn(2, 3, 8, 8))


def test_convert_leaves_the_callers_model_untouched():
    masked, x = _grouped("test_resnet")
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    convert(masked, x, tune=False)
    after = masked.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_native_kernel_conversion_still_works(monkeypatch):
    monkeypatch.setattr(_native, "available", lambda: False)
    masked, x = _grouped("test_resnet")
    converted = convert(masked, x, tune=False)
    assert not any(isinstance(m, fast.NativeGroupConv2d) for m in converted.modules())
    _assert_equivalent(converted, masked, x)


# ------------------------------------------------------------------------ errors


def test_model_without_self_grouped_layers_is_an_error():
    model = sgcnn.create_model("test_resnet").eval()
    with pytest.raises(sgcnn.SgcnnError, match=r"no self-grouped layer.*self_group_"):
        convert(model, torch.randn(1, 3, 16, 16))


def test_wrong_input_shape_is_an_error_that_names_the_expected_channels():
    masked, _ = _grouped("test_resnet")
    with pytest.raises(sgcnn.SgcnnError, match=r"shape \(1, 5, 16, 16\).*3 input channels"):
        convert(masked, torch.randn(1, 5, 16, 16))
    with pytest.raises(sgcnn.SgcnnError, match="example_input must be a tensor"):
        convert(masked, "an image")


def test_an_example_shape_without_batch_or_with_a_size_below_one_is_an_error():
    masked, x = _grouped("test_convnet")
    for shape in [(1, 3, -1, 16), (0, 3, 16, 16), ()]:
        with pytest.raises(sgcnn.SgcnnError, match=r"every size at least 1"):
            convert(masked, shape, tune=False)
    with pytest.raises(sgcnn.SgcnnError, match=r"every size at least 1"):
        convert(masked, x[:0], tune=False)
    for example in [tuple(x.shape[1:]), x[0]]:  # one image, unbatched
        with pytest.raises(sgcnn.SgcnnError, match=r"receives an input of shape \[3, .*batch"):
            convert(masked, example, tune=False)
    conv = fast.DenseConv2d(fast.spec_from_layer(nn.Conv2d(3, 8, 3)))
    with pytest.raises(sgcnn.SgcnnError, match=r"\[batch, channels, height, width\]"):
        conv.macs(tuple(x.shape[1:]))


class _Picky(nn.Module):
    """Fails on the example with an error of its own kind."""

    def __init__(self, error: type[Exception]):
        super().__init__()
        self.error = error
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        if x.shape[-1] != 32:
            raise self.error()  # (no message)
        return self.conv(x)


@pytest.mark.parametrize("error", [AssertionError, TypeError, KeyError])
def test_a_model_that_fails_on_the_example_in_any_way_is_an_error(error):
    model = _Picky(error)
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    with pytest.raises(sgcnn.SgcnnError, match=rf"fails on an example.*{error.__name__}"):
        convert(model.eval(), (1, 3, 16, 16), tune=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_an_error():
    masked, x = _grouped("test_resnet")
    with pytest.raises(
        sgcnn.SgcnnError, match=r"'cuda' asked for \(device= or --device\) but CUDA"
    ):
        convert(masked, x, device="cuda")
    with pytest.raises(sgcnn.SgcnnError, match="is not a device"):
        convert(masked, x, device="tpu:zero")


def test_an_example_with_nan_is_an_error_that_says_so():
    masked, x = _grouped("test_convnet")
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(sgcnn.SgcnnError, match="example_input holds NaN or infinite values"):
        convert(masked, x, tune=False)


def test_api_mistakes_get_answers_that_fit_them():
    """One realization name as a string; an example of another dtype than the weights; a
    count of the converted model (its fast layers would count as zero)."""
    masked, x = _grouped("test_convnet")
    converted = convert(masked, x, tune=False, realizations="grouped")
    assert {r["realization"] for r in converted.sgcnn_conversion["layers"]} <= {
        "grouped", "dense", "dense/nchw"}  # fmt: skip
    with pytest.raises(sgcnn.SgcnnError, match=r"the example is torch\.float64: cast one"):
        convert(masked, x.double(), tune=False)
    with pytest.raises(sgcnn.SgcnnError, match="count the self-grouped model"):
        sgcnn.count(converted, x.shape[1:])


def test_unknown_realization_is_an_error():
    masked, x = _grouped("test_resnet")
    with pytest.raises(sgcnn.SgcnnError, match=r"unknown realizations.*'sparse'"):
        convert(masked, x, realizations=("sparse",))


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "ceil"),
    [
        (3, 2, 1, False),
        (3, 2, 0, True),
        (2, 2, 0, False),
        (3, 1, 1, False),
        (5, 3, 2, True),
        ((2, 3), (1, 2), (1, 1), True),
        ((3, 2), (2, 1), (0, 1), False),
        (4, 2, 2, True),
    ],
)
@pytest.mark.parametrize("shape", [(2, 5, 15, 17), (1, 3, 33, 70)])
def test_native_max_pool_is_exact_with_nan_and_ceil_mode(kernel, stride, padding, ceil, shape):
    x = torch.randn(shape) - 3  # mostly negative: the padding (-inf) must never win
    h, w = shape[2:]
    for i, j in [(3, 4), (0, 0), (h - 1, w - 1), (h // 2, 8), (1, w - 2)]:
        x[0, 1 % shape[1], i, j] = float("nan")
    x[0, 0, 2, 5] = float("-inf")
    pool = fast.MaxPool2d(kernel, stride, padding, ceil)
    want = nn.functional.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil)
    torch.testing.assert_close(pool(x), want, equal_nan=True, atol=0, rtol=0)


def test_max_pooling_is_swapped_only_where_the_native_kernels_run():
    masked, x = _grouped("resnet18", size=48)
    converted = convert(masked, x, tune=False)
    swapped = any(isinstance(m, fast.MaxPool2d) for m in converted.modules())
    assert swapped == _native.available()
    assert swapped != any(type(m) is nn.MaxPool2d for m in converted.modules())
    # standard operators only (what ONNX export asks for): PyTorch's max pooling stays
    portable = convert(masked, x, tune=False, realizations=("grouped", "dense"))
    assert not any(isinstance(m, fast.MaxPool2d) for m in portable.modules())


# ------------------------------------------------------- what fusion may not fold


class BNThenTanh(nn.BatchNorm2d):
    """A BatchNorm subclass that does more than normalize: folding it would drop the tanh."""

    def forward(self, x):
        return torch.tanh(super().forward(x))


class ShiftedConv(nn.Conv2d):
    """A Conv2d subclass whose forward is not ``conv2d(x, weight)``."""

    def forward(self, x):
        return super().forward(x + 1.0)


class UnusualLayers(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.norm1 = norm
        self.conv2 = ShiftedConv(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 1)
        self.bn3 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.norm1(self.conv1(x))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean((2, 3)))


def _grouped_unusual(norm: nn.Module):
    model = UnusualLayers(norm)
    sgcnn.self_group_(
        model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, 10, 10), exclude=["conv2"]
    )
    _randomize_bn(model)
    return model.eval(), torch.randn(2, 3, 10, 10)


def test_subclasses_of_batchnorm_and_conv_are_never_folded_or_realized():
    masked, x = _grouped_unusual(BNThenTanh(16))
    converted = convert(masked, x, tune=False)
    _assert_equivalent(converted, masked, x)
    kinds = {type(m) for m in converted.modules()}
    assert BNThenTanh in kinds  # left to run as it is
    assert type(converted.get_submodule("conv2")) is ShiftedConv
    folded = {r["name"] for r in converted.sgcnn_conversion["layers"]}
    assert "conv2" not in folded and "conv3" in folded


@pytest.mark.parametrize("act", ["relu", "silu", "identity"])
def test_timm_batchnorm_with_activation_folds_and_keeps_the_activation(act):
    norm_act = pytest.importorskip("timm.layers.norm_act")
    layer = {"relu": nn.ReLU, "silu": nn.SiLU, "identity": nn.Identity}[act]
    masked, x = _grouped_unusual(norm_act.BatchNormAct2d(16, act_layer=layer))
    converted = convert(masked, x, tune=False)
    _assert_equivalent(converted, masked, x)
    called = {
        n.target: type(converted.get_submodule(n.target))
        for n in converted.graph.nodes
        if n.op == "call_module" and n.target.startswith("norm1")
    }
    assert not any(issubclass(c, nn.modules.batchnorm._BatchNorm) for c in called.values())
    assert layer in called.values() or act == "relu"  # the activation stays (a ReLU is fused)


TIMM_FAMILIES = [
    "resnet26d",  # ResNet-D: average-pool shortcut
    "regnety_002",  # squeeze-excitation, BatchNormAct2d
    "mixnet_s",  # mixed kernel sizes, swish
    "ghostnet_100",
    "cspresnet50",
    "dpn68",  # pre-activation BatchNormAct2d before convolutions, concatenated paths
    "dla34",
    "res2net50_26w_4s",
    "convnext_atto",
    "efficientnet_b0",
    "repvgg_a0",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_families_convert_exactly(name):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, 64, 64))
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    _assert_equivalent(convert(model, x, tune=False), model, x)


def test_per_group_loop_is_timed_on_cuda_only_when_asked_for():
    """On CUDA the loop lost on every measured layer and cost most of the tuning time, so it is
    a candidate there only by name; grouped and dense stay; the CPU's candidates are as before
    (nothing runs: the candidates are listed, not built)."""
    from sgcnn.deploy._convert_fusion import _Site
    from sgcnn.deploy._convert_realize import _candidates

    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1))
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, default_exclusions=False)
    site = _Site("0", model[0], None, False, (1, 16, 8, 8), None)
    _, cuda = _candidates(site, torch.device("cuda"), None)
    assert "loop" not in cuda and "grouped" in cuda and "dense/nchw" in cuda
    _, asked = _candidates(site, torch.device("cuda"), ("loop", "grouped"))
    assert set(asked) == {"loop", "grouped"}
    _, cpu = _candidates(site, torch.device("cpu"), ("loop", "grouped"))
    assert set(cpu) == {"loop", "grouped"}


def test_forward_hooks_on_the_model_are_warned_about():
    """A hook on a layer that conversion fuses or traces through stops running: said, not
    silently dropped."""
    model = sgcnn.create_model("test_resnet")
    sgcnn.self_group_(model, 0.5, groups=2, kmeans=FAST_KMEANS)
    seen = []
    model.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with pytest.warns(UserWarning, match="forward hooks on layer1 may not run"):
        convert(model.eval(), torch.randn(2, 3, 16, 16), tune=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_converts_within_its_own_precision(dtype):
    """Its check allows what two summation orders of one fp16 / bf16 network differ by, and no
    more: the conversion is as close to the fp64 result as the masked model itself."""
    masked, x = _grouped("resnet20", size=16)
    masked = masked.to(dtype)
    converted = convert(masked, x.to(dtype), tune=False)
    x_new = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        exact = copy.deepcopy(masked).double()(x_new.to(dtype).double())
        own = (masked(x_new.to(dtype)).double() - exact).abs().max()
        ours = (converted(x_new.to(dtype)).double() - exact).abs().max()
    assert ours <= 4 * own + 1e-3 * exact.abs().max()
    with torch.no_grad():
        reference = masked(x.to(dtype))
    shift = 0.05 * float(reference.abs().max())  # off by 5 % of the scale: still a failure

    class _Off(nn.Module):
        def forward(self, inputs):
            return converted(inputs) + shift

    with pytest.raises(SgcnnError, match="differs from the masked model"):
        check_equivalent(_Off(), reference, x.to(dtype))
