"""Transfer: a trained (self-grouped) classifier gets a fresh classifier for a new dataset and
is fine-tuned (dense / L / G / LG); masks survive, bad input is one clear line."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

import sgcnn
from sgcnn.cli.main import main
from sgcnn.data import DataConfig, build_datasets
from sgcnn.engine.checkpoint import load_model, model_payload, save_checkpoint
from sgcnn.engine.transfer import find_classifier, load_transferred

# The new task: synthetic 3-class 16 px images (the source model knows 10 classes).
RECIPE = {
    "data": {"name": "synthetic", "num_classes": 3, "synthetic_size": 96, "image_size": 16},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "threads": 1},
    "optim": {"lr": 0.05, "weight_decay": 5e-4, "schedule": "constant"},
    "finetune": {"lr": 0.05, "weight_decay": 5e-4, "schedule": "constant"},
    "grouping": {"groups": 4, "global_epochs": 1, "local_epochs": 1, "lg_step": 0.3},
}


def _source(tmp_path, grouped: bool) -> str:
    model = sgcnn.create_model("test_resnet")
    if grouped:
        sgcnn.self_group_(model, 0.5, 0.5, groups=4, seed=0)
    path = tmp_path / ("grouped.pt" if grouped else "dense.pt")
    save_checkpoint(path, model_payload(model, "test_resnet", {"num_classes": 10}))
    return str(path)


def _transfer(tmp_path, checkpoint, scheme, *extra):
    recipe = tmp_path / "task.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / f"run-{scheme}"
    argv = ["transfer", "--checkpoint", checkpoint, "--scheme", scheme, "--recipe", str(recipe)]
    return main([*argv, "--output", str(out), "--quiet", *extra]), out


def test_load_transferred_replaces_only_the_classifier(tmp_path):
    path = _source(tmp_path, grouped=True)
    source, _, _ = load_model(path)
    model, name, kwargs, classifier = load_transferred(path, None, 3)
    assert (name, kwargs["num_classes"], classifier) == ("test_resnet", 3, "fc")
    assert model.fc.out_features == 3 and not hasattr(model.fc, "sg_mask")  # fresh, dense
    src, new = source.state_dict(), model.state_dict()
    for key, value in src.items():
        if not key.startswith("fc."):
            assert torch.equal(new[key], value), key
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def test_a_plain_state_dict_of_another_class_count_transfers(tmp_path):
    """A user's own weights (torch.save(model.state_dict())) trained on 7 classes, where the
    model's default is 10: the class count is read from the classifier weight."""
    torch.manual_seed(0)
    trained = sgcnn.create_model("test_resnet", num_classes=7)
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    model, _, kwargs, classifier = load_transferred(str(tmp_path / "plain.pt"), "test_resnet", 3)
    assert kwargs["num_classes"] == 3 and getattr(model, classifier).out_features == 3
    assert torch.equal(model.state_dict()["conv1.weight"], trained.state_dict()["conv1.weight"])


def test_a_users_grouped_state_dict_of_another_class_count_transfers_end_to_end(tmp_path, capsys):
    """Through the CLI, to the end-of-run mask check: a self-grouped 7-class state_dict whose
    pruned weights are not zero (the user's own training never re-applied the masks)."""
    torch.manual_seed(0)
    trained = sgcnn.create_model("test_resnet", num_classes=7)
    sgcnn.self_group_(trained, 0.5, groups=4, seed=0)
    with torch.no_grad():
        for m in trained.modules():
            if hasattr(m, "sg_mask"):
                m.weight.add_(0.01)  # pruned positions no longer zero
    torch.save(trained.state_dict(), tmp_path / "plain.pt")
    plain = str(tmp_path / "plain.pt")
    code, out = _transfer(tmp_path, plain, "L", "--model", "test_resnet")
    assert code == 0 and "masks kept" in capsys.readouterr().out
    rows = yaml.safe_load((out / "report.json").read_text())["rows"]
    result, _, kwargs = load_model(out / rows[-1]["checkpoint"])
    assert kwargs["num_classes"] == 3
    for m in result.modules():
        if hasattr(m, "sg_mask"):
            assert (m.weight * (1 - m.weight_mask())).abs().max() == 0


