"""Trustworthy runs: divergence stops the run (status 2, last good state intact), every zoo
model trains with its own defaults, reports keep the facts recorded at run time."""

import json
import math
import os

import pytest
import torch

import sgcnn.engine._training as training_module
from sgcnn.cli.main import main
from sgcnn.engine.checkpoint import build_model, load_checkpoint
from sgcnn.engine.config import Config, config_to_dict, deep_merge, resolve_config
from sgcnn.engine.health import TrainingDiverged
from sgcnn.engine.interrupt import RunInterrupted
from sgcnn.engine.recipes import list_recipes, load_recipe
from sgcnn.engine.runner import Runner
from sgcnn.engine.state import load_state, read_metrics
from sgcnn.engine.typed import from_dict
from sgcnn.errors import SgcnnError
from sgcnn.models.registry import list_models, model_entry

TINY = [
    "--model", "test_convnet", "--quiet", "--device", "cpu", "--batch-size", "16",
    "--set", "data.synthetic_size=64", "--set", "train.threads=1",
]  # fmt: skip


def _all_finite(payload: dict) -> bool:
    return all(
        torch.isfinite(t).all() for t in payload["state_dict"].values() if t.is_floating_point()
    )


# ------------------------------------------------------------------------------ divergence


def test_a_diverging_run_stops_with_status_2_and_keeps_its_last_good_state(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", *TINY, "--epochs", "2", "--lr", "1e3", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "training diverged" in err and "learning rate" in err and "optim.lr=100" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    state = load_state(out)  # the last good state loads, its weights are finite
    build_model(state["model"], "state")
    assert _all_finite(state["model"]) and state["stage"] == 0
    failed = [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "failed"]
    assert len(failed) == 1 and failed[0]["lr"] == 1e3 and failed[0]["epoch"] == 1
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["status"].startswith("failed: training diverged")
    assert "failed: training diverged" in (out / "report.md").read_text()

    # --resume would replay the same steps into the same failure: refused, nothing changes
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code = main(["train", *TINY, "--epochs", "2", "--lr", "1e3", "--output", str(out), "--resume"])
    assert code == 2 and "cannot resume" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def _tiny_config(**train):
    return resolve_config(
        {
            "model": {"name": "test_convnet"},
            "data": {"name": "synthetic", "synthetic_size": 64},
            "train": {"epochs": 3, "batch_size": 16, "device": "cpu", "threads": 1, **train},
        }
    )


def _poison(monkeypatch, at_epoch: int, at_batch: int, what: str):
    """Make the training step ``at_batch`` of epoch ``at_epoch`` (1-based) go wrong."""
    real = training_module.train_step
    calls = {"n": 0}
    steps = 4  # 64 synthetic images, batch 16

    def step(net, batch, *args):
        calls["n"] += 1
        sums = real(net, batch, *args)
        if calls["n"] == (at_epoch - 1) * steps + at_batch:
            if what == "loss":
                sums = sums.clone()
                sums[0] = float("nan")
            else:
                with torch.no_grad():
                    next(net.parameters()).view(-1)[0] = float("inf")
        return sums

    monkeypatch.setattr(training_module, "train_step", step)


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_failure_in_epoch_2_keeps_epoch_1(tmp_path, monkeypatch, what):
    out = tmp_path / "run"
    # the weight goes bad on the last step of the epoch: only the check before saving sees it
    _poison(monkeypatch, 2, 2 if what == "loss" else 4, what)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step \d.*after epoch 1"):
        Runner(_tiny_config(), out, quiet=True).run()
    state = load_state(out)
    assert (state["stage"], state["epoch"], state["batch"]) == (0, 1, 0)
    best = load_checkpoint(out / "baseline" / "model.pt")  # epoch 1's model still loads
    assert best["selection"]["epoch"] == 1 and _all_finite(best)
    build_model(best, "baseline")
    epochs = [r["epoch"] for r in read_metrics(out / "metrics.jsonl") if r["event"] == "epoch"]
    assert epochs == [1]


def test_healthy_runs_record_no_failure_and_end(tmp_path):
    out = tmp_path / "run"
    Runner(_tiny_config(epochs=1), out, quiet=True).run()
    events = [r["event"] for r in read_metrics(out / "metrics.jsonl")]
    assert "failed" not in events and events[-1] == "end"
    assert json.loads((out / "report.json").read_text())["meta"]["status"] == "complete"


# ------------------------------------------------------------------------ per-model defaults


def test_model_defaults_sit_below_recipes_and_sets():
    c = resolve_config(sets=["model.name=lenet5"])
    assert (c.data.name, c.optim.lr) == ("mnist5k", 0.02)
    c = resolve_config({"model": {"name": "lenet5"}, "optim": {"lr": 0.07}})
    assert c.optim.lr == 0.07 and c.optim.schedule == "cosine"  # the rest of the defaults stay
    c = resolve_config({"model": {"name": "resnet20"}}, ["optim.lr=0.3", "data.name=synthetic"])
    assert (c.optim.lr, c.data.name) == (0.3, "synthetic")
    assert resolve_config(sets=["model.name=vgg16"]).optim.lr == 0.01  # torchvision, no BN
    assert resolve_config(sets=["model.name=resnet50"]).optim.lr == 0.1


def test_shipped_recipes_resolve_as_without_model_defaults():
    """The recipes write their own learning rate, schedule and data: the models' defaults
    change nothing in them."""
    for name in list_recipes():
        _, recipe = load_recipe(name)
        recipe.setdefault("model", {})["checkpoint"] = "weights.pt"  # filled in by the user
        plain = from_dict(Config, deep_merge(config_to_dict(Config()), recipe))
        assert config_to_dict(resolve_config(recipe)) == config_to_dict(plain), name


ZOO = [n for n in list_models("sgcnn")]
BIG = {"densenet121_cifar", "vgg16_cifar", "resnet110", "resnet56"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in ZOO]
)
def test_every_zoo_model_trains_an_epoch_with_its_defaults(tmp_path, name):
    """Default options (lr, schedule, weight decay from the model's entry) on synthetic images
    of the model's own size, for a few steps of one epoch: every loss is finite."""
    channels, size, _ = model_entry(name).input_size
    config = resolve_config(
        {"model": {"name": name}},
        [
            "data.name=synthetic",
            f"data.channels={channels}",
            f"data.image_size={size}",
            "data.synthetic_size=96",
            "train.epochs=1",
            "train.limit_batches=3",
            "train.batch_size=32",
            "train.device=cpu",
            "train.threads=1",
        ],
    )
    defaults = model_entry(name).defaults["optim"]
    assert config.optim.lr == defaults["lr"] and config.optim.schedule == defaults["schedule"]
    Runner(config, tmp_path / "run", quiet=True).run()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    epochs = [r for r in records if r["event"] == "epoch"]
    assert epochs and all(math.isfinite(r["train_loss"]) for r in epochs)
    assert math.isfinite(epochs[0]["val_loss"])
    assert "failed" not in {r["event"] for r in records}


