"""What a run checks before it trains, and what it keeps straight when stopped at an edge:

- a pruning target a shape-only method (groupconv, kernel_l1, l1filter) cannot reach fails at
  run start, before any training or file, not at the prune stage a resume would replay;
- a checkpoint's classifier is only fine-tuned on the classes (and normalisation) it was
  trained on;
- a stop between the last stage's save and the ``end`` line still ends with that line;
- a metrics file shorter than the state accounts for is a clear error (never NUL-padded);
- the staged config and metrics are fsynced before the run folder appears.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sgcnn
from sgcnn.data.config import data_record
from sgcnn.engine import runner as runner_module
from sgcnn.engine.build import build_data, build_model
from sgcnn.engine.checkpoint import load_checkpoint, model_payload, save_checkpoint
from sgcnn.engine.config import resolve_config
from sgcnn.engine.recipes import load_recipe
from sgcnn.engine.runner import Runner
from sgcnn.engine.state import MetricsLog, read_metrics
from sgcnn.errors import SgcnnError


def tiny(**sections) -> dict:
    """test_resnet on 128 synthetic 16x16 images: a run of about a second."""
    recipe = {
        "model": {"name": "test_resnet"},
        "data": {"name": "synthetic", "synthetic_size": 128, "image_size": 16},
        "train": {"epochs": 1, "batch_size": 32, "threads": 1, "device": "cpu"},
        "optim": {"lr": 0.05},
        "grouping": {"scheme": "G", "conv": [0.5], "global_epochs": 1},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


def _fails_without_a_folder(tmp_path: Path, config, message: str) -> str:
    with pytest.raises(SgcnnError, match=message) as err:
        Runner(config, tmp_path / "run", quiet=True).run()
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert not list(tmp_path.glob(".run.tmp-*"))
    return str(err.value)


# --------------------------------------------------------------- unreachable targets (bug 1)


@pytest.mark.parametrize(
    ("method", "reachable", "unreachable"),
    [("groupconv", 0.9, 0.95), ("kernel_l1", 0.9, 0.95), ("l1filter", 0.5, 0.7)],
)
def test_a_target_the_method_cannot_reach_fails_before_training(
    tmp_path, method, reachable, unreachable
):
    config = resolve_config(tiny(grouping={"method": method, "conv": [reachable, unreachable]}))
    message = _fails_without_a_folder(tmp_path, config, "cannot (reach|match)")
    row = f"Conv-{round(unreachable * 100)}/FC-{round(unreachable * 100)}"
    assert message.startswith(f"{row} cannot be run")
    assert "nothing was trained or written, so the command can still change" in message


def test_the_demo_with_groupconv_fails_at_once_on_conv99(tmp_path):
    """The reviewer's case: LeNet-5's conv2 (20 input channels) cannot be Conv-99 groupconv."""
    _, recipe = load_recipe("lenet5_mnist5k_demo")
    config = resolve_config(
        recipe, ["grouping.method=groupconv", "train.epochs=1", "grouping.global_epochs=1"]
    )
    message = _fails_without_a_folder(tmp_path, config, "cannot reach sparsity 99.0%")
    assert "layer 'conv2'" in message and message.startswith("Conv-99/FC-99 cannot be run")

    # The targets it reaches pass the check (config only: the check itself, no training).
    runner = Runner(
        resolve_config(recipe, ["grouping.method=groupconv", "grouping.conv=[0.95, 0.97]"]),
        tmp_path / "ok",
    )
    runner.input_size = (1, 28, 28)
    model = sgcnn.create_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runner._check_grouping(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_run_that_fails_at_its_prune_stage_says_how_to_go_on(tmp_path, monkeypatch):
    """A run made without the early check (an older sgcnn) fails at the prune stage: the error
    names the baseline to fine-tune instead, and that way out works."""
    monkeypatch.setattr(Runner, "_check_grouping", lambda self, model: None)
    config = resolve_config(tiny(grouping={"method": "groupconv", "conv": [0.95]}))
    run = tmp_path / "run"
    with pytest.raises(SgcnnError, match="This run cannot finish") as err:
        Runner(config, run, quiet=True).run()
    baseline = run / "baseline" / "model.pt"
    assert f"sgcnn finetune --checkpoint {baseline}" in str(err.value)
    assert "grouping.method=groupconv" in str(err.value)
    monkeypatch.undo()

    again = resolve_config(
        tiny(
            model={"checkpoint": str(baseline)},
            train={"epochs": 0},
            grouping={"method": "groupconv", "conv": [0.9]},
        )
    )
    rows = Runner(again, tmp_path / "new", quiet=True).run()
    assert [r["name"] for r in rows] == ["baseline", "Conv-90/FC-90"]


# --------------------------------------------------------------- the "end" line (bug 3)


class _Killed(Exception):
    """Stands for SIGKILL at one point of the run."""


def test_a_stop_just_before_the_end_line_still_ends_the_run(tmp_path, monkeypatch):
    config = resolve_config(tiny(grouping={"scheme": "baseline", "conv": []}))
    run = tmp_path / "run"
    record = Runner._record

    def killed_at_the_end(self, line):
        if line.get("event") == "end":
            raise _Killed  # after the last stage's save, before the end line
        record(self, line)

    monkeypatch.setattr(Runner, "_record", killed_at_the_end)
    with pytest.raises(_Killed):
        Runner(config, run, quiet=True).run()
    assert load_checkpoint(run / "state.pt")["done"] is True
    assert "end" not in [r["event"] for r in read_metrics(run / "metrics.jsonl")]
    monkeypatch.undo()

    Runner(config, run, resume=True, quiet=True).run()
    events = [r["event"] for r in read_metrics(run / "metrics.jsonl")]
    assert events.count("end") == 1 and events[-1] == "end"
    report = json.loads((run / "report.json").read_text())
    assert "finished" in json.dumps(report)

    Runner(config, run, resume=True, quiet=True).run()  # a complete run: no second end line
    events = [r["event"] for r in read_metrics(run / "metrics.jsonl")]
    assert events.count("end") == 1


# --------------------------------------------------------------- metrics durability (bug 5)


def test_a_metrics_file_shorter_than_the_state_is_a_clear_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"event": "start"}\n')
    size = path.stat().st_size
    with pytest.raises(SgcnnError, match="cut short"):
        MetricsLog(path, size + 100)
    assert path.stat().st_size == size and b"\0" not in path.read_bytes()
    log = MetricsLog(path, size)  # the offset it holds is fine
    log.append({"event": "x"})
    log.close()
    assert [r["event"] for r in read_metrics(path)] == ["start", "x"]
    assert [r["event"] for r in read_metrics(path, limit=size)] == ["start"]


def test_resuming_a_run_whose_metrics_were_cut_short_is_refused(tmp_path):
    config = resolve_config(tiny(grouping={"scheme": "baseline", "conv": []}, train={"epochs": 2}))
    run = tmp_path / "run"
    Runner(config, run, quiet=True).run()
    metrics = run / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join(lines[:2]))  # an older copy of the file
    with pytest.raises(SgcnnError, match="cut short"):
        Runner(config, run, resume=True, quiet=True).run()
    assert metrics.read_bytes() == b"".join(lines[:2])  # left as it was: no NUL padding


def test_the_staged_config_and_metrics_are_fsynced_before_the_folder_appears(tmp_path, monkeypatch):
    synced = []
    real = runner_module.fsync_file

    def recording(path):
        synced.append((path.parent.name, path.name, (tmp_path / "run").exists()))
        real(path)

    monkeypatch.setattr(runner_module, "fsync_file", recording)
    config = resolve_config(tiny(grouping={"scheme": "baseline", "conv": []}))
    Runner(config, tmp_path / "run", quiet=True).run()
    assert {name for _, name, _ in synced} == {"config.yaml", "metrics.jsonl"}
    assert all(folder != "run" and not published for folder, _, published in synced)


# --------------------------------------------------------------- checkpoint data (bug 4)


def _image_tree(root: Path, classes: list[str], per_class: int = 6) -> Path:
    """``train/`` and ``test/`` of 16x16 RGB PNGs, each class of its own brightness."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 2)):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (16, 16, 3)) + 60 * k
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def _checkpoint(tmp_path: Path, data: dict) -> tuple[str, dict]:
    """A test_convnet checkpoint recording the data ``data`` describes, and that recipe."""
    recipe = tiny(model={"name": "test_convnet"}, data=data)
    splits = build_data(resolve_config(recipe))
    model = sgcnn.create_model("test_convnet", num_classes=splits.num_classes)
    kwargs = {"num_classes": splits.num_classes}
    path = tmp_path / "source.pt"
    save_checkpoint(
        path, {**model_payload(model, "test_convnet", kwargs), "data": data_record(splits)}
    )
    return str(path), recipe


