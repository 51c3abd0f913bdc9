"""Every sub-command on bad input: exit status 2, one line on stderr, no traceback, and no file
created or changed anywhere under the test folder."""

import os
import subprocess
import sys

import pytest
import torch

import sgcnn
from _shared import FAST_KMEANS
from sgcnn.cli.main import main
from sgcnn.engine.checkpoint import model_payload, save_checkpoint

DATA = ["--data", "synthetic", "--set", "data.synthetic_size=64", "--set", "data.image_size=16",
        "--device", "cpu", "--quiet"]  # fmt: skip
GROUPED = ["--checkpoint", "{ckpt}"]
ROOT_CAN_WRITE_ANYWHERE = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A self-grouped checkpoint, a NaN one, an empty one, files of the wrong kind, a
    read-only folder, and a run folder (with a damaged copy)."""
    root = tmp_path_factory.mktemp("inputs")
    model = sgcnn.create_model("test_convnet")
    sgcnn.self_group_(model, 0.5, groups=2, kmeans=FAST_KMEANS)
    save_checkpoint(root / "g.pt", model_payload(model, "test_convnet", {}))
    with torch.no_grad():
        model.fc2.weight[0, 0] = float("nan")
    save_checkpoint(root / "nan.pt", model_payload(model, "test_convnet", {}))
    (root / "empty.pt").write_bytes(b"")
    (root / "half.pt").write_bytes((root / "g.pt").read_bytes()[:300])
    (root / "latin1.yaml").write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    (root / "a_file").write_text("I am a file")
    (root / "empty.yaml").write_text("")
    (root / "model_int.yaml").write_text("model: 3\n")
    (root / "grouping_empty.yaml").write_text("grouping:\n  # scheme: G\n")
    (root / "grouping_list.yaml").write_text("grouping: [G]\n")
    (root / "existing.pt2").write_text("keep me")
    (root / "existing.json").write_text("keep me")
    (root / "recipe_dir.yaml").mkdir()
    (root / "out_dir").mkdir()
    run = root / "run"
    args = ["train", "--model", "test_convnet", "--epochs", "1", "--output", str(run), *DATA]
    assert main([*args, "--set", "train.threads=1"]) == 0
    damaged = root / "damaged"
    damaged.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (damaged / name).write_bytes((run / name).read_bytes())
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write('[1, 2]\n{"event": "end"}\n')
    broken = root / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text(":: : [\n")
    (broken / "metrics.jsonl").write_text("")
    readonly = root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    yield root
    readonly.chmod(0o755)


def _cases():
    ro, under = "{root}/readonly/x", "{root}/a_file/x"
    model = ["--model", "test_convnet"]
    cases = {
        # unwritable output location: read-only folder, or a path under a file
        "train-readonly": ["train", *model, "--epochs", "1", *DATA, "--output", ro],
        "train-under-file": ["train", *model, "--epochs", "1", *DATA, "--output", under],
        "run-readonly": ["run", "lenet5_mnist5k_demo", "--output", ro],
        "finetune-readonly": ["finetune", *GROUPED, "--conv", "0.5", *DATA, "--output", ro],
        "demo-readonly": ["demo", "--output", ro],
        "demo-under-file": ["demo", "--output", under],
        "group-zero-groups": ["group", *model, "--conv-sparsity", "0.5", "--groups", "0"],
        "detect-train-under-file": [
            "detect",
            "train",
            "--recipe",
            "synthetic",
            "--images",
            "i",
            "--annotations",
            "a",
            "--output",
            under,
        ],
        "report-readonly": ["report", "{root}/readonly"],
        "convert-readonly": ["convert", *GROUPED, "--output", ro + ".pt2"],
        "convert-report-readonly": [
            "convert",
            *GROUPED,
            "--output",
            "{root}/c.pt2",
            "--report",
            ro + ".json",
        ],
        "export-readonly": ["export", *GROUPED, "--format", "pt2", "--output", ro + ".pt2"],
        "export-under-file": ["export", *GROUPED, "--format", "onnx", "--output", under + ".onnx"],
        "bench-output-readonly": ["bench", *model, "--output", ro + ".json"],
        "bench-csv-under-file": ["bench", *model, "--csv", under + ".csv"],
        "group-readonly": ["group", *model, "--conv-sparsity", "0.5", "--output", ro],
        # an output that is a folder, or exists already
        "convert-output-folder": ["convert", *GROUPED, "--output", "{root}/out_dir"],
        "export-output-folder": [
            "export",
            *GROUPED,
            "--format",
            "pt2",
            "--output",
            "{root}/out_dir",
        ],
        "bench-output-folder": ["bench", *model, "--output", "{root}/out_dir"],
        "convert-existing": ["convert", *GROUPED, "--output", "{root}/existing.pt2"],
        "export-existing": [
            "export",
            *GROUPED,
            "--format",
            "pt2",
            "--output",
            "{root}/existing.pt2",
        ],
        "bench-existing": ["bench", *model, "--output", "{root}/existing.json"],
        "export-wrong-suffix": ["export", *GROUPED, "--format", "pt2", "--output", "{root}/m.onnx"],
        # broken checkpoints, in every loader
        "count-empty": ["count", "--checkpoint", "{root}/empty.pt"],
        "group-empty": [
            "group",
            "--checkpoint",
            "{root}/empty.pt",
            "--conv-sparsity",
            "0.5",
            "--output",
            "{root}/new",
        ],
        "eval-empty": ["eval", "{root}/empty.pt"],
        "finetune-empty": ["finetune", "--checkpoint", "{root}/empty.pt", "--conv", "0.5"],
        "convert-truncated": [
            "convert",
            "--checkpoint",
            "{root}/half.pt",
            "--output",
            "{root}/c.pt2",
        ],
        "bench-empty": ["bench", "--checkpoint", "{root}/empty.pt"],
        "train-empty": ["train", "--checkpoint", "{root}/empty.pt", *model, *DATA],
        # NaN weights: refused by every command that reads weights
        "eval-nan": ["eval", "{root}/nan.pt", *DATA[:6]],
        "finetune-nan": ["finetune", "--checkpoint", "{root}/nan.pt", "--conv", "0.5", *DATA],
        "group-nan": [
            "group",
            "--checkpoint",
            "{root}/nan.pt",
            "--conv-sparsity",
            "0.5",
            "--output",
            "{root}/new",
        ],
        "count-nan": ["count", "--checkpoint", "{root}/nan.pt"],
        "export-nan": [
            "export",
            "--checkpoint",
            "{root}/nan.pt",
            "--format",
            "pt2",
            "--output",
            "{root}/n.pt2",
        ],
        # recipes and run folders
        "run-non-utf8-recipe": ["run", "{root}/latin1.yaml"],
        "run-recipe-folder": ["run", "{root}/recipe_dir.yaml"],
        "report-damaged-metrics": ["report", "{root}/damaged"],
        "report-corrupt-config": ["report", "{root}/broken"],
        # ranges
        "eval-batch-0": ["eval", "{ckpt}", "--batch-size", "0"],
        "convert-threads-0": ["convert", *GROUPED, "--threads", "0", "--output", "{root}/c.pt2"],
        "convert-threads-neg": ["convert", *GROUPED, "--threads", "-1", "--output", "{root}/c.pt2"],
        "convert-huge-batch": [
            "convert",
            *GROUPED,
            "--batch-size",
            "2000000",
            "--output",
            "{root}/c.pt2",
        ],
        "bench-warmup-neg": ["bench", *model, "--warmup", "-1"],
        "bench-batch-neg": ["bench", *model, "--batch-sizes", "-1,2"],
        "bench-threads-0": ["bench", *model, "--threads", "0"],
        "bench-threads-oversubscribed": ["bench", *model, "--threads", "100000"],
        "bench-batch-twice": ["bench", *model, "--batch-sizes", "1,1"],
        "bench-batch-gap": ["bench", *model, "--batch-sizes", "1,,2"],
        "bench-sparsity-with-checkpoint": ["bench", *GROUPED, "--sparsity", "0.5"],
        "bench-dense-checkpoint": ["bench", "--checkpoint", "{root}/run/baseline/model.pt"],
        "convert-batch-above-max": [
            "convert",
            *GROUPED,
            "--batch-size",
            "70000",
            "--input-size",
            "3x8x8",
            "--output",
            "{root}/c.pt2",
        ],
        "count-classes-0": ["count", *model, "--num-classes", "0"],
        "train-classes-0": ["train", *model, "--num-classes", "0", *DATA],
        "models-bad-source": ["models", "--source", "nowhere"],
        # two outputs naming one file: one would silently replace the other
        "convert-output-is-report": [
            "convert",
            *GROUPED,
            "--no-tune",
            "--overwrite",
            "--output",
            "{root}/s.pt2",
            "--report",
            "{root}/s.pt2",
        ],
        "bench-output-is-csv": [
            "bench",
            *model,
            "--output",
            "{root}/s.json",
            "--csv",
            "{root}/./s.json",
        ],
        # seeds the random generators cannot take
        "group-seed-neg": [
            "group",
            *model,
            "--conv-sparsity",
            "0.5",
            "--seed",
            "-1",
            "--output",
            "{root}/new",
        ],
        "train-seed-huge": ["train", *model, *DATA, "--seed", "99999999999999999999"],
        # patterns that match nothing, found before anything is trained or written
        "group-exclude-nothing": [
            "group",
            *model,
            "--conv-sparsity",
            "0.5",
            "--exclude",
            "fc9",
            "--output",
            "{root}/n",
        ],
        "finetune-include-nothing": [
            "finetune",
            "--checkpoint",
            "{ckpt}",
            "--conv",
            "0.5",
            *DATA,
            "--set",
            "grouping.include=[nomatch]",
        ],
        "finetune-twice-the-target": ["finetune", *GROUPED, "--conv", "0.5", "0.5", *DATA],
        "finetune-grouping-empty": [
            "finetune",
            *GROUPED,
            "--recipe",
            "{root}/grouping_empty.yaml",
            "--conv",
            "0.5",
            *DATA,
        ],
        "finetune-grouping-list": [
            "finetune",
            *GROUPED,
            "--recipe",
            "{root}/grouping_list.yaml",
            "--conv",
            "0.5",
            *DATA,
        ],
        "eval-run-state": ["eval", "{root}/run/state.pt"],
        "eval-num-classes-of-a-checkpoint": ["eval", "{ckpt}", "--num-classes", "5", *DATA[:6]],
        "group-empty-output": ["group", *model, "--conv-sparsity", "0.5", "--output", ""],
        "count-run-state-with-model": [
            "count",
            "--checkpoint",
            "{root}/run/state.pt",
            "--model",
            "test_convnet",
        ],
        "run-empty-recipe": ["run", "{root}/empty.yaml"],
        "run-section-not-a-mapping": ["run", "{root}/model_int.yaml"],
    }
    return list(cases.items())


def _snapshot(root):
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in root.rglob("*")
    }


@pytest.mark.parametrize(("case", "argv"), _cases(), ids=[c for c, _ in _cases()])
def test_bad_input_is_one_line_and_changes_nothing(case, argv, files, tmp_path, capsys,
                                                   monkeypatch):  # fmt: skip
    if "readonly" in case and ROOT_CAN_WRITE_ANYWHERE:
        pytest.skip("root writes into read-only folders")
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    argv = [a.format(root=files, ckpt=files / "g.pt") for a in argv]
    before = _snapshot(files)
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert _snapshot(files) == before, "a file was created or changed"
    assert not list(tmp_path.glob("runs")), "a run folder was created"


def test_read_only_cache_is_one_line(tmp_path, capsys, monkeypatch):
    if ROOT_CAN_WRITE_ANYWHERE:
        pytest.skip("root writes into read-only folders")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.setenv("SGCNN_CACHE", str(cache))
    try:
        rc = main(["train", "--model", "test_convnet", "--epochs", "1", *DATA,
                   "--output", str(tmp_path / "run")])  # fmt: skip
    finally:
        cache.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "cache folder" in err, err
    assert not (tmp_path / "run").exists() and not list(cache.iterdir())


def test_messages_name_the_file_and_the_fix(files, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    assert "is empty (0 bytes)" in error(["count", "--checkpoint", str(files / "empty.pt")])
    assert "NaN or infinite" in error(["eval", str(files / "nan.pt")])
    assert "config.yaml" in error(["report", str(files / "broken")])
    assert "is a folder" in error(["run", str(files / "recipe_dir.yaml")])
    assert "not UTF-8" in error(["run", str(files / "latin1.yaml")])
    assert "pass --overwrite" in error(["bench", "--model", "test_convnet",
                                        "--output", str(files / "existing.json")])  # fmt: skip
    assert "is a folder" in error(["convert", "--checkpoint", str(files / "g.pt"),
                                   "--output", str(files / "out_dir")])  # fmt: skip
    assert "MiB" in error(["convert", "--checkpoint", str(files / "g.pt"), "--batch-size",
                           "60000", "--input-size", "3x64x64",
                           "--output", str(tmp_path / "c.pt2")])  # fmt: skip
    msg = error(["bench", "--model", "test_convnet", "--batch-sizes", "-1,2"])
    assert "give positive integers" in msg
    # the folder `sgcnn group` / `train` write, or a run folder, passed as the checkpoint
    grouped = tmp_path / "grouped"
    grouped.mkdir()
    (grouped / "model.pt").write_bytes((files / "g.pt").read_bytes())
    msg = error(["convert", "--checkpoint", str(grouped), "--output", str(tmp_path / "c.pt2")])
    assert f"the checkpoint in it is {str(grouped / 'model.pt')!r}" in msg
    assert str(tmp_path / "grouped" / "model.pt") in error(["eval", str(tmp_path)])
    assert not (tmp_path / "c.pt2").exists()
    msg = error(["demo", "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}",
                 "--output", str(tmp_path / "d")])  # fmt: skip
    assert "--download" not in msg and "data.download=true" in msg
    state = str(files / "run" / "state.pt")
    for argv in (["eval", state], ["eval", state, "--model", "test_convnet"]):
        assert "a run's training state" in error(argv)  # not "pass --model", then "neither"
    ckpt = str(files / "g.pt")
    damaged, detector = tmp_path / "damaged.pt", tmp_path / "detector.pt"
    torch.save({"format": "sgcnn.model", "version": 1, "state_dict": {}}, damaged)
    torch.save({"format": "sgcnn.detector", "version": 1, "state_dict": {}}, detector)
    recipe = ["--data-root", str(tmp_path), "--output", str(tmp_path / "t")]
    for argv, fragment in [
        (["eval", str(damaged)], "damaged sgcnn checkpoint"),
        (["transfer", "--checkpoint", str(damaged), "--scheme", "L", *recipe], "damaged"),
        (["finetune", "--checkpoint", ckpt, "--scheme", "L", "--conv", "0.7", "--epochs", "3"],
         "the L scheme has none: use --local-epochs"),
        (["finetune", "--checkpoint", ckpt, "--conv", "0.7", "--local-epochs", "3"],
         "G prunes once and fine-tunes globally: use --epochs"),
        (["finetune", "--checkpoint", ckpt, "--model", "lenet5", "--conv", "0.7"],
         "holds a test_convnet, not a lenet5"),
        (["finetune", "--checkpoint", ckpt, *DATA], "needs target sparsities: --conv 0.7"),
        (["train", "--checkpoint", ckpt, "--model", "lenet5", *DATA],
         "holds a test_convnet, not a lenet5"),
        (["train", "--checkpoint", ckpt, "--num-classes", "5", *DATA], "drop --num-classes"),
        (["transfer", "--checkpoint", ckpt, "--scheme", "L", "--global-epochs", "2", *recipe],
         "--scheme L trains --epochs only"),
        (["transfer", "--checkpoint", ckpt, "--scheme", "G", "--conv", "0.6", "--local-epochs",
          "2", *recipe], "--scheme G has no such steps"),
        (["detect", "train", "--recipe", "coco", "--output", str(tmp_path / "d")],
         "shipped ones are coco2014, synthetic"),
        (["bench", "--checkpoint", ckpt, "--groups", "4"], "--groups self-group a fresh model"),
        (["convert", "--checkpoint", ckpt, "--threads", "100000", "--output",
          str(tmp_path / "t.pt2")], "more than the"),
        (["count", "--model", "resnet50", "--input-size", "100000"], "MiB (float32)"),
        (["report", str(tmp_path / "no_such_run")], "does not exist"),
        (["detect", "train", "--recipe", "synthetic", "--images", str(tmp_path), "--annotations",
          str(damaged), "--output", str(files / "a_file" / "det")], "a_file"),
        (["eval", str(detector), "--model", "test_convnet"], "a detector checkpoint"),
        (["transfer", "--checkpoint", state, "--model", "test_convnet", "--scheme", "L",
          *recipe], "a run's training state"),
        (["transfer", "--checkpoint", str(files / "g.pt"), "--model", "lenet5", "--scheme",
          "L", *recipe], "holds a test_convnet, not a lenet5"),
    ]:  # fmt: skip
        assert fragment in error(argv), argv
    assert "give each its own file" in error(["convert", "--checkpoint", str(files / "g.pt"),
        "--output", str(tmp_path / "s.pt2"), "--report", str(tmp_path / "s.pt2")])  # fmt: skip
    ckpt = str(files / "g.pt")
    for argv, fragment in [  # each refused for its own reason, not an earlier one
        (["convert", "--checkpoint", ckpt, "--batch-size", "70000", "--input-size", "3x8x8",
          "--output", str(tmp_path / "c.pt2")], "the largest batch a saved program takes"),
        (["eval", ckpt, "--num-classes", "5", *DATA[:6]], "drop --num-classes"),
        (["bench", "--model", "test_convnet", "--threads", "100000"], "more than the"),
        (["finetune", "--checkpoint", ckpt, "--conv", "0.5", "0.5", *DATA],
         "names a target twice"),
        (["count", "--checkpoint", str(files / "run" / "state.pt"), "--model", "test_convnet"],
         "a run's training state"),
    ]:  # fmt: skip
        assert fragment in error(argv), argv
    assert "exclude pattern 'fc9' matches no" in error(["group", "--model", "test_convnet",
        "--conv-sparsity", "0.5", "--exclude", "fc9", "--output", str(tmp_path / "g")])  # fmt: skip


def test_overwrite_replaces_and_a_failed_step_keeps_the_old_file(files, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    ckpt = str(files / "g.pt")
    base = ["export", "--checkpoint", ckpt, "--format", "pt2", "--output", str(out)]
    assert main(base) == 0
    first = out.read_bytes()
    assert main(base) == 2 and out.read_bytes() == first
    assert main([*base, "--overwrite"]) == 0
    sgcnn.load(out)
    assert main(["export", "--checkpoint", str(files / "nan.pt"), "--format", "pt2",
                 "--output", str(out), "--overwrite"]) == 2  # fmt: skip
    sgcnn.load(out)  # still the good one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2"]  # no temporary left


def test_two_writers_of_one_output_end_with_a_valid_file(files, tmp_path):
    out = tmp_path / "cc.pt2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sgcnn.cli.main", "export", "--checkpoint", str(files / "g.pt"),
           "--format", "pt2", "--output", str(out), "--overwrite"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(rc == 0 for rc, _ in results), results
    module = sgcnn.load(out)
    assert module(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cc.pt2"]


def test_a_reader_that_goes_away_is_not_an_error():
    """`sgcnn models | head -1`: the closed pipe ends the command quietly, no error line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgcnn.cli.main", "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert err == "", err


