"""Resumable runs: kill -9 mid-epoch, Ctrl-C, and resuming with the wrong config.

The killed runs are real processes (``python -m sgcnn.cli.main run``); a run resumed after
``kill -9`` must end exactly where an uninterrupted run ends: same epochs, same metrics, same
test accuracy, since the state carries the optimizer, scheduler, RNG and epoch position.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sgcnn.engine.config import resolve_config
from sgcnn.engine.reporting import write_run_report
from sgcnn.engine.runner import Runner
from sgcnn.engine.state import MetricsLog, read_metrics
from sgcnn.errors import SgcnnError

RECIPE = {
    "model": {"name": "test_convnet"},
    "data": {"name": "synthetic", "synthetic_size": 1024, "image_size": 16},
    "train": {
        "epochs": 1,
        "batch_size": 16,
        "threads": 1,
        "device": "cpu",
        "save_every_min": 0.002,  # a mid-epoch checkpoint every ~0.1 s
        "channels_last": True,  # as the CIFAR recipes train, on the CPU too
    },
    "optim": {"lr": 0.05},
    "grouping": {"scheme": "G", "conv": [0.5], "global_epochs": 2},
}
GLOBAL_STAGE = 3  # train, evaluate, prune, >global<, evaluate


def _command(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sgcnn.cli.main",
        "run",
        str(recipe),
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]


def _run(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        _command(recipe, out, *extra), capture_output=True, text=True, timeout=180, env=env
    )


def _stop_mid_epoch(recipe: Path, out: Path, sig: int, stage: int, *extra: str):
    """Start (or resume) a run, wait until its saved state is inside an epoch of ``stage``,
    send ``sig``; returns ``(exit code, output)``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _command(recipe, out, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = torch.load(out / "state.pt", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError):
            state = None
        if state and state["stage"] == stage and state["batch"] > 0:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    output, _ = proc.communicate(timeout=60)
    return proc.returncode, output


def _epochs(out: Path) -> list[tuple]:
    return [
        (r["stage"], r["epoch"], r["lr"], round(r["train_loss"], 10), r["val_top1"])
        for r in read_metrics(out / "metrics.jsonl")
        if r["event"] == "epoch"
    ]


def _rows(out: Path) -> list[tuple]:
    return [
        (r["name"], r["top1"], r["top5"], r["flops"])
        for r in read_metrics(out / "metrics.jsonl")
        if r["event"] == "row"
    ]


def test_ctrl_c_then_kill_9_mid_epoch_and_resume_end_like_an_uninterrupted_run(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    reference = tmp_path / "reference"
    Runner(resolve_config(RECIPE), reference, quiet=True).run()

    out = tmp_path / "run"
    # Ctrl-C inside a baseline epoch: the state is saved there, the process exits cleanly.
    code, output = _stop_mid_epoch(recipe, out, signal.SIGINT, 0)
    assert code == 130, output
    assert "interrupted: state saved" in output and "--resume" in output
    assert "Traceback" not in output
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["stage"] == 0 and state["batch"] > 0

    # kill -9 inside an epoch of the global fine-tune, after self-grouping.
    code, output = _stop_mid_epoch(recipe, out, signal.SIGKILL, GLOBAL_STAGE, "--resume")
    assert code == -signal.SIGKILL, output
    assert "resuming" in output
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["stage"] == GLOBAL_STAGE and state["batch"] > 0
    # A run in progress can be reported: the rows so far, marked incomplete.
    write_run_report(out)
    partial = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in partial["rows"]] == ["baseline"]
    assert partial["meta"]["status"] == "incomplete: 1 of 2 rows"

    result = _run(recipe, out, "--resume")
    assert result.returncode == 0, result.stderr
    records = read_metrics(out / "metrics.jsonl")  # every line parses: no torn line left
    assert [r["event"] for r in records].count("resume") == 2
    assert _epochs(out) == _epochs(reference)  # same epochs, once each, same numbers
    assert _rows(out) == _rows(reference)
    assert (out / "report.json").is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def _tiny_config(**train):
    recipe = {
        **RECIPE,
        "data": {**RECIPE["data"], "synthetic_size": 64},
        "train": {**RECIPE["train"], "epochs": 1, **train},
        "grouping": {"scheme": "baseline", "conv": []},
    }
    return resolve_config(recipe)


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = tmp_path / "run"
    Runner(_tiny_config(), out, quiet=True).run()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(SgcnnError, match=r"cannot resume .*\(train\.batch_size: 16 -> 8\)"):
        Runner(_tiny_config(batch_size=8), out, resume=True, quiet=True).run()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # What does not change the results may change (loader workers, checkpoint interval).
    rows = Runner(_tiny_config(save_every_min=5), out, resume=True, quiet=True).run()
    assert [r["name"] for r in rows] == ["baseline"]  # already complete: nothing re-run
    assert _epochs(out) == [(0, 1, *_epochs(out)[0][2:])]


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(SgcnnError, match="does not exist"):
        Runner(_tiny_config(), tmp_path / "none", resume=True).run()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SgcnnError, match="not an sgcnn run folder"):
        Runner(_tiny_config(), tmp_path / "empty", resume=True).run()


def test_metrics_log_drops_lines_the_state_does_not_know(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.append({"event": "epoch", "epoch": 1})
    offset = log.offset
    log.append({"event": "epoch", "epoch": 2})
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"event": "epo')  # torn by a crash
    MetricsLog(path, offset).close()
    assert read_metrics(path) == [{"event": "epoch", "epoch": 1}]


def test_a_key_added_after_the_run_started_does_not_block_resume():
    from sgcnn.engine.config import config_to_dict, resolve_config
    from sgcnn.engine.rundir import config_differences

    config = resolve_config({"model": {"name": "lenet5"}, "data": {"name": "mnist5k"}})
    saved = config_to_dict(config)
    del saved["model"]["reset_classifier"]  # a run written before the key existed
    assert config_differences(saved, config) == []
    changed = resolve_config(
        {"model": {"name": "lenet5", "reset_classifier": True}, "data": {"name": "mnist5k"}},
        ["model.checkpoint=w.pt"],
    )
    assert any(d.startswith("model.reset_classifier") for d in config_differences(saved, changed))


def test_resume_with_another_number_of_processes_is_refused(tmp_path):
    """Steps per epoch, the schedule and each process's random state depend on the number of
    processes: a run saved by 2 (torchrun) cannot continue in 1, nor the other way round."""
    from sgcnn.engine.state import load_state, save_state

    out = tmp_path / "run"
    Runner(_tiny_config(), out, quiet=True).run()
    state = load_state(out)
    save_state(out, {**state, "rng": state["rng"] * 2})  # as two processes would have saved it
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(
        SgcnnError, match=r"with 1 process\(es\): it was saved by 2.*nproc_per_node 2"
    ):
        Runner(_tiny_config(), out, resume=True, quiet=True).run()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_random_state_restores_on_fewer_visible_gpus(monkeypatch):
    """A state saved with two GPUs visible restores with one (CUDA_VISIBLE_DEVICES)."""
    from sgcnn.engine import state as state_module

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append(i))
    saved = {**state_module.rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)] * 2}
    state_module.set_rng_state(saved)
    assert restored == [0]
