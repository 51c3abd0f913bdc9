"""`sgcnn demo`: LeNet-5 on mnist5k, paper-style table, report files; the full demo (slow)
must reach the figures of the issue within five minutes."""

import json
import re

import pytest

import sgcnn
from sgcnn.cli.main import main

REPORT_FILES = ("report.md", "report.json", "accuracy_vs_flops.png", "config.yaml", "metrics.jsonl")


def _check_report(out, names):
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["rows"]] == names
    for row in report["rows"]:
        assert {"name", "params", "flops", "top1", "top5"} <= set(row)
    assert {r["name"] for r in report["paper"]} >= set(names)
    assert sorted(p.name for p in (out / "structure").glob("*.png")) == [
        "conv2.png",
        "fc1.png",
        "fc2.png",
    ]
    return {r["name"]: r for r in report["rows"]}


def test_demo_in_miniature(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--output",
        str(out),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "grouping.global_epochs=1",
        "--set",
        "grouping.conv=[0.95]",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| model | Params | FLOPs | Top-1 % | Top-5 % | paper Params |" in printed
    assert re.search(r"\| Conv-95/FC-95 \| 2\d\.\dK \|", printed)
    assert re.search(r"elapsed \d+\.\d s", printed)
    rows = _check_report(out, ["baseline", "Conv-95/FC-95"])
    assert rows["baseline"]["params"] == sgcnn.count(sgcnn.create_model("lenet5"), 28)["params"]
    assert abs(rows["Conv-95/FC-95"]["params"] - 22_000) < 1_000  # the paper's 22K
    assert abs(rows["Conv-95/FC-95"]["flops"] - 388_000) < 5_000  # the paper's 388K
    assert rows["baseline"]["top1"] > 80  # one epoch already learns the digits


@pytest.mark.slow
def test_full_demo_reaches_the_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    seconds = float(re.search(r"elapsed (\d+\.\d) s", printed).group(1))
    rows = _check_report(out, ["baseline", "Conv-95/FC-95", "Conv-97/FC-97", "Conv-99/FC-99"])
    assert seconds <= 300
    assert rows["baseline"]["top1"] >= 97.5
    assert rows["baseline"]["top1"] - rows["Conv-95/FC-95"]["top1"] <= 1.0
    assert rows["Conv-99/FC-99"]["top1"] > 90