def test_ctrl_c_outside_a_run_says_interrupted(monkeypatch, capsys):
    import sgcnn.cli.models

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sgcnn.cli.models, "run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "sgcnn models: interrupted"


def test_ctrl_c_while_the_parser_loads_says_interrupted(monkeypatch, capsys):
    import sgcnn.cli.main as cli_main

    def interrupted(full=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "sgcnn models: interrupted"


@pytest.mark.parametrize(
    ("raised", "fragment"),
    [
        (MemoryError(), "out of host memory. Use a smaller batch (--batch-size"),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
         "out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB)"),
    ],
)  # fmt: skip
def test_out_of_memory_is_one_line_that_says_what_to_change(monkeypatch, capsys, raised,
                                                            fragment):  # fmt: skip
    import sgcnn.cli.models

    def run(args):
        raise raised

    monkeypatch.setattr(sgcnn.cli.models, "run", run)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err and "--resume" in err


def test_an_error_raised_in_a_loader_worker_is_its_own_line(monkeypatch, capsys):
    import sgcnn.cli.models

    wrapped = (
        "Caught SgcnnError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        'call last):\n  File "x.py", line 1, in f\n    raise SgcnnError(m)\n'
        "sgcnn.errors.SgcnnError: cannot read image a.jpg: truncated. Remove it\n"
    )

    def run(args):
        raise sgcnn.SgcnnError(wrapped)

    monkeypatch.setattr(sgcnn.cli.models, "run", run)
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err == "sgcnn models: error: cannot read image a.jpg: truncated. Remove it\n"