@pytest.mark.parametrize("scheme", ["L", "G", "LG"])
def test_transfer_keeps_masks_and_reports(tmp_path, capsys, scheme):
    grouped = scheme == "L"
    extra = [] if grouped else ["--conv", "0.5", "--fc", "0"]
    code, out = _transfer(tmp_path, _source(tmp_path, grouped), scheme, *extra)
    assert code == 0, capsys.readouterr().err
    report = yaml.safe_load((out / "report.json").read_text())
    assert not report.get("paper")  # the default recipe's CUB-200 figures are ResNet-50's
    rows = report["rows"]
    names = [r["name"] for r in rows]
    assert names == (["L"] if grouped else ["dense transfer", "Conv-50/FC-0"])
    result, _, kwargs = load_model(out / rows[-1]["checkpoint"])
    assert kwargs["num_classes"] == 3
    layers = [m for m in result.modules() if hasattr(m, "sg_mask") and m is not result.fc]
    assert layers and all(m.sg_mask.float().mean() < 0.7 for m in layers)
    for m in layers:  # pruned weights are exactly zero after fine-tuning
        assert (m.weight * (1 - m.weight_mask())).abs().max() == 0
    if grouped:
        source, _, _ = load_model(tmp_path / "grouped.pt")
        kept = {n: m.sg_mask for n, m in source.named_modules() if hasattr(m, "sg_mask")}
        for n, m in result.named_modules():
            if n in kept and n != "fc":
                assert torch.equal(m.sg_mask, kept[n]), n
        assert "masks kept" in capsys.readouterr().out


def test_scheme_must_fit_the_checkpoint(tmp_path, capsys):
    code, out = _transfer(tmp_path, _source(tmp_path, grouped=True), "dense")
    assert code == 2 and "--scheme L" in capsys.readouterr().err and not out.exists()
    code, out = _transfer(tmp_path, _source(tmp_path, grouped=False), "L")
    assert code == 2 and "no self-grouped layers" in capsys.readouterr().err
    assert not out.exists()


def test_a_one_shot_method_on_a_grouped_source_is_refused_before_training(tmp_path, capsys):
    code, out = _transfer(
        tmp_path, _source(tmp_path, grouped=True), "G", "--conv", "0.6",
        "--set", "grouping.method=random",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "already pruned" in err and "epoch" not in err and not out.exists()


def test_one_class_target_is_refused(tmp_path):
    with pytest.raises(sgcnn.SgcnnError, match="at least 2 classes"):
        load_transferred(_source(tmp_path, grouped=False), None, 1)


def test_a_model_without_classifier_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(sgcnn.SgcnnError, match="no classifier layer"):
        find_classifier(net, (3, 16, 16), 10)


def _tree(root, classes, per_class=4):
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((8, 8, 3), 30 * c + i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_class_subset(tmp_path):
    _tree(tmp_path / "tree", ["cat", "dog", "frog"])
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "tree"), classes=["frog", "cat"])
    splits = build_datasets(cfg)
    assert splits.classes == ["frog", "cat"] and splits.num_classes == 2
    assert len(splits.test) == 8 and sorted(set(splits.test.targets)) == [0, 1]
    x, _ = splits.test[0]  # frog (label 0) is the brightest class
    assert splits.test.targets[0] == 0 and x.mean() > splits.test[-1][0].mean()
    for classes, message in (
        (["cat", "horse"], "horse are not class folders"),
        (["cat"], "at least 2 classes"),
        (["cat", "cat"], "more than once"),
    ):
        with pytest.raises(sgcnn.SgcnnError, match=message):
            build_datasets(DataConfig(name="imagefolder", root=cfg.root, classes=classes))
    with pytest.raises(sgcnn.SgcnnError, match="imagefolder"):
        build_datasets(DataConfig(name="synthetic", classes=["a", "b"]))


