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

from sgcnn.engine.distributed import Dist, ShardSampler
from sgcnn.engine.state import read_metrics

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