@pytest.mark.parametrize("where", ["read-only mount", "proc"])
def test_unwritable_output_is_refused_before_any_work(where, files, tmp_path, capsys,
                                                      monkeypatch):  # fmt: skip
    """Permission bits can say "writable" where no file can be made (root on a read-only mount,
    /proc): the output check creates a file to be sure, so convert fails before converting."""
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "out" / "m.pt2"
    if where == "proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc here")
        output = "/proc/sgcnn-test.pt2"
    else:
        import errno
        import tempfile

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rc = main(
        ["convert", "--checkpoint", str(files / "g.pt"), "--no-tune", "--output", str(output)]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "cannot create a file in" in err, err
    assert not (tmp_path / "out").exists()


def test_a_gpu_index_past_the_visible_gpus_is_one_line(monkeypatch, files, capsys, tmp_path):
    """``--device cuda:3`` on a machine that shows one GPU: named before anything runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    for argv in (
        ["train", "--model", "test_convnet", "--epochs", "1", *DATA[:-3], "--device", "cuda:3",
         "--output", str(tmp_path / "run")],
        ["convert", "--checkpoint", str(files / "g.pt"), "--device", "cuda:3",
         "--output", str(tmp_path / "m.pt2")],
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "shows 1 GPU(s) (cuda:0 to cuda:0)" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "m.pt2").exists()


def test_train_from_a_checkpoint_builds_the_model_it_names(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "cache"))
    checkpoint = files / "run" / "baseline" / "model.pt"
    argv = ["train", "--checkpoint", str(checkpoint), "--epochs", "1", *DATA,
            "--output", str(tmp_path / "again")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "name: test_convnet" in (tmp_path / "again" / "config.yaml").read_text()
