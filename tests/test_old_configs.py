"""Runs and checkpoints of an older sgcnn keep working.

Before ``data.normalize`` applied to every dataset, sgcnn accepted it everywhere but used it
only for image folders of small images: a run on synthetic data (mnist, cifar10, ...) with it
set trained on the data's own statistics. Its checkpoints and state record those (the data
record); its saved config holds the ignored value. `sgcnn eval` and `sgcnn finetune` of such a
checkpoint use the recorded statistics, and the command that started such a run resumes it
with them.

Before schedule settings the schedule does not read were refused, a run could be started with
one (``milestones`` with ``cosine``): the command that started it resumes it.

The old artefacts are written by hand: a run of this sgcnn without the setting, whose saved
configs (``config.yaml``, the state's, every checkpoint's) then get it, as the old sgcnn wrote
them; the data records stay what the run really used.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from _shared import stop_after_first_stage
from sgcnn.cli.main import main
from sgcnn.data.config import check_same_data, data_record
from sgcnn.engine.checkpoint import load_checkpoint, save_checkpoint
from sgcnn.engine.config import config_to_dict, resolve_config
from sgcnn.engine.rundir import config_differences
from sgcnn.engine.runner import Runner
from sgcnn.engine.state import STATE_FILE, read_metrics
from sgcnn.errors import SgcnnError

IGNORED = [[0.2, 0.2, 0.2], [0.9, 0.9, 0.9]]  # what the old run was given, and ignored
SET_IGNORED = f"data.normalize={IGNORED}"

# A 3-class synthetic task, as --set options: `finetune` takes the data from the checkpoint.
DATA = ["data.name=synthetic", "data.num_classes=3", "data.synthetic_size=96", "data.image_size=16"]
TRAIN = ["train.batch_size=32", "train.device=cpu", "train.threads=1",
         "optim.lr=0.05", "optim.schedule=constant", "finetune.lr=0.05",
         "finetune.schedule=constant", "grouping.groups=4", "grouping.global_epochs=1"]  # fmt: skip


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _train(out: str, *extra: str) -> int:
    argv = ["train", "--model", "test_convnet", "--epochs", "1", "--output", out, "--quiet"]
    return main([*argv, *_sets(DATA + TRAIN), *extra])


def _edit_saved_configs(run: Path, section: str, **values) -> None:
    """Write ``values`` into ``section`` of every config ``run`` saved (config.yaml, the
    state's, each checkpoint's), as an sgcnn that let them pass wrote them; the data records
    (what the run really used) stay."""
    path = run / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    saved[section].update(values)
    path.write_text(yaml.safe_dump(saved, sort_keys=False, default_flow_style=None))
    for file in [run / STATE_FILE, *run.glob("*/model.pt")]:
        payload = load_checkpoint(file)
        payload["config"][section].update(values)
        save_checkpoint(file, payload)


def _old_checkpoint(run: Path, copy: Path) -> Path:
    """``run``'s baseline checkpoint, saved as an old sgcnn saved it after ``--set
    data.normalize=IGNORED`` (ignored for synthetic data)."""
    payload = load_checkpoint(run / "baseline" / "model.pt")
    payload["config"]["data"]["normalize"] = IGNORED
    save_checkpoint(copy, payload)
    return copy


def _eval(model, capsys, *extra: str) -> tuple[dict, str]:
    assert main(["eval", str(model), "--json", "--device", "cpu", *extra]) == 0
    out = capsys.readouterr()
    return json.loads(out.out), out.err


def _rows(run: Path) -> list[tuple]:
    """What ``run`` measured: each epoch's losses (which the inputs' normalisation moves), each
    row's Top-1 and FLOPs."""
    keys = {"epoch": ("row", "epoch", "train_loss", "val_loss"), "row": ("name", "top1", "flops")}
    records = read_metrics(run / "metrics.jsonl")
    return [tuple(r[k] for k in keys[r["event"]]) for r in records if r["event"] in keys]


@pytest.fixture
def trained(tmp_path, monkeypatch, capsys) -> Path:
    """A baseline run (``run``) of this sgcnn, data.normalize unset, in the current folder."""
    monkeypatch.chdir(tmp_path)
    assert _train("run") == 0, capsys.readouterr().err
    capsys.readouterr()
    return tmp_path / "run"


