"""A model records the data it was trained on (class names, normalisation, sizes): `sgcnn
eval` normalises as in training and refuses relabelled classes; `--resume` refuses changed
data."""

import json

import numpy as np
import pytest
from PIL import Image

from sgcnn.cli.main import main
from sgcnn.data import DataConfig, build_datasets
from sgcnn.data.config import check_same_data, data_record
from sgcnn.errors import SgcnnError


def _tree(root, classes=("cat", "dog", "emu"), per_class=(8, 3), seed=0, size=16):
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (size, size, 3)) + 60 * k
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{seed}_{i:03d}.png")
    return root


def _train(tree, out, *extra):
    argv = ["train", "--model", "test_convnet", "--data", "imagefolder", "--data-root",
            str(tree), "--epochs", "1", "--output", str(out), "--quiet",
            "--set", "train.threads=1", "--set", "data.val_fraction=0.25", *extra]  # fmt: skip
    return main(argv)


def _eval(model, tree, capsys, *extra):
    code = main(["eval", str(model), "--data-root", str(tree), "--json", "--device", "cpu", *extra])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else out.err)


@pytest.fixture
def trained(tmp_path, monkeypatch):
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    tree = _tree(tmp_path / "tree")
    assert _train(tree, tmp_path / "run") == 0
    return tree, tmp_path / "run" / "baseline" / "model.pt"


def test_eval_normalises_as_in_training_when_the_tree_has_changed(trained, capsys):
    tree, model = trained
    code, before = _eval(model, tree, capsys)
    assert code == 0
    for i in range(8):  # brighter training images: the measured mean would move
        Image.new("RGB", (16, 16), (250, 250, 250)).save(tree / "train" / "cat" / f"w{i}.png")
    code, after = _eval(model, tree, capsys)
    assert code == 0 and after["loss"] == before["loss"] and after["images"] == before["images"]


def test_eval_refuses_relabelled_classes(trained, capsys):
    tree, model = trained
    for split in ("train", "test"):
        (tree / split / "dog").rename(tree / split / "wolf")  # same count, other names
    code, err = _eval(model, tree, capsys)
    assert code == 2 and "was trained on classes [cat, dog, emu] (3)" in err


def test_resume_refuses_changed_data(trained, tmp_path, capsys):
    tree, _ = trained
    _tree(tree, seed=1)  # more images in every class folder
    assert _train(tree, tmp_path / "run", "--resume") == 2
    assert "the data are not those" in capsys.readouterr().err


def test_a_record_compares_classes_sizes_and_normalisation(tmp_path):
    splits = build_datasets(DataConfig(name="synthetic", synthetic_size=40, num_classes=4))
    record = data_record(splits)
    check_same_data(record, splits, "m.pt")
    check_same_data(None, splits, "m.pt")  # an older record: not checked
    for key, value in [("classes", ["a", "b", "c", "d"]), ("sizes", [41, 10, 10]),
                       ("mean", [0.9, 0.1, 0.1])]:  # fmt: skip
        with pytest.raises(SgcnnError, match=key):
            check_same_data({**record, key: value}, splits, "m.pt")


def test_normalize_must_be_two_lists_per_channel():
    with pytest.raises(SgcnnError, match=r"normalize must be \[mean, std\]"):
        build_datasets(DataConfig(name="synthetic", normalize=[[0.5], [0.2, 0.2]]))
    with pytest.raises(SgcnnError, match="std values must be > 0"):
        build_datasets(DataConfig(name="synthetic", normalize=[[0.5], [0.0]]))


