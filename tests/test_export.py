"""Saving converted models without their class, ONNX export, and the CLI around them."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sgcnn
from _shared import FAST_KMEANS
from sgcnn.cli.main import main
from sgcnn.deploy import export as exporting
from sgcnn.deploy import fast
from sgcnn.engine.checkpoint import model_payload, save_checkpoint
from sgcnn.models.registry import model_entry


class LocalNet(nn.Module):
    """A model class that exists only in this test module."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 1),
            nn.BatchNorm2d(32),
        )
        self.skip = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.body(x) + self.skip(x))
        return self.head(x.mean((2, 3)))


def _grouped_local():
    model = LocalNet()
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, 12, 12))
    return model.eval(), torch.randn(2, 3, 12, 12)


def test_saved_converted_model_loads_and_runs_without_its_class(tmp_path):
    model, x = _grouped_local()
    converted = sgcnn.convert(model, x, tune=False)
    path = exporting.save(converted, tmp_path / "local.pt2", x)["path"]
    x3 = torch.randn(3, 3, 12, 12)  # another batch size: the batch dimension stays dynamic
    torch.save(x3, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x3), tmp_path / "want.pt")
    # A fresh interpreter that never sees LocalNet (nor this test module).
    code = (
        "import torch, sgcnn\n"
        f"m = sgcnn.load({path!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"want = torch.load({str(tmp_path / 'want.pt')!r})\n"
        "torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-4)\n"
        "assert m.sgcnn_conversion['layers']\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_onnx_export_matches_pytorch_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, x = _grouped_local()
    result = sgcnn.export(model, tmp_path / "local.onnx", x, format="onnx")
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] <= 1e-4
    # the file runs at another batch size too, and only standard operators are in it
    session = ort.InferenceSession(str(tmp_path / "local.onnx"), providers=["CPUExecutionProvider"])
    x5 = torch.randn(5, 3, 12, 12)
    (got,) = session.run(None, {"input": x5.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x5), atol=1e-4, rtol=1e-4)
    onnx = pytest.importorskip("onnx")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "local.onnx")).graph.node}
    assert "Gather" in ops and "Conv" in ops  # the diverse groups: gathers + grouped convs


def test_onnx_export_of_a_converted_model_keeps_it_usable(tmp_path):
    pytest.importorskip("onnxruntime")
    model, x = _grouped_local()
    converted = sgcnn.convert(model, x, tune=False)
    result = exporting.export_onnx(converted, tmp_path / "c.onnx", x)
    assert result["max_abs_diff"] <= 1e-4
    with torch.no_grad():  # exporting worked on a copy: the converted model is unchanged
        torch.testing.assert_close(converted(x), model(x), atol=1e-5, rtol=1e-4)


def test_export_errors_are_clear(tmp_path):
    model, x = _grouped_local()
    with pytest.raises(sgcnn.SgcnnError, match=r"unsupported export format 'tflite'.*onnx"):
        sgcnn.export(model, tmp_path / "m.tflite", x, format="tflite")
    with pytest.raises(sgcnn.SgcnnError, match="neither self-grouped nor converted"):
        sgcnn.export(LocalNet().eval(), tmp_path / "m.onnx", x)  # format from the name
    for name, kwargs, message in [
        ("m.pt2", {"format": "onnx"}, "is named .pt2 but format is 'onnx'"),
        ("m.bin", {}, "cannot tell the format"),
        ("m.onnx", {"dynamic_batch": False}, "dynamic_batch=False is for format pt2"),
        ("m.pt2", {"opset": 13}, "a pt2 program has none"),
    ]:
        with pytest.raises(sgcnn.SgcnnError, match=message):
            sgcnn.export(model, tmp_path / name, x, **kwargs)
        assert not (tmp_path / name).exists()
    with pytest.raises(sgcnn.SgcnnError, match="does not exist"):
        sgcnn.load(tmp_path / "missing.pt2")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a program")
    with pytest.raises(sgcnn.SgcnnError, match="cannot read"):
        sgcnn.load(garbage)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_an_unwritable_path_is_refused_before_any_conversion(fmt, tmp_path, monkeypatch):
    """An existing file (overwrite=False) or a folder as path is refused before the model is
    converted and traced, in the words of the API."""
    from sgcnn.deploy import export as export_module

    model, x = _grouped_local()
    monkeypatch.setattr(export_module, "_converted", lambda *a, **k: pytest.fail("converted"))
    existing = tmp_path / f"m.{fmt}"
    existing.write_bytes(b"keep me")
    with pytest.raises(sgcnn.SgcnnError, match=r"already exists; pass overwrite=True"):
        sgcnn.export(model, existing, x, overwrite=False)
    assert existing.read_bytes() == b"keep me"
    (tmp_path / f"d.{fmt}").mkdir()
    with pytest.raises(sgcnn.SgcnnError, match="is a folder"):
        sgcnn.export(model, tmp_path / f"d.{fmt}", x)


