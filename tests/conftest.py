import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _no_shared_tuning_cache(monkeypatch):
    """Tests measure for themselves: no tuning cache shared with the user's runs (the tests of
    the cache point $SGCNN_CACHE at their tmp_path and turn it back on)."""
    monkeypatch.setenv("SGCNN_TUNING_CACHE", "0")