def test_eval_of_an_old_checkpoint_uses_the_statistics_it_trained_with(trained, capsys):
    reference, _ = _eval(trained / "baseline" / "model.pt", capsys)
    old = _old_checkpoint(trained, trained.parent / "old.pt")
    result, err = _eval(old, capsys)
    assert result == {**reference, "checkpoint": str(old)}  # not the ignored statistics
    assert "was ignored by the sgcnn that trained it" in err
    # data.normalize given on the command stands (as it would for the run's own checkpoint).
    chosen, err = _eval(old, capsys, "--set", SET_IGNORED)
    other, _ = _eval(trained / "baseline" / "model.pt", capsys, "--set", SET_IGNORED)
    assert chosen["loss"] == other["loss"] != reference["loss"] and "note" not in err


def test_finetune_of_an_old_checkpoint_uses_the_statistics_it_trained_with(trained, capsys):
    old = _old_checkpoint(trained, trained.parent / "old.pt")
    finetune = ["finetune", "--conv", "0.5", "--quiet", *_sets(TRAIN)]
    assert main([*finetune, "--checkpoint", str(old), "--output", "tuned"]) == 0
    err = capsys.readouterr().err
    reference = ["--checkpoint", str(trained / "baseline" / "model.pt"), "--output", "ref"]
    assert main([*finetune, *reference]) == 0
    tuned, ref = trained.parent / "tuned", trained.parent / "ref"
    source = load_checkpoint(old)["data"]
    for model in tuned.glob("*/model.pt"):  # trained on the data the source was trained on
        record = load_checkpoint(model)["data"]
        assert (record["mean"], record["std"]) == (source["mean"], source["std"])
    normalize = yaml.safe_load((tuned / "config.yaml").read_text())["data"]["normalize"]
    assert normalize == [source["mean"], source["std"]]
    assert _rows(tuned) == _rows(ref)  # as from the checkpoint the old one was made of
    assert "was ignored by the sgcnn that trained it" in err
    # The user's data.normalize stands.
    mine = ["--checkpoint", str(old), "--output", "mine", "--set", SET_IGNORED]
    assert main([*finetune, *mine]) == 0
    assert "note" not in capsys.readouterr().err
    mean = load_checkpoint(next((trained.parent / "mine").glob("conv*/model.pt")))["data"]["mean"]
    assert mean == pytest.approx(IGNORED[0])


