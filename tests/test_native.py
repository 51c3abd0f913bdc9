"""Native kernels: tracers see them (or refuse loudly), the build is keyed and shipped as C
source, and fast modules give their layer back without keeping a dense copy."""

import io
import warnings
from importlib import resources

import pytest
import torch
from torch import nn

import sgcnn
from sgcnn.core.clustering import KMeansSettings
from sgcnn.deploy import _native, _native_build, fast
from sgcnn.deploy.convert import convert
from sgcnn.errors import SgcnnError

needs_native = pytest.mark.skipif(not _native.available(), reason="native kernel unavailable")


def _grouped(name="resnet20", size=16):
    model = sgcnn.create_model(name).eval()
    sgcnn.self_group_(
        model,
        0.5,
        groups=4,
        kmeans=KMeansSettings(n_init=1, max_iter=30),
        input_size=(3, size, size),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model, torch.randn(2, 3, size, size)


def _close(got, want):
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got / scale, want / scale, atol=1e-5, rtol=1e-4)


def _sgcnn_calls(graph) -> int:
    return sum(node.kind().startswith("sgcnn::") for node in graph.nodes())


# ------------------------------------------------------------------------ tracers


@needs_native
def test_jit_trace_records_the_native_kernels_and_follows_a_new_input():
    masked, x = _grouped()
    converted = convert(masked, x, tune=False, realizations=("native",))
    natives = [m for m in converted.modules() if isinstance(m, fast.NativeGroupConv2d)]
    assert any(m.accumulate for m in natives) and any(m.input_padded for m in natives)
    with torch.no_grad():
        traced = torch.jit.trace(converted, x)
        assert _sgcnn_calls(traced.inlined_graph) >= len(natives)
        new = torch.randn_like(x) * 3
        _close(traced(new), masked(new))
        # saved and loaded, it still computes (the operators are registered by sgcnn)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        _close(torch.jit.load(buffer)(new), masked(new))


@needs_native
def test_torch_export_follows_a_new_input():
    masked, x = _grouped()
    converted = convert(masked, x, tune=False, realizations=("native",))
    with torch.no_grad():
        program = torch.export.export(converted, (x,))
        new = torch.randn_like(x)
        _close(program.module()(new), masked(new))


@needs_native
def test_legacy_onnx_export_of_native_layers_is_a_clear_error(tmp_path):
    masked, x = _grouped()
    converted = convert(masked, x, tune=False, realizations=("native",))
    with pytest.raises(SgcnnError, match=r"sgcnn.export\(model, path, x, format=\"onnx\"\)"):
        torch.onnx.export(converted, (x,), str(tmp_path / "m.onnx"), dynamo=False)


def test_jit_script_of_a_converted_model_is_a_clear_error():
    masked, x = _grouped()
    for allowed in (("grouped",), ("dense",)):
        converted = convert(masked, x, tune=False, realizations=allowed)
        with pytest.raises(SgcnnError, match=r"torch.jit.trace\(model, x\)"):
            torch.jit.script(converted)


def test_jit_trace_of_standard_realizations_follows_a_new_input():
    masked, x = _grouped()
    for allowed in (("grouped",), ("loop",), ("dense",)):
        converted = convert(masked, x, tune=False, realizations=allowed)
        with torch.no_grad():
            traced = torch.jit.trace(converted, x)
            new = torch.randn_like(x)
            _close(traced(new), masked(new))


# ------------------------------------------------------------------------ hygiene


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return set()
    return set(line.split(":", 1)[1].split())


@needs_native
@pytest.mark.skipif(not _cpu_flags(), reason="needs /proc/cpuinfo")
def test_kernels_use_the_widest_instruction_set_the_cpu_has():
    """AVX-512F where the CPU has it (16 lanes), else AVX2 + FMA (8 lanes); on an AVX-512
    machine the rest of this file then checks the 16-lane code paths."""
    wide = "avx512f" in _cpu_flags()
    assert _native_build.isa() == ("avx512f" if wide else "avx2")
    assert _native_build.lanes() == (16 if wide else 8)


def test_kernel_sources_are_shipped_c_files():
    csrc = resources.files("sgcnn.deploy").joinpath("csrc")
    assert "sg_dg_conv2d" in csrc.joinpath("dg_conv.c").read_text()
    assert "sg_wino_conv2d" in csrc.joinpath("winograd.c").read_text()
    for name in _native_build._SOURCES:
        assert csrc.joinpath(name).is_file(), name


