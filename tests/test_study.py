"""The CIFAR-10 study driver (benchmarks/cifar10_study.py): rows, and collect on partial runs."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

study = pytest.importorskip("cifar10_study")


def test_rows_cover_every_method_and_start_with_the_longest():
    rows = study.study_rows()
    assert rows[0].scheme == "LG" and rows[0].conv == 0.7
    assert len({r.name for r in rows}) == len(rows) == 18
    for method in ("groupconv", "random", "l1filter", "kernel_l1"):
        assert {r.conv for r in rows if r.method == method} == {0.5, 0.7}
    assert {r.seed for r in rows if r.method in ("sg", "groupconv")} == {0, 1}


def test_collect_on_an_empty_study_lists_every_row_as_missing(tmp_path):
    from _study_collect import collect

    (tmp_path / "runs").mkdir()
    notes = tmp_path / "notes.md"
    notes.write_text("## Notes on this run\n\n- trained on a quiet machine\n")
    collect(tmp_path / "runs", None, tmp_path / "out", False, 1, 1, notes=notes)
    doc = json.loads((tmp_path / "out" / "cifar10.json").read_text())
    assert len(doc["rows"]) == 19
    assert {r["status"] for r in doc["rows"]} == {"missing"}
    table = (tmp_path / "out" / "cifar10.md").read_text()
    assert "| sg-LG-conv70-s0 missing; sg-LG-conv70-s1 missing |" in table
    assert table.endswith("## Notes on this run\n\n- trained on a quiet machine\n")
    assert (tmp_path / "out" / "cifar10.png").stat().st_size > 0
    assert not (tmp_path / "out" / "checkpoints").exists()


def _fake_run(runs, name, row, top1, epochs, report=True, planned=12, weights=None,
              machine=None, device="auto", model=False):  # fmt: skip
    """A run folder as the engine leaves it: config, a result row, its epoch records (and with
    ``weights``, a value, the checkpoint it started from; ``machine``: its start record's
    machine; ``model``: its result checkpoint m/model.pt, a placeholder)."""
    import torch

    from sgcnn.engine.config import config_to_yaml, resolve_config

    run = runs / name
    run.mkdir(parents=True)
    if weights is not None:
        (run / "baseline").mkdir()
        torch.save({"state_dict": {"w": torch.full((3,), float(weights))}},
                   run / "baseline" / "model.pt")  # fmt: skip
    sets = ["model.checkpoint=base.pt", "grouping.scheme=G", "grouping.conv=[0.5]",
            "train.epochs=0", f"grouping.global_epochs={planned}", "grouping.exclude=[fc]",
            "grouping.fc_cap=0"]  # fmt: skip
    if row == "baseline":
        sets = ["train.epochs=12", "model.checkpoint=", "grouping.scheme=baseline"]
    config = resolve_config({"model": {"name": "resnet20"}}, [*sets, f"train.device={device}"])
    (run / "config.yaml").write_text(config_to_yaml(config))
    records = [{"event": "start", "time": "t", "command": "sgcnn run"}]
    if machine is not None:
        records[0]["machine"] = machine
    if model:
        (run / "m").mkdir()
        (run / "m" / "model.pt").write_bytes(b"placeholder")
    records += [{"event": "epoch", "stage": 1, "row": row, "epoch": e + 1, "seconds": 2.0}
                for e in range(epochs)]  # fmt: skip
    records.append({"event": "row", "name": row, "top1": top1, "top5": 99.0, "params": 1000,
                    "flops": 5000, "checkpoint": "m/model.pt", "test_images": 10000})  # fmt: skip
    if report:
        records.append({"event": "end", "time": "t", "elapsed_s": 2.0 * epochs})
        (run / "report.json").write_text("{}")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_collect_says_what_wins_from_the_numbers_and_flags_what_is_unfinished(tmp_path):
    from _study_collect import collect

    runs = tmp_path / "runs"
    _fake_run(runs, "baseline", "baseline", 87.0, 12)
    _fake_run(runs, "sg-G-conv50-s0", "Conv-50/FC-0", 86.0, 12)
    _fake_run(runs, "sg-G-conv50-s1", "Conv-50/FC-0", 86.5, 12)
    _fake_run(runs, "groupconv-G-conv50-s0", "Conv-50/FC-0", 80.0, 12)
    _fake_run(runs, "groupconv-G-conv50-s1", "Conv-50/FC-0", 99.0, 5, report=False)
    _fake_run(runs, "random-G-conv50-s0", "Conv-50/FC-0", 86.1, 12)
    collect(runs, None, tmp_path / "out", False, 1, 1)
    table = (tmp_path / "out" / "cifar10.md").read_text()
    lines = {line.split("|")[1].strip() + line.split("|")[3].strip(): line
             for line in table.splitlines() if line.startswith("| ")}  # fmt: skip
    assert "| 2/2 | 86.25 | 0.50 |" in lines["sg50%"]
    assert "| 1/2 | 80.00 | n/a |" in lines["groupconv50%"]  # the partial seed is not averaged
    assert "groupconv-G-conv50-s1 partial: no report (unfinished)" in lines["groupconv50%"]
    # every comparison names both sides' finished seeds; one seed: no "beats"
    assert ("sg G (2 seeds) is ahead of groupconv G (1 seed) by 6.25 points (one seed: no "
            "spread to judge it against)") in table  # fmt: skip
    assert "Best: sg G (2 seeds) is ahead of random G (1 seed) by 0.15 points (one seed" in table
    assert "beats" not in table
    assert "- Target: baseline Top-1 >= 88 %: NOT met (87.00)." in table
    assert ("- Target: SG-CNN G at Conv-50 within 1.5 points of the baseline: met (86.25 over 2 "
            "seeds, -0.75 points against the baseline's 87.00).") in table  # fmt: skip
    assert "and trains 12 epochs after pruning" in table and "10,000 test images" in table
    assert "No finished result yet (left out below): sg LG Conv-70, sg LG Conv-50," in table

    _fake_run(runs, "kernel_l1-G-conv50-s0", "Conv-50/FC-0", 85.0, 11)  # one epoch short
    _fake_run(runs, "l1filter-G-conv50-s0", "Conv-50/FC-0", 85.0, 17, planned=17)
    collect(runs, None, tmp_path / "out", False, 1, 1)
    table = (tmp_path / "out" / "cifar10.md").read_text()
    assert "the comparison is not at an equal budget" in table and "trains 12" not in table
    assert "kernel_l1-G-conv50-s0 partial: 11 of 12 epochs" in table


def _launcher(tmp_path, monkeypatch, finish: bool = True) -> list:
    """The commands ``run`` launches, collected instead of run (the baseline "finishes", or
    with ``finish=False`` stops after an epoch: its model.pt exists, its report does not)."""
    launched = []

    def run_all(self, commands):
        launched.extend(commands)
        checkpoint = tmp_path / "study" / "baseline" / "baseline" / "model.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        if not checkpoint.exists():
            checkpoint.write_bytes(b"weights")
        if finish:
            (checkpoint.parent.parent / "report.json").write_text("{}")

    monkeypatch.setattr(study.Study, "run_all", run_all)
    return launched


@pytest.mark.parametrize("full_train", [False, True])
def test_full_train_reaches_the_baseline_and_every_row(tmp_path, monkeypatch, full_train):
    """``--full-train`` trains every run on all training images and keeps its last epoch; without
    it no run is told so (the recipes hold out a validation split)."""
    launched = _launcher(tmp_path, monkeypatch)
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(tmp_path / "study")]
    assert study.main(argv + (["--full-train"] if full_train else [])) == 0
    assert len(launched) == 19
    for _, command in launched:
        sets = {command[i + 1] for i, arg in enumerate(command) if arg == "--set"}
        protocol = {"data.val_fraction=0", "train.select=last"}
        assert (protocol <= sets) == full_train
        assert not (protocol & sets) or full_train


@pytest.mark.parametrize("quick", [False, True])
def test_every_row_gets_the_same_training_budget_from_the_same_baseline(tmp_path, monkeypatch,
                                                                         quick):  # fmt: skip
    """An LG row's local epochs count against the budget (--ft-epochs), so every row trains the
    same number of epochs after pruning; no row trains the baseline again first."""
    from sgcnn.engine.config import resolve_config
    from sgcnn.engine.recipes import load_recipe
    from sgcnn.engine.schemes import plan, total_epochs

    launched = _launcher(tmp_path, monkeypatch)
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(tmp_path / "study")]
    assert study.main(argv + (["--quick"] if quick else ["--ft-epochs", "10"])) == 0
    budgets, schemes = {}, set()
    for name, command in launched[1:]:
        sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
        config = resolve_config(load_recipe(command[command.index("run") + 1])[1], sets)
        assert config.train.epochs == 0, name  # the baseline checkpoint, not trained again
        budgets[name] = total_epochs(plan(config))
        schemes.add(config.grouping.scheme)
    assert schemes == {"G", "LG"}
    if not quick:
        assert set(budgets.values()) == {10}, budgets


def test_a_budget_too_small_for_the_lg_rows_is_refused(tmp_path, capsys):
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(tmp_path / "study")]
    with pytest.raises(SystemExit) as exit_:
        study.main([*argv, "--ft-epochs", "7"])
    assert exit_.value.code == 2
    assert "--ft-epochs must be >= 8" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_an_l1filter_row_is_timed_as_the_smaller_dense_network(tmp_path):
    import torch

    import sgcnn
    from _study_collect import _deployable
    from sgcnn.core.alternatives import create_pruner
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(0)
    model = sgcnn.create_model("resnet20")
    create_pruner("l1filter", model, input_size=(3, 32, 32), exclude=["fc"]).step(0.5)
    save_checkpoint(tmp_path / "m.pt", model_payload(model, "resnet20", {}))
    fast, note, plain = _deployable(tmp_path / "m.pt", 2, "l1filter")
    assert "smaller dense" in note
    kept = int(model.layer1[0].conv1.sg_mask.any(1).sum())
    assert kept < 16 and plain.layer1[0].conv1.out_channels == kept  # unfused, for runtimes
    widths = [m.weight.shape[0] for m in fast.modules() if getattr(m, "weight", None) is not None]
    assert widths[:3] == [16, kept, 16]  # stem, layer1.0.conv1 sliced (not masked), conv2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_a_dense_row_is_also_timed_in_the_runtimes_a_user_deploys_it_with(tmp_path):
    """The baseline's latency reference is its fastest dense deployment, measured in the same
    rounds as the converted rows: fused PyTorch, channels-last, jit, onnxruntime."""
    import torch

    import sgcnn
    from _study_collect import _latencies
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint

    torch.manual_seed(0)
    dense, grouped = sgcnn.create_model("resnet20").eval(), sgcnn.create_model("resnet20")
    save_checkpoint(tmp_path / "d.pt", model_payload(dense, "resnet20", {}))
    sgcnn.self_group_(grouped, 0.5, exclude=["fc"])
    save_checkpoint(tmp_path / "g.pt", model_payload(grouped, "resnet20", {}))
    out = _latencies(
        {"baseline": (tmp_path / "d.pt", "baseline"), "sg": (tmp_path / "g.pt", "sg")},
        1,
        1,
        compile=False,  # torch.compile takes minutes: see the test below
    )
    assert out["sg"]["note"] == "converted" and out["sg"]["dense"] == {}
    assert out["baseline"]["ms"] > 0 and out["sg"]["ms"] > 0
    runtimes = out["baseline"]["dense"]
    assert set(runtimes) == {"channels_last", "jit", "onnxruntime"}
    assert all(isinstance(v, float) and v > 0 for k, v in runtimes.items() if k != "onnxruntime")


def test_rows_never_start_from_an_unfinished_or_changed_baseline(tmp_path, monkeypatch, capsys):
    """model.pt is written every epoch: only a finished baseline's is the rows' start, and a
    restart whose baseline file changed is refused (rows from two baselines)."""
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(tmp_path / "study")]
    launched = _launcher(tmp_path, monkeypatch, finish=False)
    assert study.main(argv) == 1
    assert [name for name, _ in launched] == ["baseline"]
    assert "the baseline has not finished: no row starts from it" in capsys.readouterr().err
    launched = _launcher(tmp_path, monkeypatch)
    assert study.main(argv) == 0 and len(launched) == 19
    for _, command in launched[1:]:
        assert "train.amp=none" in command  # fp32 rows: `sgcnn eval` gives the same figures
    (tmp_path / "study" / "baseline" / "baseline" / "model.pt").write_bytes(b"other weights")
    assert study.main(argv) == 2
    assert "changed since the rows started from it" in capsys.readouterr().err


def test_a_restart_with_other_settings_is_refused(tmp_path, monkeypatch, capsys):
    _launcher(tmp_path, monkeypatch)
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(tmp_path / "study")]
    assert study.main([*argv, "--epochs", "160", "--full-train"]) == 0
    assert study.main([*argv, "--epochs", "80", "--full-train"]) == 2
    err = capsys.readouterr().err
    assert "started with other settings (epochs: 160 -> 80)" in err


def test_a_diverged_baseline_is_no_start(tmp_path, monkeypatch, capsys):
    _launcher(tmp_path, monkeypatch)
    (tmp_path / "study" / "baseline").mkdir(parents=True)
    (tmp_path / "study" / "baseline" / "metrics.jsonl").write_text('{"event": "failed"}\n')
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(tmp_path / "study")]
    assert study.main(argv) == 1
    assert "the baseline diverged" in capsys.readouterr().err


def test_one_driver_per_study_folder(tmp_path):
    (tmp_path / "study").mkdir()
    first = study.Study(tmp_path / "study", 1)
    with pytest.raises(SystemExit, match="another driver is running"):
        study.Study(tmp_path / "study", 1)
    del first


def test_the_baseline_path_travels_with_the_repository(tmp_path):
    inside = study.ROOT / "runs" / "s" / "baseline" / "baseline" / "model.pt"
    assert study._checkpoint_arg(inside) == "runs/s/baseline/baseline/model.pt"
    assert study._checkpoint_arg(tmp_path / "model.pt") == str(tmp_path / "model.pt")


@pytest.mark.parametrize(
    "argv",
    [
        ["collect", "--runs", "{tmp}/none"],
        ["collect", "--runs", "{tmp}", "--threads", "0"],
        ["pack", "--runs", "{tmp}", "--out", "{tmp}/o", "--max-mb", "0"],
        ["run", "--archive", "a", "--out", "{tmp}/s", "--epochs", "0"],
    ],
)
def test_bad_arguments_are_one_line(tmp_path, argv, capsys):
    (tmp_path / "study.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        study.main([a.format(tmp=tmp_path) for a in argv])
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_collect_checks_that_the_rows_started_from_the_baselines_weights(tmp_path):
    from _study_collect import collect

    runs = tmp_path / "runs"
    _fake_run(runs, "baseline", "baseline", 87.0, 12, weights=1)
    _fake_run(runs, "sg-G-conv50-s0", "Conv-50/FC-0", 86.0, 12, weights=1)
    _fake_run(runs, "sg-G-conv50-s1", "Conv-50/FC-0", 86.5, 12, weights=1)
    collect(runs, None, tmp_path / "out", False, 1, 1)
    assert (
        "Every finished row starts from the same weights"
        in (tmp_path / "out" / "cifar10.md").read_text()
    )
    _fake_run(runs, "random-G-conv50-s0", "Conv-50/FC-0", 86.1, 12, weights=2)
    collect(runs, None, tmp_path / "out", False, 1, 1)
    table = (tmp_path / "out" / "cifar10.md").read_text()
    assert "do NOT all start from the baseline's weights" in table
    assert "Every finished row starts from the same weights" not in table


def test_a_verdict_says_when_the_two_rows_do_not_cost_the_same():
    from _study_text import _compare

    sg = {"label": "sg G", "top1": 86.0, "flops": 12_464_704, "n": 2, "spread": 0.5}
    gc = {"label": "groupconv G", "top1": 80.0, "flops": 12_792_448, "n": 2, "spread": 0.5}
    assert _compare(sg, gc).endswith("; groupconv G at +2.6% the FLOPs of sg G")
    assert "FLOPs" not in _compare(sg, {**gc, "flops": 12_500_000})


# --- provenance: where and at which commit each launch ran -------------------------------


def test_describe_runs_git_in_the_repository_and_marks_uncommitted_changes(tmp_path, monkeypatch):
    """The commit is the repository's, wherever the benchmark is started from, and says
    ``+changes`` when tracked files differ from it."""
    import subprocess

    import _env

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path / "r")]
    subprocess.run(["git", "init", "-q", str(tmp_path / "r")], check=True)
    (tmp_path / "r" / "f.txt").write_text("a\n")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert _env.source_commit(tmp_path / "r") == head
    (tmp_path / "r" / "untracked.txt").write_text("x")  # untracked files are not changes
    assert _env.source_commit(tmp_path / "r") == head
    (tmp_path / "r" / "f.txt").write_text("b\n")
    assert _env.source_commit(tmp_path / "r") == head + "+changes"
    monkeypatch.chdir(tmp_path)  # not a checkout: describe() still finds the repository's
    assert _env.describe()["git"].split("+")[0] == _env.source_commit().split("+")[0] != ""


def test_every_launch_of_a_row_records_its_own_machine_and_commit(tmp_path):
    """A start and each resume append the driver's record of that moment (commit included) to
    the row's history; an older study's single record of the last launch is kept first."""
    out = tmp_path / "study"
    (out / "logs").mkdir(parents=True)
    (out / "study.json").write_text(json.dumps({"runs": {"r": {"machine": {"git": "old1"}}}}))
    commits = iter(["aaa", "bbb+changes"])
    s = study.Study(out, 1, lambda: {"git": next(commits), "device": "cpu"})
    for _ in range(2):
        proc = s.launch("r", [sys.executable, "-c", "pass"])
        proc.wait()
        s.finish(proc)
        (out / "r").mkdir(exist_ok=True)  # the run folder exists: the next launch resumes
    s.close()
    entry = json.loads((out / "study.json").read_text())["runs"]["r"]
    assert "machine" not in entry
    assert [(m["event"], m["git"]) for m in entry["machines"]] == [
        ("launch", "old1"), ("start", "aaa"), ("resume", "bbb+changes")]  # fmt: skip


def test_the_driver_keeps_a_list_of_its_invocations_and_loads_an_older_study(tmp_path, monkeypatch):
    """An older study.json (one ``driver``, one ``machine``) still loads and resumes with the
    same settings; each start of the driver is appended to ``drivers``."""
    launched = _launcher(tmp_path, monkeypatch)
    monkeypatch.setattr(study, "machine", lambda device="cpu": {"git": "new", "device": device})
    out = tmp_path / "study"
    out.mkdir()
    old = {
        "runs": {"baseline": {"status": "running", "machine": {"git": "08e130b"}}},
        "machine": {"git": "08e130b", "gpu": "a GPU the runs did not use"},
        "driver": ["benchmarks/cifar10_study.py", "run", "--epochs", "160"],
        "settings": {"epochs": 160, "ft_epochs": 12, "full_train": True, "quick": False},
    }
    (out / "study.json").write_text(json.dumps(old))
    argv = ["run", "--archive", str(tmp_path / "c.tar.gz"), "--out", str(out), "--device", "cpu"]
    assert study.main([*argv, "--epochs", "160", "--full-train"]) == 0
    assert len(launched) == 19
    record = json.loads((out / "study.json").read_text())
    assert [d["machine"]["git"] for d in record["drivers"]] == ["08e130b", "new"]
    assert record["drivers"][0]["argv"] == old["driver"]
    assert record["driver"] == ["benchmarks/cifar10_study.py", *argv, "--epochs", "160",
                                "--full-train"]  # fmt: skip
    assert record["machine"] == {"git": "new", "device": "cpu"}


def test_a_gpu_is_recorded_only_for_a_cuda_device():
    info = study.machine("cpu")
    assert info["device"] == "cpu" and "gpu" not in info and "cuda" not in info
    assert info["git"]  # the repository's commit


def test_collect_says_where_and_at_which_commit_each_row_ran(tmp_path):
    from _study_collect import _run_machines, collect

    runs = tmp_path / "runs"
    own = {"cpu": "x86_64", "cpu_count": 2, "torch": "2.x", "python": "3.11", "gpu": "H200"}
    _fake_run(runs, "baseline", "baseline", 87.0, 12, machine=own, device="cuda")
    _fake_run(runs, "sg-G-conv50-s0", "Conv-50/FC-0", 86.0, 12, machine=own, device="cpu")
    _fake_run(runs, "sg-G-conv50-s1", "Conv-50/FC-0", 86.5, 12, machine=own, device="cpu")
    assert _run_machines(runs / "baseline", "cuda")[0]["gpu"] == "H200"  # the fallback keeps it
    machines = [
        {"event": "start", "date": "d1", "git": "aaa", "device": "cpu", "gpu": "H200"},
        {"event": "resume", "date": "d2", "git": "bbb+changes", "device": "cpu"},
    ]
    (runs / "study.json").write_text(json.dumps({
        "runs": {"sg-G-conv50-s0": {"machines": machines},
                 "sg-G-conv50-s1": {"machine": {"git": "aaa", "date": "d0"}}},
        "driver": ["benchmarks/cifar10_study.py", "run"],  # an older study: one driver entry
        "machine": {"git": "aaa", "date": "d0"},
    }))  # fmt: skip
    collect(runs, None, tmp_path / "out", False, 1, 1)
    doc = json.loads((tmp_path / "out" / "cifar10.json").read_text())
    assert "baseline_machine" not in doc and len(doc["drivers"]) == 1
    md = (tmp_path / "out" / "cifar10.md").read_text()
    # the baseline: its own records, no commit; its GPU since it trained on cuda
    assert "- baseline: start t: cuda (H200), commit not recorded (" in md
    assert "- sg-G-conv50-s0: start d1: cpu, aaa; resume d2: cpu, bbb+changes\n" in md
    assert "H200" not in md.split("- sg-G-conv50-s0")[1]  # trained on the CPU: no GPU said
    assert "- sg-G-conv50-s1: launch d0: cpu, aaa" in md
    assert (
        "**The runs did NOT all run the same code: they ran with different commits** "
        "(aaa: sg-G-conv50-s0, sg-G-conv50-s1; bbb+changes: sg-G-conv50-s0)."
    ) in md
    assert "No commit recorded for a launch of: baseline." in md
    assert "The study driver was started 1 time(s):" in md


# --- pack -> collect ---------------------------------------------------------------------


def test_after_pack_collect_still_checks_the_rows_common_start(tmp_path):
    """``pack`` leaves out each row's copy of the baseline, and writes the digest collect
    checks in its place."""
    import tarfile

    from _study_collect import collect

    runs = tmp_path / "runs"
    _fake_run(runs, "baseline", "baseline", 87.0, 12, weights=1)
    _fake_run(runs, "sg-G-conv50-s0", "Conv-50/FC-0", 86.0, 12, weights=1)
    _fake_run(runs, "sg-G-conv50-s1", "Conv-50/FC-0", 86.5, 12, weights=2)
    (runs / "study.json").write_text("{}")
    assert study.main(["pack", "--runs", str(runs), "--out", str(tmp_path / "packed")]) == 0
    unpacked = tmp_path / "unpacked"
    for archive in sorted((tmp_path / "packed").glob("*.tar.gz")):
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    assert not (unpacked / "sg-G-conv50-s0" / "baseline" / "model.pt").exists()
    collect(unpacked, None, tmp_path / "out", False, 1, 1)
    md = (tmp_path / "out" / "cifar10.md").read_text()
    assert "cannot be checked" not in md
    assert "do NOT all start from the baseline's weights" in md  # s1 started from other weights


# --- what wins: seeds, spreads, ties and the targets -------------------------------------


def test_a_win_needs_two_seeds_on_each_side_and_twice_the_larger_spread():
    from _study_text import _compare

    def side(label, top1, n, spread=None):
        return {"label": label, "top1": top1, "n": n, "spread": spread}

    a, b = side("sg G", 86.5, 2, 0.3), side("random G", 85.8, 2, 0.2)
    assert _compare(a, b) == (
        "sg G (2 seeds) beats random G (2 seeds) by 0.70 points, at least twice the larger "
        "seed spread (0.30)"
    )
    assert _compare(a, {**b, "spread": 0.4}) == (
        "sg G (2 seeds) is ahead of random G (2 seeds) by 0.70 points (within twice the larger "
        "seed spread (0.40): not a clear win)"
    )
    assert _compare(a, side("l1filter G", 80.0, 1)) == (
        "sg G (2 seeds) is ahead of l1filter G (1 seed) by 6.50 points (one seed: no spread to "
        "judge it against)"
    )
    assert _compare(side("sg G", 86.004, 2, 0.1), side("x G", 85.996, 2, 0.1)) == (
        "sg G (2 seeds) and x G (2 seeds) tie at 86.00"
    )


def test_the_targets_are_checked_on_the_figures_as_printed():
    from _study_text import _verdicts

    def row(method, scheme, conv, top1, n=1):
        label = "baseline" if method == "baseline" else f"{method} {scheme}"
        return {"method": method, "scheme": scheme, "conv": conv, "label": label, "n": n,
                "top1": top1, "spread": None, "deployed_ms": None, "runtimes": []}  # fmt: skip

    base, sg = row("baseline", "baseline", 0.0, 88.004), row("sg", "G", 0.5, 86.496, 2)
    text = "\n".join(_verdicts([base, sg]))  # printed: 88.00 and 86.50, a gap of -1.50
    assert "- Target: baseline Top-1 >= 88 %: met (88.00)." in text
    assert ("- Target: SG-CNN G at Conv-50 within 1.5 points of the baseline: met (86.50 over 2 "
            "seeds, -1.50 points against the baseline's 88.00).") in text  # fmt: skip
    text = "\n".join(_verdicts([row("baseline", "baseline", 0.0, 87.99), {**sg, "top1": 86.0}]))
    assert "baseline Top-1 >= 88 %: NOT met (87.99)" in text
    assert "of the baseline: NOT met (86.00 over 2 seeds, -1.99 points" in text


# --- latency on one basis ----------------------------------------------------------------


def test_latency_column_and_plot_use_the_deployed_figure(tmp_path, monkeypatch):
    """The baseline's latency is its fastest dense deployment in the table, the plot and the
    verdicts alike (the fused figure a secondary column); a busy machine is warned about."""
    import matplotlib.axes

    import _study_collect

    runs = tmp_path / "runs"
    _fake_run(runs, "baseline", "baseline", 87.0, 12, model=True)
    _fake_run(runs, "sg-G-conv50-s0", "Conv-50/FC-0", 86.0, 12, model=True)
    measured = {
        "baseline": {"ms": 0.8, "note": "dense, fused",
                     "dense": {"channels_last": 0.9, "jit": 0.6, "onnxruntime": 0.5,
                               "compile": "RuntimeError: no compiler"}},
        "sg-G-conv50-s0": {"ms": 0.4, "note": "converted", "dense": {}},
    }  # fmt: skip
    asked = {}
    monkeypatch.setattr(_study_collect, "_latencies",
                        lambda paths, batch, threads, compile=True: asked.update(
                            compile=compile) or measured)  # fmt: skip
    monkeypatch.setattr(_study_collect.os, "getloadavg", lambda: (1.7, 1.0, 0.5))
    monkeypatch.setattr(_study_collect.os, "cpu_count", lambda: 2)
    xs = []
    scatter = matplotlib.axes.Axes.scatter
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "scatter",
        lambda self, x, y, **kw: xs.append(x) or scatter(self, x, y, **kw),
    )
    _study_collect.collect(runs, None, tmp_path / "out", True, 1, 1, compile=False)
    assert asked == {"compile": False}
    md = (tmp_path / "out" / "cifar10.md").read_text()
    base = next(line for line in md.splitlines() if line.startswith("| baseline | baseline"))
    assert "| 0.500 | onnxruntime | 0.800 |" in base  # deployed, its name, then fused
    sg = next(line for line in md.splitlines() if line.startswith("| sg | G | 50%"))
    assert "| 0.400 | sgcnn.convert | - |" in sg
    assert "(onnxruntime, 0.500 ms;" in md and "sg G 0.80x (sgcnn.convert)" in md
    assert "onnxruntime 0.500 ms (fastest)" in md
    assert "**Warning: the load average was 1.70 when the latency timing began" in md
    assert 0.5 in xs and 0.8 not in xs  # the plot: the deployed figure
    doc = json.loads((tmp_path / "out" / "cifar10.json").read_text())
    assert doc["latency_load_before"] == {"load_average": [1.7, 1.0, 0.5], "cores": 2}


def test_collect_tries_torch_compile_unless_told_not_to(tmp_path, monkeypatch):
    import torch

    import sgcnn
    from _study_collect import _latencies
    from sgcnn.engine.checkpoint import model_payload, save_checkpoint
    from sgcnn.metrics import latency

    save_checkpoint(tmp_path / "d.pt", model_payload(sgcnn.create_model("resnet20"),
                                                     "resnet20", {}))  # fmt: skip
    tried = []

    def deploy(model, x, how):
        tried.append(how)
        if how == "compile":
            raise torch.fx.proxy.TraceError("no compiler here")  # not a RuntimeError
        return model

    monkeypatch.setattr(latency, "deploy", deploy)
    monkeypatch.setattr(
        latency, "compare_latency", lambda models, *a, **k: {n: {"median_ms": 1.0} for n in models}
    )
    out = _latencies({"baseline": (tmp_path / "d.pt", "baseline")}, 1, 1)
    assert tried == ["channels_last", "jit", "onnxruntime", "compile"]
    assert out["baseline"]["dense"]["compile"].startswith("TraceError: no compiler")
    tried.clear()
    _latencies({"baseline": (tmp_path / "d.pt", "baseline")}, 1, 1, compile=False)
    assert "compile" not in tried


def test_collect_has_a_no_compile_option(tmp_path, monkeypatch):
    import _study_collect

    asked = {}
    monkeypatch.setattr(_study_collect, "collect", lambda *a, **k: asked.update(k))
    (tmp_path / "study.json").write_text("{}")
    assert study.main(["collect", "--runs", str(tmp_path), "--no-compile"]) == 0
    assert asked["compile"] is False
    assert study.main(["collect", "--runs", str(tmp_path)]) == 0
    assert asked["compile"] is True


# --- per seed, the eval commands' figures, the LG schedule -------------------------------


def test_collect_lists_each_seed_and_the_figure_each_eval_should_give(tmp_path):
    from _study_collect import collect

    runs = tmp_path / "runs"
    _fake_run(runs, "baseline", "baseline", 87.0, 12)
    _fake_run(runs, "sg-G-conv50-s0", "Conv-50/FC-0", 86.0, 12)
    _fake_run(runs, "sg-G-conv50-s1", "Conv-50/FC-0", 86.5, 12)
    collect(runs, None, tmp_path / "out", False, 1, 1)
    md = (tmp_path / "out" / "cifar10.md").read_text()
    assert "| sg-G-conv50-s0 | 0 | 86.00 | 99.00 | - | done |" in md
    assert "| sg-G-conv50-s1 | 1 | 86.50 | 99.00 | - | done |" in md
    assert "resnet20_baseline.pt --data imagefolder --data-root cifar10-jpeg.tar.gz  # Top-1 " \
        "87.00 (baseline)" in md  # fmt: skip
    assert "resnet20_sg_G_conv50_s0.pt --data imagefolder --data-root cifar10-jpeg.tar.gz  # " \
        "Top-1 86.00 (sg-G-conv50-s0)" in md  # fmt: skip


def test_collect_states_the_lg_rows_schedule_as_the_driver_builds_it(tmp_path):
    from _study_collect import collect

    runs = tmp_path / "runs"
    runs.mkdir()
    settings = {"epochs": 160, "ft_epochs": 12, "full_train": True, "quick": False}
    (runs / "study.json").write_text(json.dumps({"settings": settings}))
    collect(runs, None, tmp_path / "out", False, 1, 1)
    md = (tmp_path / "out" / "cifar10.md").read_text()
    assert ("a G row prunes once, then trains 12 epochs, cosine from lr 0.04. An LG row prunes "
            "in 10% steps, trains 1 local epoch at the constant lr 0.04 after each step, then a "
            "shorter cosine global phase from lr 0.04 (Conv-50: 5 steps, 5 local + 7 global; "
            "Conv-70: 7 steps, 7 local + 5 global epochs), so that it too trains 12 epochs in "
            "all.") in md  # fmt: skip


def test_the_finetune_recipe_says_the_driver_sets_its_epochs():
    text = (study.ROOT / "src" / "sgcnn" / "recipes" / "resnet20_cifar10_finetune.yaml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "--ft-epochs" in comments and "15 epochs" not in comments
