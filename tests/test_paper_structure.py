"""Structure reproduces the paper's tables (docs/method.md section 2) on random weights, seed 0.

Params / FLOPs depend only on the method and the ratios, so they are checked without training.
The rows and the paper's figures are those of ``benchmarks/paper_structure.py``, which prints
the table the README shows.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from paper_structure import ROWS, measure


def _tolerance(row) -> tuple[float, float]:
    """``(params, FLOPs)`` relative tolerance of a row against the paper."""
    if row.model == "lenet5":  # the paper rounds LeNet's params to 1K: 1K absolute
        return 1000 / row.params, 0.02
    if row.model == "densenet121_cifar" and (row.kwargs["num_classes"], row.conv) == (100, 0.95):
        # The paper's CIFAR-100 rows sit 20-40K params above its CIFAR-10 rows at every ratio,
        # while the method at equal conv / FC ratios puts them 5-25K apart; at 0.36M that gap
        # is 2.9% (ours 0.350M). Documented in the README; FLOPs agree within 1%.
        return 0.03, 0.03
    if row.model == "densenet201" and row.conv is not None:
        return 0.05, 0.05
    if row.model == "densenet121_cifar" and row.conv is not None:
        return 0.02, 0.02
    return 0.01, 0.01


@pytest.mark.parametrize("row", ROWS, ids=[r.label for r in ROWS])
def test_paper_row(row):
    c = measure(row)
    params, flops = _tolerance(row)
    assert c["params"] == pytest.approx(row.params, rel=params)
    assert c["flops"] == pytest.approx(row.flops, rel=flops)
