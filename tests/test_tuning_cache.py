"""The tuning cache: converting the same network again measures nothing; corrupt, hostile or
stale entries are never trusted."""

import json

import pytest
import torch

import sgcnn
from sgcnn.core.clustering import KMeansSettings
from sgcnn.deploy import _native
from sgcnn.deploy import _tuning as tuning
from sgcnn.deploy.convert import convert


@pytest.fixture
def cache(tmp_path, monkeypatch):
    _native.available()  # build / load the kernels from the usual place first
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path))
    monkeypatch.setenv("SGCNN_TUNING_CACHE", "1")
    return tmp_path / "tuning"


@pytest.fixture
def model():
    torch.set_num_threads(1)
    m = sgcnn.create_model("test_resnet").eval()
    sgcnn.self_group_(m, 0.5, groups=4, kmeans=KMeansSettings(n_init=1, max_iter=20))
    return m, torch.randn(2, 3, 16, 16)


def _count_timings(monkeypatch) -> list:
    calls = []
    real = tuning.time_candidates

    def counting(candidates, device, **kw):
        calls.append(sorted(candidates))
        return real(candidates, device, **kw)

    monkeypatch.setattr(tuning, "time_candidates", counting)
    return calls


def _choices(converted):
    return [(r["name"], r["realization"]) for r in converted.sgcnn_conversion["layers"]]


def test_second_conversion_reuses_every_measurement(cache, model, monkeypatch):
    m, x = model
    calls = _count_timings(monkeypatch)
    first = convert(m, x)
    measured = len(calls)
    assert measured > 0 and len(list(cache.glob("*.json"))) == 1
    second = convert(m, x)
    assert len(calls) == measured  # nothing measured again
    assert _choices(second) == _choices(first)
    # a different batch size is another shape: measured
    convert(m, torch.randn(3, 3, 16, 16))
    assert len(calls) > measured


@pytest.mark.parametrize(
    "damaged",
    [
        '{"format": "sgcnn.tuning", "entries": {"x": ',  # cut short
        '{"format": "sgcnn.tuning", "entries": ' + "[" * 100_000 + "]" * 100_000 + "}",  # deep
    ],
    ids=["cut-short", "nested-too-deep"],
)
def test_corrupt_cache_file_warns_and_is_measured_again_and_rewritten(
    cache, model, monkeypatch, damaged
):
    m, x = model
    convert(m, x)
    (path,) = cache.glob("*.json")
    path.write_text(damaged)
    calls = _count_timings(monkeypatch)
    with pytest.warns(UserWarning, match="ignoring the tuning cache"):
        convert(m, x)
    assert calls
    assert json.loads(path.read_text())["format"] == "sgcnn.tuning"
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "poison",
    [
        lambda e: e["times_ms"].update({"dense/nchw": {"min_ms": "0", "median_ms": 0, "runs": 1}}),
        lambda e: e["times_ms"].update({"rm -rf": {"min_ms": 0.0, "median_ms": 0.0, "runs": 1}}),
        lambda e: next(iter(e["times_ms"].values())).update(min_ms=float("nan")),
        lambda e: e.update(times_ms=[1, 2]),
        lambda e: next(iter(e["times_ms"].values())).update(alloc_ms=-1e9),
        lambda e: next(iter(e["times_ms"].values())).update(faults=float("inf")),
        lambda e: e.update(candidates=None),
        lambda e: e.update(candidates=[1, "dense/nchw"]),
    ],
)
def test_hostile_entries_are_never_trusted(cache, model, monkeypatch, poison):
    m, x = model
    convert(m, x)
    (path,) = cache.glob("*.json")
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        poison(entry)
    path.write_text(json.dumps(data))
    calls = _count_timings(monkeypatch)
    with pytest.warns(UserWarning, match="malformed entry"):
        convert(m, x)
    assert len(calls) == len(data["entries"])


