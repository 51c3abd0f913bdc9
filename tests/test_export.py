"""Saving converted models without their class, ONNX export, and the CLI around them."""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import sgcnn
from sgcnn import exporting
from sgcnn.cli.main import main
from sgcnn.core.clustering import KMeansSettings
from sgcnn.engine.checkpoint import model_payload, save_checkpoint

FAST_KMEANS = KMeansSettings(n_init=1, max_iter=50)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        sgcnn.export(LocalNet().eval(), tmp_path / "m.onnx", x)
    with pytest.raises(sgcnn.SgcnnError, match="does not exist"):
        sgcnn.load(tmp_path / "missing.pt2")
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a program")
    with pytest.raises(sgcnn.SgcnnError, match="cannot read"):
        sgcnn.load(garbage)


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
    assert [b["batch"] for b in result["batches"]] == [1, 2]
    for entry in result["batches"]:
        models = entry["models"]
        assert set(models) >= {"dense", "dense_fused", "masked", "converted"}
        assert models["converted"]["runs"] == 2
        assert models["converted"]["macs_per_image"] < models["dense"]["macs_per_image"]
        assert models["dense"]["speedup_vs_dense"] == pytest.approx(1.0)
        assert entry["realised_fraction"] is not None
    rows = table.read_text().strip().splitlines()
    assert rows[0].startswith("model,batch,variant,median_ms")
    assert len(rows) == 1 + 2 * 4
    assert "converted" in capsys.readouterr().out


def test_cli_bench_bad_input(capsys):
    if not torch.cuda.is_available():
        assert main(["bench", "--model", "test_convnet", "--device", "cuda"]) == 2
        assert "'cuda' is not available" in capsys.readouterr().err
    assert main(["bench", "--model", "test_convnet", "--batch-sizes", "1,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