class ReadsValues(nn.Module):
    """Self-grouped LocalNet whose head goes through Python floats: a tracer records the
    values of the example as constants, so the exported program ignores its input."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.tensor(self.net(x).tolist())


class UsesFFT(nn.Module):
    """Self-grouped LocalNet followed by an operator ONNX opset 17 does not have."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return torch.fft.rfft(self.net(x)).abs()


def test_pt2_of_a_batch_one_example_runs_any_batch_and_refuses_other_shapes(tmp_path):
    model, _ = _grouped_local()
    x1 = torch.randn(1, 3, 12, 12)
    result = sgcnn.export(model, tmp_path / "m.pt2", x1, format="pt2")
    assert result["dynamic_batch"] and result["max_abs_diff"] <= 1e-4
    loaded = sgcnn.load(tmp_path / "m.pt2")
    for batch in (1, 3, 7):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(sgcnn.SgcnnError, match=r"exported for inputs of shape Nx3x12x12"):
        loaded(torch.randn(2, 3, 16, 16))
    with pytest.raises(sgcnn.SgcnnError, match="inference only"):
        loaded.train()


def test_pt2_with_a_fixed_batch_says_so(tmp_path):
    model, x = _grouped_local()
    result = sgcnn.export(model, tmp_path / "m.pt2", x, format="pt2", dynamic_batch=False)
    assert not result["dynamic_batch"]
    loaded = sgcnn.load(tmp_path / "m.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(sgcnn.SgcnnError, match=r"inputs of shape 2x3x12x12"):
        loaded(torch.randn(3, 3, 12, 12))


def test_plain_torch_export_load_reads_a_standard_operator_program(tmp_path):
    """A program of ATen operators only (what ``realizations=("grouped", "dense")`` gives)
    loads with ``torch.export.load`` in an interpreter that never imports sgcnn."""
    model, x = _grouped_local()
    portable = sgcnn.convert(model, x, tune=False, realizations=exporting.PORTABLE)
    path = exporting.save(portable, tmp_path / "p.pt2", x)["path"]
    x3 = torch.randn(3, 3, 12, 12)
    torch.save(x3, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x3), tmp_path / "want.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({path!r}).module()\n"
        f"got = m(torch.load({str(tmp_path / 'x.pt')!r}))\n"
        f"want = torch.load({str(tmp_path / 'want.pt')!r})\n"
        "torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)\n"
        "assert 'sgcnn' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_onnx_of_a_max_pooling_network_runs_in_onnxruntime_on_a_new_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = sgcnn.create_model("resnet18")
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS, input_size=(3, 48, 48))
    model.eval()
    path = tmp_path / "r18.onnx"
    result = sgcnn.export(model, path, torch.randn(1, 3, 48, 48), format="onnx")
    assert result["max_abs_diff"] <= 1e-4
    x3 = torch.randn(3, 3, 48, 48)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x3.numpy()})
    with torch.no_grad():
        want = model(x3)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-3, rtol=1e-3)
    # not a constant: two different inputs give two different outputs
    assert not torch.allclose(torch.from_numpy(got[0]), torch.from_numpy(got[1]))