def test_build_key_covers_source_compiler_and_cpu(monkeypatch):
    key = _native_build._build_key("cc")
    assert key == _native_build._build_key("cc")
    monkeypatch.setattr(_native_build, "_source", lambda: b"/* changed */")
    assert _native_build._build_key("cc") != key
    monkeypatch.undo()
    monkeypatch.setattr(_native_build, "cpu_id", lambda: "another cpu")
    assert _native_build._build_key("cc") != key


REALIZATIONS = [
    (fast.DenseConv2d, {}),
    (fast.GroupedConv2d, {}),
    (fast.GroupLoopConv2d, {}),
    pytest.param(fast.NativeGroupConv2d, {"block": 4, "rows": 5}, marks=needs_native),
]


@pytest.mark.parametrize("cls,options", REALIZATIONS, ids=lambda v: getattr(v, "__name__", ""))
def test_spec_rebuilds_the_masked_weight_exactly_without_a_stored_copy(cls, options):
    layer = nn.Conv2d(24, 40, 3, padding=1, groups=2)
    model = nn.Sequential(layer)
    sgcnn.self_group_(model, 0.6, groups=4, default_exclusions=False)
    spec = fast.spec_from_layer(model[0])
    module = cls.from_spec(spec, **options)
    tensors = [*module.parameters(), *module.buffers()]
    if cls is not fast.DenseConv2d:  # only the dense form computes with the dense weight
        assert all(t.shape != spec.weight.shape for t in tensors)
    assert not any(isinstance(v, fast.LayerSpec) for v in vars(module).values())
    back = module.spec()
    assert torch.equal(back.weight, spec.weight) and torch.equal(back.bias, spec.bias)
    assert back.kept_kernels == spec.kept_kernels
    x = torch.randn(2, 24, 9, 9)
    with torch.no_grad():
        _close(cls.from_spec(back, **options)(x), module(x))


def test_linear_spec_rebuilds_the_masked_weight_exactly():
    model = nn.Sequential(nn.Linear(30, 20))
    sgcnn.self_group_(model, 0.6, groups=4, default_exclusions=False)
    spec = fast.spec_from_layer(model[0])
    for cls in (fast.DenseLinear, fast.GroupedLinear, fast.GroupLoopLinear):
        assert torch.equal(cls.from_spec(spec).spec().weight, spec.weight)


def test_a_linear_layer_is_fc_as_in_the_grouping_report_and_linear_is_still_accepted():
    spec = fast.spec_from_layer(nn.Linear(6, 4))
    assert spec.kind == "fc"
    assert ", fc," in repr(fast.DenseLinear.from_spec(spec))
    old = fast.LayerSpec("linear", spec.weight, spec.bias, spec.groups)
    assert old.kind == "fc"
    assert fast.useful_macs(old, (3, 6)) == fast.useful_macs(spec, (3, 6)) == 3 * 24


@needs_native
def test_geometry_is_a_named_structure_matching_the_library():
    geo = fast.NativeGroupConv2d.from_spec(
        fast.spec_from_layer(nn.Conv2d(8, 16, 3, stride=2, padding=1))
    ).geometry()
    assert geo.output_shape((2, 8, 15, 15)) == (2, 16, 8, 8)
    c = geo.c_struct((2, 8, 15, 15))
    assert (c.sh, c.ph, c.out_h, c.filters, c.block) == (2, 1, 8, 16, geo.block)
    assert 1 <= geo.block <= _native.max_block()


@pytest.mark.slow
@needs_native
def test_a_damaged_cached_build_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path))
    key = _native_build._build_key(_native_build._compiler())
    path = tmp_path / "kernels" / key / "libsgcnn_dg.so"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")
    monkeypatch.setattr(_native_build, "_lib", None)
    monkeypatch.setattr(_native_build, "_error", None)
    assert _native.available(), _native.unavailable_reason()
    assert path.read_bytes()[:4] == b"\x7fELF"


