"""DistributedDataParallel: two CPU processes (gloo) under torchrun on synthetic data.

The launched script runs the engine on every rank, then (as test code, not engine code) dumps
what each rank ended with, so the test can check that both ranks hold the same masks and
weights, that only rank 0 wrote the run folder, and that the run itself is complete.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sgcnn.engine.distributed import Dist, ShardSampler
from sgcnn.engine.loaders import TrainLoader, worker_seed
from sgcnn.engine.state import load_state, read_metrics

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import torch
    from sgcnn.engine.config import resolve_config
    from sgcnn.engine.runner import Runner

    out, dump = sys.argv[1], sys.argv[2]
    config = resolve_config({
        "model": {"name": "test_resnet"},
        "data": {"name": "synthetic", "synthetic_size": 128, "image_size": 16},
        "train": {"epochs": 1, "batch_size": 16, "threads": 1, "device": "cpu",
                  "channels_last": True},
        "grouping": {"scheme": "LG", "conv": [0.3], "lg_step": 0.15, "local_epochs": 1,
                     "global_epochs": 1},
    })
    runner = Runner(config, out, quiet=True)
    rows = runner.run()
    state = runner.model.state_dict()
    digest = lambda keys: hashlib.sha1(b"".join(
        state[k].numpy().tobytes() for k in sorted(keys))).hexdigest()
    masks = [k for k in state if k.rsplit(".", 1)[-1] in ("sg_mask", "sg_labels", "sg_keep")]
    weights = [k for k in state if k.endswith("weight")]
    rank = os.environ["RANK"]
    with open(os.path.join(dump, f"rank{rank}.json"), "w") as f:
        json.dump({"rows": rows, "masks": digest(masks), "weights": digest(weights),
                   "n_masks": len(masks), "world": int(os.environ["WORLD_SIZE"])}, f)
    """
)


def test_two_cpu_processes_train_and_self_group_in_lockstep(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out, dump = tmp_path / "run", tmp_path / "dump"
    dump.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(out),
        str(dump),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    rank0, rank1 = (json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["n_masks"] > 0
    assert rank0["masks"] == rank1["masks"]  # the same self-groups on every rank
    assert rank0["weights"] == rank1["weights"]  # DDP kept the replicas identical
    assert rank0["rows"] == rank1["rows"]  # evaluation is summed over both shards
    assert [r["name"] for r in rank0["rows"]] == ["baseline", "Conv-30/FC-30"]

    records = read_metrics(out / "metrics.jsonl")
    assert records[0]["event"] == "start" and records[0]["world_size"] == 2
    # One writer: every epoch, step and row appears once.
    assert [r["event"] for r in records].count("epoch") == 1 + 2 + 1
    assert [r["event"] for r in records].count("prune") == 2
    assert [r["event"] for r in records].count("row") == 2
    test_images = {r["test_images"] for r in records if r["event"] == "row"}
    assert test_images == {32}  # the whole test split, no padding, no image twice
    assert (out / "report.json").is_file()
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_evaluation_shards_cover_the_split_exactly_once():
    shards = [list(ShardSampler(7, Dist(rank, 3))) for rank in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    assert not Dist().enabled  # without torchrun: one process, collectives do nothing


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from sgcnn.engine.config import resolve_config
    from sgcnn.engine.interrupt import RunInterrupted
    from sgcnn.engine.runner import Runner

    out, mode = sys.argv[1], sys.argv[2]
    config = resolve_config({
        "model": {"name": "test_convnet"},
        "data": {"name": "synthetic", "synthetic_size": 160, "image_size": 16},
        "train": {"epochs": 1, "batch_size": 16, "threads": 1, "device": "cpu", "workers": 0},
        "grouping": {"scheme": "baseline", "conv": []},
    })
    if mode == "stop":  # stop on every rank after the second step, as Ctrl-C would
        poll = Runner._poll
        Runner._poll = lambda self, flag=None: (
            (lambda s, due, bad: (s or self.batch == 2, due, bad))(*poll(self, flag)))
    try:
        Runner(config, out, resume=mode == "resume", quiet=True).run()
    except RunInterrupted:
        sys.exit(130)
    """
)


def _torchrun(script, *args):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(script), *map(str, args)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)


def test_a_run_stopped_mid_epoch_under_ddp_resumes_to_the_same_epoch_figures(tmp_path):
    """The training loss and accuracy of an epoch interrupted and resumed are those of the
    uninterrupted epoch: the sums saved mid-epoch are over both ranks, and counted once."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(RESUME_SCRIPT)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert _torchrun(script, whole, "run").returncode == 0
    stopped = _torchrun(script, parts, "stop")
    assert stopped.returncode != 0 and "exitcode: 130" in stopped.stderr, stopped.stderr[-2000:]
    assert load_state(parts)["batch"] == 2  # saved inside the epoch
    assert not [r for r in read_metrics(parts / "metrics.jsonl") if r["event"] == "epoch"]
    resumed = _torchrun(script, parts, "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def epoch(out):
        (record,) = [r for r in read_metrics(out / "metrics.jsonl") if r["event"] == "epoch"]
        return record["train_loss"], record["train_top1"]

    assert epoch(parts) == pytest.approx(epoch(whole), rel=1e-6)


class _Augmented(torch.utils.data.Dataset):
    """Items whose "augmentation" is a draw from torch's generator, as random crops are."""

    def __len__(self):
        return 16

    def __getitem__(self, index):
        return torch.rand(()), index


def test_loader_workers_draw_other_augmentation_on_each_rank():
    """Worker ``w`` of every rank seeds ``base + w``, the base drawn from the loader's generator:
    that generator's seed includes the rank, else every rank draws the same crops and flips."""
    loaders = [
        TrainLoader(_Augmented(), Dist(rank, 2), 4, workers=1, seed=0, pin=False)
        for rank in range(2)
    ]
    draws = [[float(x) for batch, _ in loader.epoch(3) for x in batch] for loader in loaders]
    assert len(draws[0]) == len(draws[1]) == 8
    assert not set(draws[0]) & set(draws[1])
    seeds = {worker_seed(0, epoch, rank) for epoch in range(1000) for rank in range(8)}
    assert len(seeds) == 8000  # no two (epoch, rank) share a seed


def test_a_single_process_seeds_its_loader_as_it_always_did():
    """Rank 0 (and a run without torchrun) keeps ``seed * 1_000_003 + epoch``: a run started
    before ranks were part of the seed resumes with the same worker augmentation."""
    loader = TrainLoader(_Augmented(), Dist(), 4, workers=0, seed=7, pin=False)
    loader.epoch(5)
    assert loader.generator.initial_seed() == 7 * 1_000_003 + 5
    loader = TrainLoader(_Augmented(), Dist(0, 2), 4, workers=0, seed=7, pin=False)
    loader.epoch(5)
    assert loader.generator.initial_seed() == 7 * 1_000_003 + 5
