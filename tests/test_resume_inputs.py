"""What ``--resume`` needs: the run folder and the settings that shape the results, nothing
else. Not the source checkpoint (the run's state holds the model), not one spelling of its
path, not the report's title or the run's name, not the evaluation batch."""

from pathlib import Path

import pytest
import torch
import yaml

import sgcnn
from _shared import stop_after_first_stage
from sgcnn.cli.main import main
from sgcnn.engine.checkpoint import model_payload, save_checkpoint
from sgcnn.engine.config import config_to_dict, resolve_config
from sgcnn.engine.rundir import RESUMABLE_CHANGES, config_differences
from sgcnn.engine.runner import Runner
from sgcnn.engine.state import read_metrics
from sgcnn.errors import SgcnnError

# A 3-class synthetic task, one epoch per phase.
TASK = {
    "data": {"name": "synthetic", "num_classes": 3, "synthetic_size": 96, "image_size": 16},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "threads": 1},
    "optim": {"lr": 0.05, "weight_decay": 5e-4, "schedule": "constant"},
    "finetune": {"lr": 0.05, "weight_decay": 5e-4, "schedule": "constant"},
    "grouping": {"groups": 4, "global_epochs": 1, "local_epochs": 1, "lg_step": 0.3},
}


@pytest.fixture
def task(tmp_path, monkeypatch) -> Path:
    """``tmp_path`` as the current folder, holding the task recipe ``task.yaml``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(TASK))
    return tmp_path


def _source(path: str, name: str = "test_convnet", classes: int = 3, grouped=False) -> None:
    torch.manual_seed(0)
    model = sgcnn.create_model(name, num_classes=classes)
    if grouped:
        sgcnn.self_group_(model, 0.5, 0.5, groups=4, seed=0)
    save_checkpoint(path, model_payload(model, name, {"num_classes": classes}))


def _rows(out: Path) -> list[tuple]:
    records = read_metrics(out / "metrics.jsonl")
    return [(r["name"], r["top1"], r["flops"]) for r in records if r["event"] == "row"]


def test_finetune_resumes_without_its_source_checkpoint(task, monkeypatch, capsys):
    _source("src.pt")
    start = ["finetune", "--checkpoint", "src.pt", "--conv", "0.5", "--recipe", "task.yaml"]
    assert main([*start, "--output", "reference", "--quiet"]) == 0

    stop_after_first_stage(monkeypatch)
    assert main([*start, "--output", "run", "--quiet"]) == 130  # stopped before pruning
    Path("src.pt").rename("moved.pt")
    capsys.readouterr()
    code = main([*start, "--output", "run", "--quiet", "--resume"])
    assert code == 0, capsys.readouterr().err
    assert _rows(task / "run") == _rows(task / "reference")  # as if never interrupted

    # The same file spelled another way is the same start ...
    Path("moved.pt").rename("src.pt")
    absolute = [*start[:2], str(task / "src.pt"), *start[3:]]
    assert main([*absolute, "--output", "run", "--quiet", "--resume"]) == 0
    # ... another file is not, nor another dataset (the run's, not the checkpoint's).
    _source("other.pt")
    other = [*start[:2], "other.pt", *start[3:]]
    assert main([*other, "--output", "run", "--quiet", "--resume"]) == 2
    assert "model.checkpoint: 'src.pt' -> 'other.pt'" in capsys.readouterr().err
    assert main([*start, "--output", "run", "--resume", "--set", "data.image_size=8"]) == 2
    assert "data.image_size: 16 -> 8" in capsys.readouterr().err


def test_train_from_a_checkpoint_resumes_without_it(task, capsys):
    _source("src.pt")
    start = ["train", "--checkpoint", "src.pt", "--recipe", "task.yaml", "--output", "run"]
    assert main([*start, "--quiet"]) == 0
    Path("src.pt").unlink()
    assert main([*start, "--quiet", "--resume"]) == 0, capsys.readouterr().err
    # Without --output the run folder is named after the checkpoint's model: it is read.
    assert main([*start[:-2], "--resume"]) == 2
    err = capsys.readouterr().err
    assert "'src.pt' does not exist" in err and "pass its folder as --output" in err


def test_transfer_resumes_with_its_source_moved_or_spelled_another_way(task, capsys):
    _source("grouped.pt", "test_resnet", classes=10, grouped=True)
    start = ["transfer", "--checkpoint", "grouped.pt", "--scheme", "L", "--recipe", "task.yaml"]
    assert main([*start, "--output", "run", "--quiet"]) == 0
    assert "masks kept" in capsys.readouterr().out
    title = yaml.safe_load((task / "run" / "config.yaml").read_text())["report"]["title"]

    absolute = [*start[:2], str(task / "grouped.pt"), *start[3:]]
    assert main([*absolute, "--output", "run", "--quiet", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "masks kept" in out and "note" not in err  # the run's title, not a new one
    Path("grouped.pt").rename("moved.pt")
    assert main([*start, "--output", "run", "--quiet", "--resume"]) == 0
    assert "not checked against its masks" in capsys.readouterr().err
    report = yaml.safe_load((task / "run" / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == ["L"] and report["title"] == title


def test_name_and_report_title_may_change_on_resume(tmp_path, capsys):
    recipe = {
        **TASK,
        "model": {"name": "test_convnet"},
        "train": {**TASK["train"], "eval_batch_size": 64},
        "report": {"title": "first"},
    }
    out = tmp_path / "run"
    Runner(resolve_config(recipe), out, quiet=True).run()
    renamed = resolve_config(recipe, ["name=again", "report.title=second"])
    assert config_differences(config_to_dict(resolve_config(recipe)), renamed) == []
    Runner(renamed, out, resume=True, quiet=True).run()
    assert "note: name, report.title changed since the run started" in capsys.readouterr().err
    assert yaml.safe_load((out / "config.yaml").read_text())["report"]["title"] == "first"
    # What shapes the results may not change: the training batch, the names of the rows.
    for changed in ("train.batch_size=16", "report.baseline_name=dense"):
        with pytest.raises(SgcnnError, match="cannot resume"):
            Runner(resolve_config(recipe, [changed]), out, resume=True).run()


def test_the_evaluation_batch_may_change_on_resume(monkeypatch, task):
    """As the advice after running out of memory says (see test_evaluation_does_not_depend_on_
    the_batch): the run goes on from its last save with a smaller evaluation batch."""
    stop_after_first_stage(monkeypatch)
    start = ["train", "--model", "test_convnet", "--recipe", "task.yaml", "--output", "run"]
    assert main([*start, "--quiet", "--set", "train.eval_batch_size=64"]) == 130
    assert main([*start, "--quiet", "--set", "train.eval_batch_size=5", "--resume"]) == 0
    assert main([*start, "--output", "reference", "--quiet"]) == 0
    assert _rows(task / "run") == _rows(task / "reference")


def test_a_run_started_with_settings_its_schedule_ignored_resumes_without_them():
    """Runs started before such settings were refused: the command that resumes them drops
    the ignored setting (as the error says), which changes nothing."""
    saved = config_to_dict(resolve_config(None, ["optim.schedule=multistep"]))
    saved["optim"].update(schedule="cosine", milestones=[3])  # as an earlier sgcnn let pass
    assert config_differences(saved, resolve_config(None, ["optim.schedule=cosine"])) == []
    multistep = resolve_config(None, ["optim.schedule=multistep", "optim.milestones=[3]"])
    assert config_differences(saved, multistep) == ["optim.schedule: 'cosine' -> 'multistep'"]


def test_evaluation_does_not_depend_on_the_batch():
    """Eval mode (BatchNorm on its running statistics), per-image outputs summed in float64:
    any evaluation batch gives the same numbers."""
    from sgcnn.engine.build import build_data
    from sgcnn.engine.distributed import Dist
    from sgcnn.engine.loaders import eval_loader
    from sgcnn.engine.loop import Precision, evaluate

    config = resolve_config({**TASK, "model": {"name": "test_resnet"}})
    test = build_data(config).test
    model = sgcnn.create_model("test_resnet", num_classes=3)
    model.train()  # BatchNorm statistics of its own, not the initial ones
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 16, 16) * 2 + 0.5)
    cpu = Precision(torch.device("cpu"))
    results = [
        evaluate(model, eval_loader(test, Dist(), b, 0, False), cpu, Dist()) for b in (1, 7, 512)
    ]
    for result in results[1:]:
        assert {k: result[k] for k in ("top1", "top5", "n")} == {
            k: results[0][k] for k in ("top1", "top5", "n")
        }
        assert result["loss"] == pytest.approx(results[0]["loss"], rel=1e-6)


def test_out_of_memory_advice_says_what_resume_accepts(monkeypatch, capsys):
    import sgcnn.cli.models

    def run(args):
        raise MemoryError()

    monkeypatch.setattr(sgcnn.cli.models, "run", run)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert "--resume and a smaller evaluation batch (--set train.eval_batch_size=N)" in err
    assert "training batch (--batch-size, train.batch_size) needs a new run" in err
    assert "train.eval_batch_size" in RESUMABLE_CHANGES
    assert "train.batch_size" not in RESUMABLE_CHANGES