def test_kernels_unavailable_for_a_fault_say_so_and_for_the_machine_stay_silent(
    tmp_path, monkeypatch
):
    """A cache folder the build cannot be written to costs the native speed: a warning
    names it. Kernels turned off with SGCNN_NATIVE=0 (or no compiler, no AVX2) are silent."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SGCNN_CACHE", str(blocker))  # the build would go under a file
    monkeypatch.setenv("CC", "cc")
    monkeypatch.delenv("SGCNN_NATIVE", raising=False)
    monkeypatch.setattr(_native_build, "_lib", None)
    monkeypatch.setattr(_native_build, "_error", None)
    monkeypatch.setattr(_native_build.platform, "machine", lambda: "x86_64")
    with pytest.warns(UserWarning, match="native kernels are unavailable .*SGCNN_CACHE"):
        assert not _native.available()
    monkeypatch.setattr(_native_build, "_error", None)
    monkeypatch.setenv("SGCNN_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _native.available()
    assert _native.unavailable_reason() == "disabled by SGCNN_NATIVE=0"


# ------------------------------------------------------------------ call plans


def _plain_spec():
    torch.manual_seed(0)
    layer = nn.Conv2d(12, 20, 3, 1, 1)
    sgcnn.self_group_(
        nn.Sequential(layer),
        0.5,
        groups=4,
        kmeans=KMeansSettings(n_init=1, max_iter=30),
        default_exclusions=False,
    )
    return fast.spec_from_layer(layer, relu=True)


@needs_native
def test_call_plans_follow_the_input_shape_and_the_geometry_settings():
    """A module keeps one plan per input shape (and border / padding setting): calls at
    alternating shapes, and after its output border is changed, stay exact; copies and
    pickles start without plans; a plan used at another shape is refused."""
    import copy
    import pickle

    from torch.nn import functional as F

    spec = _plain_spec()
    module = fast.NativeGroupConv2d.from_spec(spec, 4)
    with torch.inference_mode():
        for shape in [(2, 12, 9, 9), (1, 12, 5, 7), (2, 12, 9, 9), (3, 12, 4, 4)]:
            x = torch.randn(shape)
            _close(module(x), F.conv2d(x, spec.weight, spec.bias, 1, 1).relu())
        assert len(module._plans) == 3
        module.out_pad = (1, 1)
        x = torch.randn(2, 12, 9, 9)
        want = F.pad(F.conv2d(x, spec.weight, spec.bias, 1, 1).relu(), (1, 1, 1, 1))
        _close(module(x), want)
        for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
            assert len(clone._plans) == 0
            _close(clone(x), want)
        plan = module._plan(x)
        other = torch.randn(1, 12, 9, 9)
        with pytest.raises(ValueError, match="the plan is for inputs of shape"):
            _native.conv2d(
                other, module.entries, module.weights, module.chunks, module.rowmap,
                module.bias, None, plan.geo, True, plan=plan,
            )  # fmt: skip


@needs_native
def test_a_block_chosen_for_narrower_vectors_runs_where_vectors_are_wider():
    """A model converted with AVX2 (8 lanes) records blocks up to twice AVX-512's largest; run
    where the library is built with wider vectors, it takes the largest block, same result."""
    spec = _plain_spec()
    module = fast.NativeGroupConv2d.from_spec(spec, 4)
    x = torch.randn(2, 12, 9, 9)
    with torch.inference_mode():
        want = module(x).clone()
        for vectors in (_native.max_block(), _native.max_block() + 4, 2 * _native.max_block()):
            module._vectors = vectors
            module._plans.clear()
            assert torch.equal(module(x), want)


def test_native_kernels_unavailable_at_run_time_is_a_clear_error(monkeypatch):
    """A converted model (or .pt2) using the native kernels, run where they cannot load."""
    monkeypatch.setattr(_native_build, "_load", lambda: None)
    monkeypatch.setattr(_native_build, "_error", "disabled by SGCNN_NATIVE=0")
    with pytest.raises(SgcnnError, match=r"native kernels, which cannot run here \(disabled"):
        _native_build.lanes()


@needs_native
def test_a_plan_follows_the_layer_tensors_and_its_arena_buffer():
    """A plan keeps the layer's own kernel arguments while their addresses stay the same:
    after the weights are replaced (new storage, same parameter) the call reads the new
    ones. In an arena the output view is handed out again for the same buffer, rebuilt for
    a new one, and the floats behind it are zeros whatever was there before."""
    from torch.nn import functional as F

    from sgcnn.deploy._arena import Arena

    spec = _plain_spec()
    module = fast.NativeGroupConv2d.from_spec(spec, 4)
    module.arena_slot = (Arena(1), 0)
    x = torch.randn(2, 12, 9, 9)
    with torch.inference_mode():
        first = module(x)
        _close(first, F.conv2d(x, spec.weight, spec.bias, 1, 1).relu())
        assert module(x) is first  # the same view of the same arena buffer
        with torch.inference_mode(False):
            module.weights.data = module.weights.data * 2  # new storage, same parameter
            module.bias.data = module.bias.data * 2
        _close(module(x), F.conv2d(x, 2 * spec.weight, 2 * spec.bias, 1, 1).relu())
        plan = module._plan(x)
        with torch.inference_mode(False):  # as the arena makes its buffers
            flat = torch.full((plan.numel + _native.SLACK + 7,), 5.0)
        out = plan.output(flat, keep=True)
        assert plan.output(flat, keep=True) is out and out.shape == plan.shape
        assert bool((flat[plan.numel : plan.numel + _native.SLACK] == 0).all())
        assert plan.output(flat.clone(), keep=True) is not out


@needs_native
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_shares_of_one_block_on_several_threads(threads):
    """Batch 1 on a small map: one block of positions whose chunks are split into several work
    items; a thread reuses the block's panel for its next share. Exact whatever the number of
    threads, strided or not."""
    from torch.nn import functional as F

    spec = _plain_spec()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for stride, size in ((1, 7), (2, 14)):
            spec_s = fast.LayerSpec(
                "conv", spec.weight, spec.bias, spec.groups, (stride, stride), (1, 1), (1, 1),
                1, True, spec.kept_kernels,
            )  # fmt: skip
            module = fast.NativeGroupConv2d.from_spec(spec_s, 8, rows=2)
            x = torch.randn(1, 12, size, size)
            want = F.conv2d(x, spec.weight, spec.bias, stride, 1).relu()
            with torch.inference_mode():
                _close(module(x), want)
                _close(module(x), want)
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ inputs it was not built for


def _grouped_layer(padding: int = 1, kernel: int = 3) -> nn.Module:
    model = nn.Sequential(nn.Conv2d(16, 32, kernel, padding=padding if kernel > 1 else 0))
    sgcnn.self_group_(
        model, 0.5, groups=4, kmeans=KMeansSettings(n_init=1, max_iter=30),
        default_exclusions=False,
    )  # fmt: skip
    return model[0]


@pytest.mark.parametrize("kind", ["grouped", "loop", "native", "winograd", "matmul"])
@pytest.mark.parametrize("shape", [(1, 8, 6, 6), (1, 24, 6, 6), (16, 6, 6)])
def test_every_realization_refuses_an_input_of_another_channel_count(kind, shape):
    """The native kernels would read past the input (or skip channels), a gather would drop
    channels: each says what it expects instead."""
    if kind in ("native", "winograd") and not _native.available():
        pytest.skip("native kernel unavailable")
    if kind == "matmul":
        layer = nn.Sequential(nn.Conv2d(16, 32, 1))
        sgcnn.self_group_(layer, 0.5, groups=4, default_exclusions=False)
        module = fast.DenseConv2d.from_masked(layer[0], mode="matmul")
    else:
        module = fast.CONV_REALIZATIONS[kind].from_masked(_grouped_layer())
    with pytest.raises(SgcnnError, match=r"expects an input of shape \[batch, 16, height"):
        module(torch.randn(shape))


@needs_native
@pytest.mark.parametrize("kind", ["native", "winograd"])
def test_native_kernels_handle_an_empty_batch_and_refuse_a_too_small_input(kind):
    layer = _grouped_layer(padding=0)
    module = fast.CONV_REALIZATIONS[kind].from_masked(layer)
    with torch.no_grad():
        empty = module(torch.randn(0, 16, 5, 5))
        assert empty.shape == layer(torch.randn(0, 16, 5, 5)).shape == (0, 32, 3, 3)
        x = torch.randn(2, 16, 3, 3)  # one output position
        _close(module(x), layer(x))
    for shape in [(1, 16, 2, 2), (1, 16, 0, 5)]:
        with pytest.raises(SgcnnError, match="too small for a 3x3 kernel"):
            module(torch.randn(shape))


@needs_native
def test_native_max_pool_gives_pytorchs_answer_on_empty_and_too_small_inputs():
    from sgcnn.deploy._fast_pool import MaxPool2d

    pool = MaxPool2d(3, 2)
    assert pool(torch.randn(0, 4, 5, 5)).shape == (0, 4, 2, 2)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        pool(torch.randn(1, 4, 2, 2))
    with pytest.raises(RuntimeError, match="pad should be at most half"):
        MaxPool2d(2, 2, padding=2)(torch.randn(1, 4, 5, 5))  # windows of padding alone


@needs_native
@pytest.mark.parametrize("kind", ["native", "winograd"])
def test_a_traced_program_refuses_an_input_with_fewer_channels(kind):
    """A traced program calls the operators without the module's check; they guard their
    reads themselves rather than run past the input's memory."""
    module = fast.CONV_REALIZATIONS[kind].from_masked(_grouped_layer())
    with torch.no_grad():
        traced = torch.jit.trace(module, torch.randn(1, 16, 6, 6))
        with pytest.raises((SgcnnError, RuntimeError), match="input has 8 channels"):
            traced(torch.randn(1, 8, 6, 6))


