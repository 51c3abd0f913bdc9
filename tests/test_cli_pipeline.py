"""The pipeline commands end to end: train -> eval -> finetune -> report, run RECIPE, and the
one-line errors (exit status 2) a user gets for bad input."""

import json
import shutil

import pytest
import yaml

from sgcnn.cli.main import main
from sgcnn.engine.checkpoint import load_checkpoint, save_checkpoint
from sgcnn.engine.state import read_metrics

DATA = [
    "--data",
    "synthetic",
    "--set",
    "data.synthetic_size=128",
    "--set",
    "data.image_size=16",
    "--set",
    "train.threads=1",
    "--device",
    "cpu",
    "--quiet",
]


def _row(run, name):
    return next(
        r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "row" and r["name"] == name
    )


def test_train_eval_finetune_report(tmp_path, capsys):
    base = tmp_path / "base"
    assert (
        main(
            [
                "train",
                "--model",
                "test_convnet",
                "--epochs",
                "1",
                "--batch-size",
                "32",
                "--output",
                str(base),
                *DATA,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| baseline |" in out and "elapsed" in out
    assert (base / "baseline" / "model.pt").is_file()

    # eval finds the dataset in the checkpoint's config and reproduces the run's test figure.
    assert main(["eval", str(base / "baseline" / "model.pt"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(_row(base, "baseline")["top1"])
    assert result["images"] == 32 and result["split"] == "test"

    # finetune takes the dataset from the checkpoint's run, as eval does.
    tuned = tmp_path / "tuned"
    assert (
        main(
            [
                "finetune",
                "--checkpoint",
                str(base / "baseline" / "model.pt"),
                "--scheme",
                "LG",
                "--conv",
                "0.3",
                "--set",
                "grouping.lg_step=0.15",
                "--local-epochs",
                "1",
                "--epochs",
                "1",
                "--output",
                str(tuned),
                "--set",
                "train.threads=1",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| Conv-30/FC-30 |" in out
    # The baseline row of a fine-tuning run is the given checkpoint, evaluated.
    assert _row(tuned, "baseline")["top1"] == _row(base, "baseline")["top1"]
    assert not [
        r
        for r in read_metrics(tuned / "metrics.jsonl")
        if r["event"] == "epoch" and r["kind"] == "train"
    ]

    (tuned / "report.md").unlink()
    assert main(["report", str(tuned)]) == 0
    assert "| Conv-30/FC-30 |" in capsys.readouterr().out
    assert "Conv-30/FC-30" in (tuned / "report.md").read_text()
    assert json.loads((tuned / "report.json").read_text())["rows"][1]["name"] == "Conv-30/FC-30"

    # report --latency times every row as deployed and the report shows it.
    timing = ["report", str(tuned), "--latency", "--runs", "2", "--threads", "1"]
    assert main(timing) == 0
    assert "latency ms" in capsys.readouterr().out
    rows = json.loads((tuned / "report.json").read_text())["rows"]
    assert all(r["latency_ms"] > 0 for r in rows)
    assert (tuned / "latency.json").is_file() and (tuned / "accuracy_vs_latency.png").is_file()
    meta = json.loads((tuned / "report.json").read_text())["meta"]
    assert "batch 1, 1 thread on" in meta["latency"] and "best:" in meta["latency"]
    # A copied run folder keeps its measurement (the checkpoints' contents are the same) ...
    copied = tmp_path / "copied"
    shutil.copytree(tuned, copied)
    assert main(["report", str(copied)]) == 0
    copied_rows = json.loads((copied / "report.json").read_text())["rows"]
    assert all(r["latency_ms"] > 0 for r in copied_rows)
    # ... a row whose checkpoint changed since shows no latency until measured again.
    changed = copied / rows[1]["checkpoint"]
    save_checkpoint(changed, {**load_checkpoint(changed), "note": "trained further"})
    assert main(["report", str(copied)]) == 0
    report = json.loads((copied / "report.json").read_text())
    assert report["rows"][0]["latency_ms"] > 0 and report["rows"][1]["latency_ms"] is None
    assert "changed since): Conv-30/FC-30" in report["meta"]["latency"]
    capsys.readouterr()
    for path in copied.glob("*/model.pt"):
        path.unlink()
    for argv, message in (
        ([*timing[:-1], "999"], "more than the"),
        (["report", str(copied), "--latency"], "nothing to time"),
        (["report", str(tuned), "--runs", "3"], "add --latency"),
    ):
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_run_a_recipe_file_with_overrides(tmp_path, capsys):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "test_vgg"},
                "train": {"epochs": 1, "batch_size": 32},
                "grouping": {"scheme": "G", "conv": [0.5], "global_epochs": 1},
                "report": {
                    "paper": [{"name": "baseline", "params": 1000, "flops": 2000, "top1": 50}]
                },
            }
        )
    )
    out = tmp_path / "run"
    assert (
        main(["run", str(recipe), "--set", "grouping.conv=[0.6]", "--output", str(out), *DATA]) == 0
    )
    printed = capsys.readouterr().out
    assert "paper Top-1" in printed and "| Conv-60/FC-60 |" in printed
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["name"] == "mine" and config["grouping"]["conv"] == [0.6]
    assert config["model"]["name"] == "test_vgg"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "lenet5_mnist"], "lenet5_mnist_g, lenet5_mnist_lg?"),
        (["run", "lenet5_mnist_g", "--set", "model.nmae=x"], "unknown key 'model.nmae'"),
        (["run", "lenet5_mnist_g", "--set", "optim.lr=fast"], "optim.lr must be a number"),
        (["run", "resnet50_imagenet_g"], "model.checkpoint is not set"),
        (
            [
                "train",
                "--model",
                "lenet5",
                "--data",
                "imagefolder",
                "--data-root",
                "/nowhere",
                "--epochs",
                "1",
            ],
            "does not exist",
        ),
        (["finetune", "--checkpoint", "/nowhere/model.pt", "--conv", "0.5"], "does not exist"),
        (["train", "--model", "lenet5", *DATA], "expects 1x28x28"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_existing_run_and_resume_errors(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "test_convnet", "--epochs", "1", "--output", str(out), *DATA]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    assert main([*args, "--resume", "--set", "optim.lr=0.5"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # complete already: re-renders the report


def test_eval_needs_a_dataset_for_a_plain_state_dict(tmp_path, capsys):
    import torch

    import sgcnn

    torch.save(sgcnn.create_model("test_convnet").state_dict(), tmp_path / "w.pt")
    assert main(["eval", str(tmp_path / "w.pt"), "--model", "test_convnet"]) == 2
    assert "pass --data NAME" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                str(tmp_path / "w.pt"),
                "--model",
                "test_convnet",
                "--data",
                "synthetic",
                "--set",
                "data.image_size=16",
                "--split",
                "val",
            ]
        )
        == 0
    )
    assert "test_convnet on synthetic val" in capsys.readouterr().out
