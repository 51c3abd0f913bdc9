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


def _fake_run(runs, name, row, top1, epochs, report=True, planned=12, weights=None):
    """A run folder as the engine leaves it: config, a result row, its epoch records (and with
    ``weights``, a value, the checkpoint it started from)."""
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
    config = resolve_config({"model": {"name": "resnet20"}}, sets)
    (run / "config.yaml").write_text(config_to_yaml(config))
    records = [{"event": "start", "time": "t", "command": "sgcnn run"}]
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
    assert "sg G beats groupconv G by 6.25 points, more than the seed spread 0.50" in table
    assert "sg G and random G are within the seed spread (+0.15, spread 0.50)" in table
    assert "-0.75 points against the baseline (87.00), within the 1.5-point target" in table
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
        {"baseline": (tmp_path / "d.pt", "baseline"), "sg": (tmp_path / "g.pt", "sg")}, 1, 1
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
    from _study_collect import _compare

    sg = {"label": "sg G", "top1": 86.0, "flops": 12_464_704}
    gc = {"label": "groupconv G", "top1": 80.0, "flops": 12_792_448}
    assert _compare(sg, gc, 0.5).endswith("; groupconv G at +2.6% the FLOPs of sg G")
    assert "FLOPs" not in _compare(sg, {**gc, "flops": 12_500_000}, 0.5)