def _op_call(module, x, **tables):
    """The operator call a traced program makes for ``module``, with tables replaced."""
    args = {n: getattr(module, n) for n in ("entries", "weights", "chunks", "rowmap", "bias")}
    args.update(tables)
    op = getattr(torch.ops.sgcnn, _native.OPERATORS[module.tile])
    return op(x, *args.values(), None, *_native.op_args(module.geometry()), module.relu)


@needs_native
@pytest.mark.parametrize("kind", ["native", "winograd"])
def test_operators_refuse_tables_that_would_index_outside_their_buffers(kind):
    """A saved program hands the operators its own tables: each one the kernel would follow
    outside its buffers is refused, also after a table was checked and then written to."""
    module = fast.CONV_REALIZATIONS[kind].from_masked(_grouped_layer())
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        _close(_op_call(module, x), module(x))
        chunks = module.chunks.clone()
        bad = {
            "rowmap": module.rowmap.clone().fill_(32),
            "chunks": chunks.clone().index_fill_(1, torch.tensor([3]), 17),  # rows > RMAX
            "bias": module.bias[:-1].clone(),
            "weights": module.weights[:-1].clone(),
            "entries": module.entries.to(torch.int64),
        }
        for name, table in bad.items():
            with pytest.raises(SgcnnError, match="not written by sgcnn"):
                _op_call(module, x, **{name: table})
        _close(_op_call(module, x, chunks=chunks), module(x))  # checked, cached
        chunks[0, 1] = module.entries.shape[0]  # then edited in place: checked again
        with pytest.raises(SgcnnError, match="chunks point outside"):
            _op_call(module, x, chunks=chunks)