def test_eval_with_the_data_name_keeps_the_runs_split_and_size(tmp_path, capsys):
    """`--data synthetic` for a run on synthetic data keeps the run's data section (its split
    seed and image size), instead of starting from the defaults."""
    out = tmp_path / "run"
    argv = ["train", "--model", "test_convnet", "--data", "synthetic", "--epochs", "1",
            "--output", str(out), "--quiet", "--set", "data.split_seed=3",
            "--set", "data.synthetic_size=64", "--set", "data.image_size=16",
            "--set", "train.threads=1"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    model = str(out / "baseline" / "model.pt")
    results = []
    for extra in ([], ["--data", "synthetic"]):
        assert main(["eval", model, "--split", "val", "--json", "--device", "cpu", *extra]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0] == results[1] and results[0]["images"] == 16


def test_the_record_travels_from_training_through_group_into_programs(
    tmp_path, monkeypatch, capsys
):
    """`sgcnn group` keeps the record; `convert` / `export` write it into the program and take
    the trained image size (20 px here, the model's default is 16) as their example's."""
    onnxruntime = pytest.importorskip("onnxruntime")
    import sgcnn
    from sgcnn.engine.checkpoint import recorded_data

    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    tree = _tree(tmp_path / "tree", size=20)
    assert _train(tree, tmp_path / "run", "--set", "data.image_size=20") == 0
    trained = recorded_data(tmp_path / "run" / "baseline" / "model.pt")
    assert trained["input_size"] == [3, 20, 20] and trained["classes"] == ["cat", "dog", "emu"]
    grouped = tmp_path / "grouped"
    assert main(["group", "--checkpoint", str(tmp_path / "run" / "baseline" / "model.pt"),
                 "--conv-sparsity", "0.5", "--output", str(grouped), "--quiet"]) == 0  # fmt: skip
    assert recorded_data(grouped / "model.pt") == trained

    assert main(["export", "--checkpoint", str(grouped / "model.pt"), "--format", "onnx",
                 "--output", str(tmp_path / "m.onnx"), "--quiet"]) == 0  # fmt: skip
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert session.get_inputs()[0].shape[1:] == [3, 20, 20]
    assert json.loads(session.get_modelmeta().custom_metadata_map["sgcnn.data"]) == trained

    assert main(["convert", "--checkpoint", str(grouped / "model.pt"), "--no-tune",
                 "--output", str(tmp_path / "m.pt2"), "--quiet"]) == 0  # fmt: skip
    program = sgcnn.load(tmp_path / "m.pt2")
    assert program.data == trained and program.sgcnn_example_shape[1:] == [3, 20, 20]

    # `sgcnn eval` of a program normalises as recorded (brighter images would move the mean)
    for i in range(8):
        Image.new("RGB", (20, 20), (250, 250, 250)).save(tree / "train" / "cat" / f"w{i}.png")
    data = ["--data", "imagefolder", "--set", "data.image_size=20",
            "--set", "data.val_fraction=0.25"]  # fmt: skip
    capsys.readouterr()
    results = {}
    for name in ("grouped/model.pt", "m.onnx", "m.pt2"):
        code, results[name] = _eval(tmp_path / name, tree, capsys, *data)
        assert code == 0, results[name]
    for name in ("m.onnx", "m.pt2"):
        assert results[name]["loss"] == pytest.approx(results["grouped/model.pt"]["loss"], abs=1e-4)
    (tree / "test" / "dog").rename(tree / "test" / "wolf")
    (tree / "train" / "dog").rename(tree / "train" / "wolf")
    code, err = _eval(tmp_path / "m.onnx", tree, capsys, *data)
    assert code == 2 and "was trained on classes [cat, dog, emu] (3)" in err


def test_programs_without_a_record_say_so_and_bad_records_are_refused(tmp_path, capsys):
    import torch

    import sgcnn
    from sgcnn.models import create_model

    model = create_model("test_resnet")
    sgcnn.self_group_(model, conv_sparsity=0.5, input_size=(3, 16, 16))
    x = torch.randn(1, 3, 16, 16)
    sgcnn.export(model, tmp_path / "plain.pt2", x, verify=False)
    assert sgcnn.load(tmp_path / "plain.pt2").data is None
    with pytest.raises(SgcnnError, match="data must be a dict of JSON values"):
        sgcnn.export(model, tmp_path / "bad.pt2", x, data={"mean": [float("nan")]})
    with pytest.raises(SgcnnError, match="data must be a dict"):
        sgcnn.export(model, tmp_path / "bad.onnx", x, data=["cat", "dog"], verify=False)
    assert not (tmp_path / "bad.pt2").exists() and not (tmp_path / "bad.onnx").exists()


def test_cli_commands_read_a_checkpoint_once(tmp_path, monkeypatch, capsys):
    """`count` and `group` take model and data record from one read of the checkpoint, and the
    record's input size (20 px; the model's default is 16) is the one they use."""
    import torch

    import sgcnn
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint

    model = sgcnn.create_model("test_resnet")
    record = {"classes": [str(i) for i in range(10)], "mean": [0.5] * 3, "std": [0.25] * 3,
              "input_size": [3, 20, 20]}  # fmt: skip
    path = tmp_path / "m.pt"
    save_checkpoint(path, {**model_payload(model, "test_resnet", {}), "data": record})
    reads = []
    real_load = torch.load

    def counting_load(file, *args, **kwargs):
        reads.append(str(file))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main(["count", "--checkpoint", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == [3, 20, 20]
    assert reads.count(str(path)) == 1
    reads.clear()
    assert main(["group", "--checkpoint", str(path), "--conv-sparsity", "0.5",
                 "--output", str(tmp_path / "g"), "--quiet"]) == 0  # fmt: skip
    assert reads.count(str(path)) == 1