def _finetune(recipe: dict, path: str, **data):
    return resolve_config(
        {**recipe, "data": {**recipe["data"], **data}},
        [f"model.checkpoint={path}", "train.epochs=0"],
    )


def test_a_checkpoint_is_not_fine_tuned_on_classes_in_another_order(tmp_path):
    root = str(_image_tree(tmp_path / "tree", ["cat", "dog", "owl"]))
    path, recipe = _checkpoint(tmp_path, {"name": "imagefolder", "root": root, "image_size": None})

    config = _finetune(recipe, path)  # the same data: accepted
    build_model(config, build_data(config))

    swapped = _finetune(recipe, path, classes=["dog", "cat", "owl"])
    message = _fails_without_a_folder(tmp_path, swapped, "was trained on classes")
    assert "[cat, dog, owl]" in message and "[dog, cat, owl]" in message
    assert "sgcnn transfer" in message

    # A new task with the checkpoint's features: transfer (a fresh classifier) is not refused.
    transfer = _finetune(recipe, path, classes=["dog", "cat"])
    transfer.model.reset_classifier = True
    build_model(transfer, build_data(transfer))


def test_a_checkpoint_is_not_fine_tuned_on_other_normalisation_unless_asked(tmp_path):
    root = str(_image_tree(tmp_path / "tree", ["cat", "dog", "owl"]))
    path, recipe = _checkpoint(tmp_path, {"name": "imagefolder", "root": root, "image_size": None})
    record = load_checkpoint(path)["data"]

    # Another validation split measures other statistics on train/: refused, with the fix.
    other = _finetune(recipe, path, val_fraction=0.5)
    message = _fails_without_a_folder(tmp_path, other, "data.normalize=")
    assert "trained on images normalised with" in message

    # The fix it gives: the checkpoint's own statistics (or any the user sets) are accepted.
    fixed = _finetune(recipe, path, val_fraction=0.5, normalize=[record["mean"], record["std"]])
    splits = build_data(fixed)
    build_model(fixed, splits)
    assert list(splits.mean) == record["mean"] and list(splits.std) == record["std"]


def test_any_dataset_normalised_otherwise_is_refused_and_normalize_fixes_it(tmp_path):
    path, recipe = _checkpoint(tmp_path, {"synthetic_size": 128})
    record = load_checkpoint(path)["data"]
    config = _finetune(recipe, path, synthetic_size=96)  # other images, other statistics
    _fails_without_a_folder(tmp_path, config, "data.normalize=")
    fixed = _finetune(recipe, path, synthetic_size=96, normalize=[record["mean"], record["std"]])
    splits = build_data(fixed)
    build_model(fixed, splits)
    assert list(splits.mean) == record["mean"]