def test_to_portable_replaces_every_native_module():
    model, x = _grouped_local()
    converted = sgcnn.convert(model, x, tune=False)
    converted.pool = fast.MaxPool2d(3, 2, 1)
    portable = exporting.to_portable(converted)
    kinds = {type(m) for m in portable.modules()}
    assert fast.MaxPool2d not in kinds and fast.NativeGroupConv2d not in kinds
    assert nn.MaxPool2d in kinds


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_program_that_ignores_its_input_is_refused_and_not_written(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    net, x = _grouped_local()
    path = tmp_path / f"m.{fmt}"
    with pytest.raises(sgcnn.SgcnnError, match=r"disagrees|cannot"):
        sgcnn.export(ReadsValues(net).eval(), path, x, format=fmt)
    assert list(tmp_path.iterdir()) == []


def test_an_operator_onnx_lacks_is_one_clear_error_and_no_file(tmp_path):
    net, x = _grouped_local()
    with pytest.raises(sgcnn.SgcnnError, match="ONNX exporter cannot export") as info:
        sgcnn.export(UsesFFT(net).eval(), tmp_path / "m.onnx", x, format="onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_example_of_the_wrong_shape_is_an_error_before_anything_is_written(tmp_path):
    model, _ = _grouped_local()
    with pytest.raises(sgcnn.SgcnnError, match="expects 3 input channels"):
        sgcnn.export(model, tmp_path / "m.onnx", torch.randn(1, 4, 12, 12), format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_progress_names_the_layers_on_stderr_only_when_asked(capsys):
    model, x = _grouped_local()
    sgcnn.convert(model, x, tune=False, progress=True)
    err = capsys.readouterr().err
    assert "convert: layer 1/" in err and "stem" in err
    sgcnn.convert(model, x, tune=False, progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "densenet121"])
def test_onnx_and_pt2_of_torchvision_networks_agree_on_a_new_batch(tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    model = sgcnn.create_model(name)
    sgcnn.self_group_(model, 0.6, groups=16, kmeans=FAST_KMEANS, input_size=(3, 64, 64))
    model.eval()
    x1, x3 = torch.randn(1, 3, 64, 64), torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        want = model(x3)
    sgcnn.export(model, tmp_path / "m.onnx", x1, format="onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x3.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-3, rtol=1e-3)
    sgcnn.export(model, tmp_path / "m.pt2", x1, format="pt2")
    with torch.no_grad():
        got = sgcnn.load(tmp_path / "m.pt2")(x3)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-3)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def checkpoint(tmp_path):
    model = sgcnn.create_model("test_resnet")
    sgcnn.self_group_(model, 0.5, groups=4, kmeans=FAST_KMEANS)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model_payload(model, "test_resnet", {}))
    return path


def test_cli_export_onnx_and_unsupported_format(tmp_path, checkpoint, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out)])
        == 0
    )
    assert out.is_file()
    assert "onnxruntime vs PyTorch" in capsys.readouterr().out
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(checkpoint),
                "--format",
                "coreml",
                "--output",
                str(tmp_path / "m.x"),
            ]
        )
        == 2
    )
    assert "unsupported export format 'coreml'" in capsys.readouterr().err