def test_resizing_away_from_the_models_size_is_noted(tmp_path, capsys):
    checkpoint = _source(tmp_path, grouped=False)
    code, _ = _transfer(tmp_path, checkpoint, "dense", "--set", "data.image_size=24")
    err = capsys.readouterr().err
    assert code == 0 and "resized to 24x24 px" in err and "data.image_size=16" in err
    (tmp_path / "again").mkdir()
    code, _ = _transfer(tmp_path / "again", checkpoint, "dense")
    assert code == 0 and "resized" not in capsys.readouterr().err  # the recipe's 16 px is native
    # A checkpoint whose run recorded its image size is judged by that size.
    trained = tmp_path / "trained24.pt"
    model = sgcnn.create_model("test_resnet")
    save_checkpoint(trained, {**model_payload(model, "test_resnet", {}), "config": {
        "data": {"image_size": 24}}})  # fmt: skip
    (tmp_path / "third").mkdir()
    code, _ = _transfer(tmp_path / "third", str(trained), "dense")
    err = capsys.readouterr().err
    assert code == 0 and "was trained at 24x24" in err and "data.image_size=24" in err


def test_scheme_l_needs_grouping_outside_the_classifier(tmp_path, capsys):
    """A checkpoint whose only self-grouped layer is its classifier (which the transfer
    replaces) is a dense transfer: L is refused, dense runs."""
    from sgcnn.engine.checkpoint import attach_masks_

    model = sgcnn.create_model("test_resnet")
    attach_masks_(model, ["fc"])
    path = tmp_path / "fc-only.pt"
    save_checkpoint(path, model_payload(model, "test_resnet", {"num_classes": 10}))
    code, out = _transfer(tmp_path, str(path), "L")
    err = capsys.readouterr().err
    assert code == 2 and "no self-grouped layers outside its classifier (fc" in err
    assert "--scheme dense" in err and not out.exists()
    code, out = _transfer(tmp_path, str(path), "dense")
    assert code == 0, capsys.readouterr().err
    rows = yaml.safe_load((out / "report.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["dense transfer"]


def test_a_data_parallel_state_dict_loads_and_a_mismatch_is_short(tmp_path, capsys):
    """A state_dict saved from nn.DataParallel ("module." on every key) loads without the
    prefix; another model's weights fail in one short line naming transfer's own option, before
    any note on image size or run folder."""
    trained = sgcnn.create_model("test_resnet", num_classes=7)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({f"module.{k}": v for k, v in trained.state_dict().items()}, wrapped)
    code, out = _transfer(tmp_path, str(wrapped), "dense", "--model", "test_resnet")
    assert code == 0, capsys.readouterr().err
    model, _, _, _ = load_transferred(str(wrapped), "test_resnet", 3)
    assert torch.equal(model.conv1.weight, trained.conv1.weight)
    other = tmp_path / "vgg.pt"
    torch.save(sgcnn.create_model("test_vgg").state_dict(), other)
    (tmp_path / "again").mkdir()
    code, out = _transfer(
        tmp_path / "again", str(other), "dense", "--model", "test_resnet",
        "--set", "data.image_size=24",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and len(err) < 600, err
    assert "missing keys (38): conv1.weight" in err and "and 33 more" in err
    assert "--model" in err and "--num-classes" not in err
    assert "resized" not in err and not out.exists()


def test_a_resumed_transfer_whose_source_was_replaced_notes_it(tmp_path, capsys):
    """The source path now holds another grouping of the same model (the user ran `sgcnn group`
    again): the results are not compared with its masks. With the source untouched, a result
    that lost a mask is still an error."""
    import os

    source = _source(tmp_path, grouped=True)
    code, out = _transfer(tmp_path, source, "L")
    assert code == 0 and "masks kept" in capsys.readouterr().out
    row = out / "baseline" / "model.pt"
    kept = row.read_bytes()
    payload = torch.load(row, weights_only=True)
    payload["state_dict"]["layer1.0.conv1.sg_mask"].fill_(True)  # the mask is lost
    save_checkpoint(row, payload)
    assert _transfer(tmp_path, source, "L", "--resume")[0] == 2
    assert "layer1.0.conv1 lost its self-grouping mask" in capsys.readouterr().err
    row.write_bytes(kept)
    model = sgcnn.create_model("test_resnet")
    sgcnn.self_group_(model, 0.5, 0.5, groups=4, seed=1)  # another grouping, at the same path
    save_checkpoint(source, model_payload(model, "test_resnet", {"num_classes": 10}))
    later = (out / "config.yaml").stat().st_mtime + 10
    os.utime(source, (later, later))
    code, _ = _transfer(tmp_path, source, "L", "--resume")
    out_text, err = capsys.readouterr()
    assert code == 0, err
    assert "changed since the run started" in err and "masks kept" not in out_text


def test_class_names_yaml_would_read_as_other_types_stay_strings():
    """--classes 0 1 yes null: each item is quoted, so data.classes holds the folder names."""
    import argparse

    from sgcnn.cli._pipeline import shortcut_sets
    from sgcnn.engine.config import resolve_config

    args = argparse.Namespace(classes=["0", "1", "yes", "null", "it's"], conv=[0.5])
    sets = shortcut_sets(args, {"classes": "data.classes", "conv": "grouping.conv"})
    config = resolve_config({}, [*sets, "grouping.scheme=G"])
    assert config.data.classes == ["0", "1", "yes", "null", "it's"]
    assert config.grouping.conv == [0.5]  # numbers stay numbers


def _study(monkeypatch, tmp_path):
    """benchmarks/transfer_study.py with one row whose "sgcnn" writes report.json, then exits
    with the status in ``tmp_path / "exit"``."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import transfer_study

    row = transfer_study.Row("scratch", [], [], what="from scratch")
    monkeypatch.setattr(transfer_study, "ROWS", [row])
    monkeypatch.setattr(transfer_study, "ROWS_BY_NAME", {"scratch": row})
    script = (
        "import json, pathlib, sys; out = pathlib.Path(sys.argv[1]); out.mkdir(exist_ok=True); "
        "rows = [{'name': 'baseline', 'params': 1, 'flops': 1, 'top1': 50.0}]; "
        "(out / 'report.json').write_text(json.dumps({'rows': rows})); "
        "sys.exit(int(pathlib.Path(sys.argv[2]).read_text()))"
    )
    command = [sys.executable, "-c", script, str(tmp_path / "study" / "scratch")]
    monkeypatch.setattr(
        transfer_study, "_command", lambda *a, **k: [*command, str(tmp_path / "exit")]
    )
    return transfer_study


def test_study_row_that_exited_non_zero_is_not_done(tmp_path, monkeypatch, capsys):
    """A row whose process wrote report.json and then failed is neither "done already" on the
    next run nor collected: the study records its exit status."""
    study = _study(monkeypatch, tmp_path)
    run = ["run", "--archive", str(tmp_path), "--out", str(tmp_path / "study")]
    (tmp_path / "exit").write_text("1")
    assert study.main(run) == 1
    recorded = yaml.safe_load((tmp_path / "study" / "study.json").read_text())
    assert recorded["rows"]["scratch"]["returncode"] == 1
    collect = ["collect", "--runs", str(tmp_path / "study"), "--out", str(tmp_path / "r")]
    assert study.main(collect) == 0
    table = (tmp_path / "r" / "transfer_study.md").read_text()
    assert "(failed: exit 1)" in table and "50.00" not in table
    capsys.readouterr()
    (tmp_path / "exit").write_text("0")
    assert study.main(run) == 0
    printed = capsys.readouterr().out
    assert "done already" not in printed and "scratch: done in" in printed
    assert study.main(collect) == 0
    assert "50.00" in (tmp_path / "r" / "transfer_study.md").read_text()
