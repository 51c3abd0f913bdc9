"""Fixtures every test gets: a fixed seed, one thread, a cache folder of its own."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed 0, and one thread: the models are tiny, and on a busy 2-core machine a second thread
    mostly waits at OpenMP barriers (up to 100x slower). The thread count is restored after."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory, monkeypatch):
    """Every cache write lands in a fresh temporary folder beside ``tmp_path`` (not in it, so
    that tests listing ``tmp_path`` see only their own files; a test may point SGCNN_CACHE
    elsewhere)."""
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _no_shared_tuning_cache(monkeypatch):
    """Tests measure for themselves: no tuning cache shared between tests (the tests of the
    cache point $SGCNN_CACHE at their tmp_path and turn it back on)."""
    monkeypatch.setenv("SGCNN_TUNING_CACHE", "0")
