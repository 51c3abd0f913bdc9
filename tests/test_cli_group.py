"""`sgcnn group` / `sgcnn count` and checkpoints that rebuild self-grouped models."""

import json
import re

import pytest
import torch

import sgcnn
from sgcnn.cli.main import main
from sgcnn.engine.checkpoint import load_model, model_payload, save_checkpoint


def test_group_writes_checkpoint_and_summary(tmp_path, capsys):
    out = tmp_path / "g"
    rc = main(["group", "--model", "lenet5", "--conv-sparsity", "0.95", "--fc-sparsity",
               "0.9", "--groups", "8", "--output", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"]["params"] == sgcnn.count(sgcnn.create_model("lenet5"), 28)["params"]
    assert summary["grouped"]["params"] < summary["baseline"]["params"] / 10
    layers = {entry["name"]: entry for entry in summary["layers"]}
    assert set(layers) == {"conv2", "fc1", "fc2"}
    assert layers["fc1"]["target_sparsity"] == 0.9
    assert sum(layers["conv2"]["group_sizes"]) == 50
    assert len(layers["conv2"]["kept_inputs"]) == layers["conv2"]["groups"] <= 8
    payload = torch.load(out / "model.pt", weights_only=True)
    assert payload["masked"] == ["conv2", "fc1", "fc2"]

    model, name, _ = load_model(out / "model.pt")
    assert name == "lenet5"
    assert sgcnn.count(model, 28)["params"] == summary["grouped"]["params"]
    assert not list(tmp_path.glob(".g.tmp-*"))  # no staging left behind

    capsys.readouterr()
    assert main(["count", "--checkpoint", str(out / "model.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == summary["grouped"]["params"]

    # grouping again at a lower target keeps the masks (cumulative) and says so
    again = tmp_path / "again"
    assert main(["group", "--checkpoint", str(out / "model.pt"), "--conv-sparsity", "0.5",
                 "--output", str(again), "--quiet"]) == 0  # fmt: skip
    assert "were already sparser than the target" in capsys.readouterr().out


def test_count_json(capsys):
    assert main(["count", "--model", "lenet5", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    dense = sgcnn.count(sgcnn.create_model("lenet5"), 28)  # its figures: test_models.py
    assert (data["params"], data["flops"]) == (dense["params"], dense["flops"])
    assert data["input_size"] == [1, 28, 28]


def test_group_from_plain_state_dict_and_loaded_weights_are_used(tmp_path):
    torch.manual_seed(1)
    model = sgcnn.create_model("resnet20")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "g"
    assert main(["group", "--model", "resnet20", "--checkpoint", str(tmp_path / "weights.pt"),
                 "--conv-sparsity", "0.5", "--output", str(out), "--quiet"]) == 0  # fmt: skip
    loaded, _, _ = load_model(out / "model.pt")
    expected = model.layer1[0].conv1.weight * loaded.layer1[0].conv1.weight_mask()
    torch.testing.assert_close(loaded.layer1[0].conv1.weight, expected)


def test_self_grouped_model_round_trips(tmp_path):
    model = sgcnn.create_model("test_resnet")
    sgcnn.self_group_(model, 0.6, groups=4)
    save_checkpoint(tmp_path / "m.pt", model_payload(model, "test_resnet", {}))
    loaded, _, _ = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))
    for name, groups in sgcnn.group_structure(model).items():
        other = sgcnn.group_structure(loaded)[name]
        assert torch.equal(groups.mask, other.mask) and torch.equal(groups.keep, other.keep)


@pytest.mark.parametrize(
    "args, message",
    [
        (["group", "--model", "lenet5", "--conv-sparsity", "1.2"], r"outside \[0, 1\)"),
        (["group", "--model", "lenet", "--conv-sparsity", "0.5"], "unknown model 'lenet'"),
        (["group", "--model", "lenet5", "--conv-sparsity", "0.5", "--groups", "0"],
         "argument --groups: 0 is below 1"),
        (["group", "--model", "lenet5", "--conv-sparsity", "0.5", "--include", "zz*"],
         "include pattern 'zz\\*' matches no"),
        (["count", "--model", "lenet5", "--checkpoint", "missing.pt"], "does not exist"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    if args[0] == "group":
        args = [*args, "--output", str(out)]
    try:
        rc = main(args)
    except SystemExit as exit:  # argparse rejects malformed values itself
        rc = exit.code
    assert rc == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert not out.exists()


def test_corrupt_and_mismatched_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["count", "--model", "lenet5", "--checkpoint", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    torch.save(sgcnn.create_model("resnet20").state_dict(), tmp_path / "r20.pt")
    assert main(["count", "--model", "lenet5", "--checkpoint", str(tmp_path / "r20.pt")]) == 2
    assert "does not fit model" in capsys.readouterr().err
    out = tmp_path / "g"
    main(["group", "--model", "lenet5", "--conv-sparsity", "0.5", "--output", str(out), "--quiet"])
    assert main(["count", "--model", "resnet20", "--checkpoint", str(out / "model.pt")]) == 2
    assert "holds a 'lenet5' model" in capsys.readouterr().err


def test_existing_output_is_not_clobbered(tmp_path, capsys):
    out = tmp_path / "g"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["group", "--model", "lenet5", "--conv-sparsity", "0.5", "--output", str(out)]
    assert main(args) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert main([*args, "--overwrite", "--quiet"]) == 0
    assert {p.name for p in out.iterdir()} == {"keep.txt", "model.pt", "summary.json"}


def test_nan_weights_are_reported_with_the_layer(tmp_path, capsys):
    model = sgcnn.create_model("lenet5")
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    rc = main(["group", "--model", "lenet5", "--checkpoint", str(tmp_path / "w.pt"),
               "--conv-sparsity", "0.5", "--output", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    assert "layer 'fc1'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
