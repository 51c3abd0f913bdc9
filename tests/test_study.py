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
    collect(tmp_path / "runs", None, tmp_path / "out", latency=False, threads=1, batch=1)
    doc = json.loads((tmp_path / "out" / "cifar10.json").read_text())
    assert len(doc["rows"]) == 19
    assert {r["status"] for r in doc["rows"]} == {"missing"}
    table = (tmp_path / "out" / "cifar10.md").read_text()
    assert "missing: sg-LG-conv70-s0 (missing)" in table
    assert (tmp_path / "out" / "cifar10.png").stat().st_size > 0
    assert not (tmp_path / "out" / "checkpoints").exists()