def test_onnx_without_onnxruntime_is_refused_unless_told_not_to_check(
    tmp_path, checkpoint, capsys, monkeypatch
):
    """Every program is checked before it is written; where onnxruntime is missing an ONNX
    file is written only with --no-verify, and the command says it was not checked."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime fails
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "needs onnxruntime: pip install 'sgcnn[onnx]'" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main([*argv, "--quiet", "--no-verify"]) == 0
    assert "not checked (--no-verify)" in capsys.readouterr().out and out.is_file()


def test_cli_export_failure_is_one_line_status_2_and_no_file(
    tmp_path, checkpoint, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::thing' is not supported\nmore")

    monkeypatch.setattr(torch.onnx, "export", broken)
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(out)]
    assert main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "aten::thing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_cli_convert_writes_a_loadable_program(tmp_path, checkpoint):
    out = tmp_path / "m.pt2"
    report = tmp_path / "choices.json"
    assert (
        main(
            [
                "convert",
                "--checkpoint",
                str(checkpoint),
                "--batch-size",
                "2",
                "--no-tune",
                "--output",
                str(out),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    loaded = sgcnn.load(out)
    x = torch.randn(2, 3, 16, 16)
    masked = sgcnn.engine.checkpoint.load_model(checkpoint)[0].eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), masked(x), atol=1e-5, rtol=1e-4)
    assert json.loads(report.read_text())["layers"]


def test_cli_eval_of_a_program_matches_its_checkpoint(tmp_path, checkpoint, capsys):
    program = tmp_path / "m.pt2"
    argv = ["convert", "--checkpoint", str(checkpoint), "--no-tune", "--quiet"]
    assert main([*argv, "--output", str(program)]) == 0
    paths = [checkpoint, program]
    if importlib.util.find_spec("onnxruntime"):
        paths.append(tmp_path / "m.onnx")
        argv = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--quiet"]
        assert main([*argv, "--output", str(paths[-1])]) == 0
    capsys.readouterr()
    results = []
    data = ["--data", "synthetic", "--set", "data.image_size=16"]
    for path in paths:  # the deployed artifacts score what their checkpoint does
        assert main(["eval", str(path), *data, "--batch-size", "7", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    for result in results[1:]:
        assert result["images"] == results[0]["images"] > 7 and result["params"] is None
        assert result["top1"] == results[0]["top1"] and result["loss"] == pytest.approx(
            results[0]["loss"], rel=1e-4
        )
    for argv, message in (
        (["eval", str(program)], "does not record its dataset's name: pass --data"),
        (["eval", str(program), *data, "--set", "data.num_classes=4"], "4 classes"),
        (["eval", str(program), "--data", "synthetic"], "--set data.image_size=16"),
        (["convert", "--checkpoint", str(program), "--output", str(tmp_path / "x.pt2")], "eval"),
        (["eval", str(paths[-1]), "--data", "synthetic"], "--set data.image_size=16"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


class _TwoOutputs(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        y = self.model(x)
        return y, 2 * y


class _Uint8Input(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.float() / 255)


def _foreign_onnx(path, model, example, dynamic=False):
    """An ONNX file as other tools write it (fixed batch unless ``dynamic``)."""
    axes = {"input": {0: "batch"}} if dynamic else None
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), path, dynamo=False, input_names=["input"], dynamic_axes=axes
        )


def test_cli_eval_of_programs_other_tools_write(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    net = sgcnn.create_model("test_resnet").eval()
    x = torch.randn(1, 3, 16, 16)
    grouped = sgcnn.create_model("test_resnet").eval()
    sgcnn.self_group_(grouped, 0.5, groups=4, kmeans=FAST_KMEANS)
    _foreign_onnx(tmp_path / "fixed1.onnx", net, x)  # batch 1 only: run image by image
    _foreign_onnx(tmp_path / "half.onnx", copy.deepcopy(net).half(), x.half(), dynamic=True)
    sgcnn.export(grouped, tmp_path / "fixed4.pt2", x.repeat(4, 1, 1, 1), format="pt2",
                 dynamic_batch=False)  # fmt: skip
    _foreign_onnx(tmp_path / "u8.onnx", _Uint8Input(net), x.to(torch.uint8))
    _foreign_onnx(tmp_path / "two.onnx", _TwoOutputs(net), x)
    sgcnn.export(_TwoOutputs(grouped), tmp_path / "two.pt2", x, format="pt2")
    data = ["--data", "synthetic", "--set", "data.image_size=16", "--batch-size", "7", "--json"]
    for name in ("fixed1.onnx", "half.onnx", "fixed4.pt2"):  # 128 images, 7 at a time
        assert main(["eval", str(tmp_path / name), *data]) == 0, capsys.readouterr().err
        assert json.loads(capsys.readouterr().out)["images"] == 128
    for name, message in (
        ("u8.onnx", "takes tensor(uint8) input"),
        ("two.onnx", "gives 2 outputs"),
        ("two.pt2", "not one tensor of class scores"),
    ):
        assert main(["eval", str(tmp_path / name), *data]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_cli_bench_writes_json_and_csv_with_provenance(tmp_path, capsys):
    out, table = tmp_path / "bench.json", tmp_path / "bench.csv"
    assert (
        main(
            [
                "bench",
                "--model",
                "test_convnet",
                "--batch-sizes",
                "1,2",
                "--runs",
                "2",
                "--warmup",
                "1",
                "--threads",
                "1",
                "--no-tune",
                "--output",
                str(out),
                "--csv",
                str(table),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and env["host_cpu"]
    if (Path(sgcnn.__file__).parents[2] / ".git").exists():  # a checkout: the code is named
        assert len(env["sgcnn_commit"].removesuffix("+changes")) >= 7
    assert [b["batch"] for b in result["batches"]] == [1, 2]
    for entry in result["batches"]:
        models = entry["models"]
        assert set(models) >= {
            "dense",
            "dense_channels_last",
            "dense_jit",
            "dense_fused",
            "masked",
            "converted",
        }
        assert models["converted"]["runs"] == 2
        assert models["converted"]["macs_per_image"] <= models["dense"]["macs_per_image"]
        assert models["dense"]["speedup_vs_dense"] == pytest.approx(1.0)
        # every ratio is also given against the fastest dense deployment, which it names
        best = entry["best_dense"]
        assert best.startswith("dense") and best != "dense_fused"
        assert models[best]["speedup_vs_best_dense"] == pytest.approx(1.0)
        assert all(
            models[k]["speedup_vs_best_dense"] <= 1.0 + 1e-9
            for k in models
            if k == "dense" or k in ("dense_channels_last", "dense_jit", "dense_onnxruntime")
        )
        assert entry["realised_fraction"] is not None
    assert "not a torchvision ResNet" in result["channel_pruning"]["skipped"]
    rows = table.read_text().strip().splitlines()
    assert rows[0].startswith("model,batch,variant,median_ms")
    assert len(rows) == 1 + sum(len(b["models"]) for b in result["batches"])
    assert "converted" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_channel_pruned_peer_reaches_the_budget_and_runs(name):
    import torchvision

    from sgcnn.metrics._channel_peer import peer_unavailable, prune_to_macs

    model = getattr(torchvision.models, name)().eval()
    dense = sgcnn.count(model, 32)["flops"]
    pruned, ratio = prune_to_macs(model, dense // 2, (3, 32, 32))
    assert 0.2 < ratio < 0.4 and sgcnn.count(pruned, 32)["flops"] / dense == pytest.approx(
        0.5, abs=0.01
    )
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert "ResNeXt" in peer_unavailable(torchvision.models.resnext50_32x4d())
    assert "not a torchvision ResNet" in peer_unavailable(sgcnn.create_model("resnet20"))


def test_interleaved_rounds_change_which_model_runs_after_which():
    """Each model's predecessor varies from round to round (a model that leaves threads
    spinning would otherwise always slow the same neighbour)."""
    from sgcnn.metrics.latency import compare_latency

    calls = []
    models = {name: (lambda x, name=name: calls.append(name)) for name in "abcde"}
    timings = compare_latency(models, torch.zeros(1), runs=12, warmup=0)
    assert all(t["runs"] == 12 for t in timings.values())
    rounds = [calls[i : i + 5] for i in range(0, len(calls), 5)]
    assert all(sorted(r) == list("abcde") for r in rounds)
    before_a = {r[r.index("a") - 1] for r in rounds if r.index("a") > 0}
    assert len(before_a) >= 3


def test_cli_bench_shows_the_channel_pruned_peer_of_a_resnet(capsys):
    argv = ["bench", "--model", "resnet18", "--input-size", "32", "--batch-sizes", "1"]
    assert main([*argv, "--runs", "1", "--warmup", "0", "--threads", "1", "--no-tune"]) == 0
    out = capsys.readouterr().out
    assert "channel_pruned_jit" in out and "best channel-pruned deployment" in out
    assert "channel-pruned peer: ratio" in out and " ? " not in out


def test_cli_bench_bad_input(capsys):
    if not torch.cuda.is_available():
        assert main(["bench", "--model", "test_convnet", "--device", "cuda"]) == 2
        assert (
            "'cuda' asked for (device= or --device) but CUDA is not available"
            in capsys.readouterr().err
        )
    assert main(["bench", "--model", "test_convnet", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


class _SeveralOutputs(nn.Module):
    """A feature extractor: a dict holding a map and a tuple (map, pooled vector)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 32, 3, padding=1)
        self.b = nn.Conv2d(32, 32, 1)

    def forward(self, x):
        a = torch.relu(self.a(torch.relu(self.stem(x))))
        return {"a": a, "pair": (self.b(a), a.mean((2, 3)))}


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_a_model_with_several_outputs_exports_and_is_checked_output_by_output(fmt, tmp_path):
    """Each output is compared on a new batch size (the check had assumed one tensor)."""
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
    model = _SeveralOutputs().eval()
    sgcnn.self_group_(model, 0.6, groups=4, kmeans=FAST_KMEANS, input_size=(3, 16, 16))
    path = tmp_path / f"m.{fmt}"
    result = sgcnn.export(model, path, torch.randn(2, 3, 16, 16), format=fmt, progress=False)
    assert result["max_abs_diff"] < 1e-4
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    if fmt == "pt2":
        with torch.no_grad():
            got = sgcnn.load(path)(x)
        leaves = [got["a"], *got["pair"]]
    else:
        leaves = [torch.from_numpy(t) for t in ort.InferenceSession(str(path)).run(None, {
            "input": x.numpy()})]  # fmt: skip
    for g, w in zip(leaves, [want["a"], *want["pair"]], strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_torch_compile_is_a_dense_deployment_bench_can_add(tmp_path, capsys):
    """``--compile`` adds torch.compile (Inductor, frozen weights) to the dense deployments
    the converted model is measured against; it computes what the model computes."""
    from sgcnn.metrics.latency import deploy

    model = sgcnn.create_model("test_convnet").eval()
    x = torch.randn(2, *model_entry("test_convnet").input_size)
    compiled = deploy(model, x, "compile")
    new = torch.randn_like(x)
    with torch.no_grad():
        torch.testing.assert_close(compiled(new), model(new), atol=1e-4, rtol=1e-4)
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "test_convnet", "--batch-sizes", "2", "--runs", "2"]
    args += ["--threads", "1", "--no-tune", "--compile", "--output", str(out)]
    assert main(args) == 0
    (entry,) = json.loads(out.read_text())["batches"]
    assert "dense_compile" in entry["models"] and "dense_compile" not in entry.get("skipped", {})