def test_stale_entries_are_measured_again(cache, model, monkeypatch):
    m, x = model
    convert(m, x)
    (path,) = cache.glob("*.json")
    data = json.loads(path.read_text())
    for entry in data["entries"].values():  # a realization that no longer exists
        entry["candidates"].append("retired")
        entry["times_ms"]["retired"] = {"min_ms": 0.0, "median_ms": 0.0, "runs": 1}
    path.write_text(json.dumps(data))
    calls = _count_timings(monkeypatch)
    converted = convert(m, x)
    assert len(calls) == len(data["entries"])
    assert all(r != "retired" for _, r in _choices(converted))
    # a new kernel build (or torch, threads, CPU) is another context: another file
    monkeypatch.setattr(_native, "build_key", lambda: "another build")
    monkeypatch.setattr(_native, "available", lambda: True)
    assert tuning._cache_file(torch.device("cpu")) != path


def test_other_candidate_sets_of_the_same_layer_keep_their_own_entries(cache, model, monkeypatch):
    from sgcnn.deploy.convert import fuse_dense

    m, x = model
    calls = _count_timings(monkeypatch)
    convert(m, x)
    fuse_dense(m, x)  # the same plain layers (stem), offered the dense forms only
    measured = len(calls)
    convert(m, x)
    fuse_dense(m, x)
    assert len(calls) == measured  # neither overwrote the other's entries


def test_time_candidates_stops_timing_clear_losers():
    """A candidate three times slower than the fastest is cut after its warm-up call, one 40%
    slower after two timed rounds; the fastest gets every round the budget allows."""
    import time

    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    # 20 ms steps, 1.4x and 4x: sleep's overshoot on a loaded machine (~1-2 ms) cannot
    # bring "close" within the 1.2x that keeps a candidate
    calls = {"fast": sleeper(0.02), "close": sleeper(0.028), "slow": sleeper(0.08)}
    results = tuning.time_candidates(calls, torch.device("cpu"), rounds=6, budget_s=10.0)
    assert results["slow"]["runs"] == 0
    assert results["close"]["runs"] == 2
    assert results["fast"]["runs"] == 6
    assert tuning.best(results) == "fast"


def test_a_slow_first_call_is_not_judged_when_warming_up_twice():
    """cuDNN's algorithm search makes a layer's first call on CUDA up to 5,000 times slower
    than the next (measured on an H200): with two warm-up calls (the CUDA default) such a
    candidate is timed and can win; with one it would be cut on its first call."""
    import time

    def first_call_slow():
        state = {"calls": 0}

        def call():
            state["calls"] += 1
            time.sleep(0.05 if state["calls"] == 1 else 0.001)

        return call

    def others():
        return {"a": lambda: time.sleep(0.003), "b": lambda: time.sleep(0.003)}

    cpu = torch.device("cpu")
    once = tuning.time_candidates({"search": first_call_slow(), **others()}, cpu, warmup=1)
    assert once["search"]["runs"] == 0 and tuning.best(once) != "search"
    twice = tuning.time_candidates({"search": first_call_slow(), **others()}, cpu, warmup=2)
    assert twice["search"]["runs"] > 0 and tuning.best(twice) == "search"
    assert tuning.warmup_calls(torch.device("cuda")) == 2
    assert tuning.warmup_calls(cpu) == 1


def test_every_cache_follows_one_folder_rule(tmp_path, monkeypatch):
    """$SGCNN_CACHE, else $XDG_CACHE_HOME/sgcnn: data, tuning timings and kernels alike."""
    from sgcnn.data.cache import cache_root
    from sgcnn.deploy._native_build import _cache_root

    monkeypatch.delenv("SGCNN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    want = tmp_path / "xdg" / "sgcnn"
    assert cache_root() == want and _cache_root() == want
    assert tuning._cache_file(torch.device("cpu")).parent == want / "tuning"
    monkeypatch.setenv("SGCNN_CACHE", str(tmp_path / "own"))
    assert cache_root() == _cache_root() == tmp_path / "own"