@needs_native
def test_pool_operator_refuses_what_its_kernel_cannot_read():
    x = torch.randn(1, 2, 6, 6)
    for args in [(x.double(), [3, 3], [2, 2], [0, 0]), (x, [3, -3], [2, 2], [0, 0]),
                 (x, [3, 3], [0, 2], [0, 0]), (x, [3, 3], [2, 2], [-1, 0])]:  # fmt: skip
        with pytest.raises(SgcnnError, match="max pooling"):
            torch.ops.sgcnn.max_pool2d(*args, False)
    torch.testing.assert_close(
        torch.ops.sgcnn.max_pool2d(x, [3, 3], [2, 2], [1, 1], False),
        nn.functional.max_pool2d(x, 3, 2, 1),
    )


def test_a_plane_too_wide_for_the_direct_kernel_is_refused():
    """The direct kernel keeps a tap's offset in 24 bits: a vertical dilation that large on
    a wide input would wrap, so a call plan for that shape is refused (before any input
    memory is read)."""
    geo = _native.Geometry(8, (3, 3), padding=(1, 1), dilation=(3000, 1))
    _native.Plan(geo, (1, 2, 6001, 2700))  # offsets up to 2 x 3000 x 2702 + 2: within 2^24
    with pytest.raises(SgcnnError, match="too large for the native kernel"):
        _native.Plan(geo, (1, 2, 6001, 2800))