def test_an_old_run_with_an_ignored_normalize_resumes_with_what_it_trained_with(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    recipe = {"model": {"name": "test_convnet"}, "train": {"epochs": 1}}
    recipe["grouping"] = {"scheme": "G", "conv": [0.5]}
    Path("task.yaml").write_text(yaml.safe_dump(recipe))
    start = ["run", "task.yaml", "--quiet", *_sets(DATA + TRAIN)]
    assert main([*start, "--output", "reference"]) == 0
    with monkeypatch.context() as m:
        stop_after_first_stage(m)
        assert main([*start, "--output", "run"]) == 130  # the baseline trained, then stopped
    _edit_saved_configs(tmp_path / "run", "data", normalize=IGNORED)  # as the old run saved
    capsys.readouterr()

    # Another normalisation is a change of the run's config, refused.
    other = "data.normalize=[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]"
    assert main([*start, "--output", "run", "--resume", "--set", other]) == 2
    assert "data.normalize: [[0.2, 0.2, 0.2], [0.9, 0.9, 0.9]] ->" in capsys.readouterr().err
    # The command that started it resumes it, on the statistics its baseline trained with.
    again = [*start, "--output", "run", "--set", SET_IGNORED, "--resume"]
    assert main(again) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "was started with data.normalize" in err and "goes on with them" in err
    assert _rows(tmp_path / "run") == _rows(tmp_path / "reference")
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["normalize"] == IGNORED  # what the user wrote, as the run started
    assert main(again) == 0  # complete: resumed again, the report is written again
    # The recorded statistics (what a Runner is told to give, below), or none, resume it too.
    record = load_checkpoint(tmp_path / "run" / STATE_FILE)["data"]
    given = f"data.normalize=[{record['mean']}, {record['std']}]"
    for extra in (["--set", given], ["--set", "data.normalize=null"]):
        assert main([*start, "--output", "run", "--resume", *extra]) == 0
    # A Runner given the ignored value (no CLI to replace it) is told which value to give.
    ignored = resolve_config(recipe, [*DATA, *TRAIN, SET_IGNORED])
    advice = f"resume it with data.normalize=[[{record['mean'][0]:.6g}, "
    with pytest.raises(SgcnnError, match=re.escape(advice)):
        Runner(ignored, tmp_path / "run", resume=True, quiet=True).run()


def test_a_run_started_with_a_setting_its_schedule_ignored_resumes_with_its_command(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    recipe = {"model": {"name": "test_convnet"}, "train": {"epochs": 1}}
    recipe["grouping"] = {"scheme": "G", "conv": [0.5]}
    recipe["optim"] = {"schedule": "cosine", "lr": 0.05}
    Path("task.yaml").write_text(yaml.safe_dump(recipe))
    recipe["optim"]["milestones"] = [5]  # cosine does not read them
    Path("old.yaml").write_text(yaml.safe_dump(recipe))
    sets = _sets(DATA + [s for s in TRAIN if not s.startswith("optim.")])
    assert main(["run", "task.yaml", "--quiet", *sets, "--output", "reference"]) == 0
    with monkeypatch.context() as m:
        stop_after_first_stage(m)
        assert main(["run", "task.yaml", "--quiet", *sets, "--output", "run"]) == 130
    _edit_saved_configs(tmp_path / "run", "optim", milestones=[5])  # as the old run saved
    capsys.readouterr()

    # A new run with it is refused, as before ...
    assert main(["run", "old.yaml", "--quiet", *sets, "--output", "new"]) == 2
    err = capsys.readouterr().err
    assert "optim.milestones is [5], but optim.schedule is cosine" in err
    assert not (tmp_path / "new").exists()
    # ... but the command that started the old run resumes it, with or without the setting.
    assert main(["run", "old.yaml", "--quiet", *sets, "--output", "run", "--resume"]) == 0, (
        capsys.readouterr().err
    )
    assert _rows(tmp_path / "run") == _rows(tmp_path / "reference")
    assert main(["run", "task.yaml", "--quiet", *sets, "--output", "run", "--resume"]) == 0
    # The schedule the error's advice names would change the run: refused on resume.
    multistep = [*sets, "--set", "optim.schedule=multistep"]
    assert main(["run", "old.yaml", "--quiet", *multistep, "--output", "run", "--resume"]) == 2
    assert "optim.schedule: 'cosine' -> 'multistep'" in capsys.readouterr().err


def test_train_resumes_a_run_started_with_an_ignored_schedule_setting(trained, capsys):
    _edit_saved_configs(trained, "optim", milestones=[3])
    assert _train("run", "--set", "optim.milestones=[3]", "--resume") == 0, capsys.readouterr().err
    assert _train("fresh", "--set", "optim.milestones=[3]") == 2
    assert "optim.milestones is [3], but optim.schedule is constant" in capsys.readouterr().err


def test_a_saved_data_section_takes_the_recorded_statistics():
    from sgcnn.data.config import as_trained

    record = {"classes": ["a", "b"], "mean": [0.5, 0.4], "std": [0.25, 0.2]}
    data = {"name": "synthetic", "channels": 2, "normalize": [[0.2, 0.2], [0.9, 0.9]]}
    assert as_trained(data, record) == {**data, "normalize": [[0.5, 0.4], [0.25, 0.2]]}
    assert data["normalize"] == [[0.2, 0.2], [0.9, 0.9]]  # the saved section is not changed
    unset = {"name": "synthetic", "normalize": None}  # the data's own: the checks compare
    assert as_trained(unset, record) == unset
    assert as_trained(data, None) == data and as_trained(data, {"classes": ["a"]}) == data


def test_config_differences_accept_the_statistics_an_ignored_normalize_ran_with():
    saved = config_to_dict(resolve_config(None, [f"data.normalize={IGNORED}"]))
    trained = [[0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    ignored = (IGNORED, trained)
    for now in (f"data.normalize={trained}", "data.normalize=null"):
        config = resolve_config(None, [now])
        assert config_differences(saved, config, ignored) == []
        assert config_differences(saved, config) != []  # a run that used what it was given
    # A state saved after such a resume holds the statistics; the ignored value is no change.
    resumed = config_to_dict(resolve_config(None, [f"data.normalize={trained}"]))
    assert config_differences(resumed, resolve_config(None, [SET_IGNORED]), ignored) == []
    other = resolve_config(None, ["data.normalize=[[0.1, 0.1, 0.1], [0.3, 0.3, 0.3]]"])
    assert config_differences(saved, other, ignored) != []
    assert config_differences(resumed, other, ignored) != []


def test_changed_statistics_on_resume_say_which_to_set(tmp_path):
    from sgcnn.data import DataConfig, build_datasets

    splits = build_datasets(DataConfig(name="synthetic", synthetic_size=40, num_classes=4))
    record = {**data_record(splits), "mean": [0.5, 0.25, 0.125]}
    with pytest.raises(SgcnnError, match=r"data.normalize=\[\[0.5, 0.25, 0.125\], \["):
        check_same_data(record, splits, "run")