# --------------------------------------------------------------------------------- reports


def test_report_is_re_rendered_identically_and_keeps_the_recorded_facts(tmp_path, capsys):
    out = tmp_path / "run"
    config = resolve_config(
        {
            "model": {"name": "test_resnet"},
            "data": {"synthetic_size": 64},
            "train": {"epochs": 1, "limit_batches": 2, "batch_size": 16, "device": "cpu"},
            "grouping": {"scheme": "G", "conv": [0.5], "global_epochs": 1},
        }
    )
    Runner(config, out, quiet=True).run()
    files = sorted(
        p for p in out.rglob("*") if (p.is_file() and "report" in p.name) or ".png" in p.name
    )
    first = {p: p.read_bytes() for p in files}
    assert any("structure" in str(p) for p in files)
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert meta["run"] == str(out.resolve())
    assert meta["splits"] == "train 64 / val 16 / test 16 images, 10 classes, 3x16x16"
    assert "x 2 steps (train.limit_batches 2) of 16 images" in meta["budget"]
    assert meta["elapsed_s"] > 0 and meta["started"] and meta["finished"] and meta["host"]
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)  # a relative path, from elsewhere: same report
        for _ in range(2):
            assert main(["report", "run"]) == 0
            assert {p: p.read_bytes() for p in files} == first
    finally:
        os.chdir(cwd)
    md = (out / "report.md").read_text()
    assert "| splits | train 64 / val 16 / test 16 images" in md and "| elapsed_s |" in md


def test_run_folders_get_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        Runner(_tiny_config(epochs=1), tmp_path / "run", quiet=True).run()
    finally:
        os.umask(umask)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "run" / "report.md").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------- interrupts


def test_an_abort_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def abort(self, stage):
        raise KeyboardInterrupt  # a second Ctrl-C: no state saved now

    monkeypatch.setattr(Runner, "_evaluate_row", abort)
    with pytest.raises(RunInterrupted, match="--resume"):
        Runner(_tiny_config(epochs=1), tmp_path / "run", quiet=True).run()
    code = main(["train", *TINY, "--epochs", "1", "--output", str(tmp_path / "again")])
    err = capsys.readouterr().err
    assert code == 130 and "sgcnn train: aborted:" in err
    assert f"--output {tmp_path / 'again'} and --resume" in err  # also where --output was default


def test_abort_before_the_run_folder_exists_is_a_plain_interrupt(tmp_path, monkeypatch):
    def abort(self, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "_create", abort)
    with pytest.raises(KeyboardInterrupt) as info:
        Runner(_tiny_config(epochs=1), tmp_path / "run", quiet=True).run()
    assert not isinstance(info.value, RunInterrupted)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SgcnnError):  # nothing to resume
        Runner(_tiny_config(epochs=1), tmp_path / "run", resume=True).run()