@needs_native
@pytest.mark.parametrize("kind", ["native", "winograd"])
def test_native_layers_refuse_other_dtypes_and_a_backward_pass(kind):
    """A float64 input had been read as float32 (corrupting the heap). An input that needs a
    gradient had silently left the autograd graph; it now runs through the operator, and a
    backward pass fails loudly (the kernels have none)."""
    layer = _grouped_layer()
    module = fast.CONV_REALIZATIONS[kind].from_masked(layer)
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        module(x)  # a plan for this shape exists: the type is checked all the same
        for dtype in (torch.float64, torch.bfloat16):
            with pytest.raises(SgcnnError, match="computes float32 on the CPU"):
                module(x.to(dtype))
    needs_grad = x.clone().requires_grad_()
    y = module(needs_grad)  # inference without torch.no_grad() still works
    with torch.no_grad():
        _close(y, layer(x))
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()
    traced = torch.jit.trace(module, x)
    with pytest.raises((SgcnnError, RuntimeError), match="computes float32 on the CPU"):
        traced(x.double())
    with torch.no_grad(), pytest.raises(SgcnnError, match="must stay contiguous float32"):
        module.double()(x)  # the weights cast, not the input: read as float32 they are garbage


@needs_native
def test_native_max_pool_falls_back_to_pytorch_when_a_gradient_is_needed():
    from sgcnn.deploy._fast_pool import MaxPool2d

    x = torch.randn(1, 4, 7, 7, requires_grad=True)
    MaxPool2d(3, 2, 1)(x).sum().backward()
    want = torch.randn(1, 4, 7, 7, requires_grad=True)
    with torch.no_grad():
        want.copy_(x)
    nn.MaxPool2d(3, 2, 1)(want).sum().backward()
    torch.testing.assert_close(x.grad, want.grad)


@pytest.mark.parametrize(
    ("kind", "kernel"),
    [("native", 3), ("native", 1), ("winograd", 3), ("grouped", 3), ("loop", 3)],
)
@pytest.mark.parametrize("relu", [False, True])
def test_nan_inputs_stay_nan_through_every_realization(kind, kernel, relu):
    """A NaN in the input gives NaN where the masked layer gives NaN (ReLU included: the
    native epilogue had turned NaN into 0, hiding a corrupt input behind a finite answer;
    1x1 layers apply theirs straight from registers)."""
    if kind in ("native", "winograd") and not _native.available():
        pytest.skip("native kernel unavailable")
    layer = _grouped_layer(kernel=kernel)
    module = fast.CONV_REALIZATIONS[kind].from_masked(layer, relu=relu)
    x = torch.randn(2, 16, 7, 7)
    x[0, :, 2, 3] = float("nan")
    with torch.no_grad():
        want = layer(x).relu() if relu else layer(x)
        got = module(x)
    assert want.isnan().any() and torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan()
    _close(got[ok], want[ok])


@needs_native
@pytest.mark.parametrize("kind", ["native", "winograd"])
def test_a_residual_of_another_shape_or_type_is_refused(kind):
    """The kernels read the residual element by element: a smaller one was read past its end
    (where PyTorch's addition raises or broadcasts)."""
    module = fast.CONV_REALIZATIONS[kind].from_masked(_grouped_layer())
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        module(x, torch.randn(1, 32, 8, 8))
        for residual in (torch.randn(1, 32, 4, 4), torch.randn(2, 32, 8, 8), torch.randn(32, 1, 1)):
            with pytest.raises(SgcnnError, match="adds CPU residuals of the same shape and type"):
                module(x, residual)
        with pytest.raises(SgcnnError, match="adds CPU residuals of the same shape and type"):
            module(x, torch.randn(1, 32, 8, 8, dtype=torch.float64))


@needs_native
def test_an_accumulating_layer_adds_a_channels_last_residual_out_of_place():
    """In a channels-last conversion a dense shortcut hands over a channels-last residual,
    which the in-place accumulation cannot take: it is added out of place, unchanged."""
    layer = _grouped_layer()
    module = fast.CONV_REALIZATIONS["native"].from_masked(layer)
    module.accumulate = True
    x = torch.randn(2, 16, 6, 6)
    residual = torch.randn(2, 32, 6, 6).contiguous(memory_format=torch.channels_last)
    kept = residual.clone()
    with torch.no_grad():
        got = module(x, residual)
        _close(got, layer(x) + kept)
    torch.testing.assert_close(residual, kept, rtol=0, atol=0)


@needs_native
def test_fx_symbolic_trace_of_a_converted_model_records_the_operators():
    """fx tracing hands layers a Proxy: nothing may branch on its values."""
    model, x = _grouped()
    converted = convert(model, x, tune=False, progress=False)
    assert any(getattr(m, "accumulate", False) for m in converted.modules())
    traced = torch.fx.symbolic_trace(converted)
    assert any("sgcnn" in str(n.target) for n in traced.graph.nodes if n.op == "call_function")
    with torch.no_grad():
        _close(traced(x), model(x))
