"""Distributed data parallel helpers: one process per device, launched by ``torchrun``.

``torchrun --nproc_per_node N`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``;
:func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU). Without those variables
everything runs as a single process (rank 0 of 1) and the collectives below do nothing.

Contracts the engine relies on:

- only rank 0 writes files (:attr:`Dist.is_main`);
- masks are identical on every rank: k-means runs on rank 0 and :func:`broadcast_groups_`
  copies its masks, labels and kept sets to the others (k-means may differ in the last bit
  between processes; the broadcast makes that impossible to matter);
- evaluation is sharded without padding and summed with :func:`all_reduce_sums`, so the
  distributed Top-1 equals the single-process one exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from sgcnn._device import checked_device
from sgcnn.nn.masked import is_masked


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local rank>`` when CUDA is available, else ``cpu``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = checked_device(spec, "--device, or train.device in a recipe")
    if spec == "cuda":
        return checked_device(torch.device("cuda", local_rank), "the local rank's GPU")
    return dev


def setup(device: torch.device) -> Dist:
    """Join the ``torchrun`` process group, if launched by one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return Dist(rank, world, local_rank)


def teardown(d: Dist) -> None:
    """Leave the process group (no-op for a single process)."""
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(d: Dist, obj):
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not d.enabled:
        return obj
    box = [obj if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(d: Dist, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sums(d: Dist, values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (float64)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(d: Dist, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one rank (all ranks get the same answer)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


@torch.no_grad()
def broadcast_groups_(d: Dist, model: nn.Module) -> None:
    """Copy rank 0's self-group structure (mask, labels, kept sets) to every rank, then zero
    the pruned weights there. Weights themselves are synchronised by DDP when it wraps the
    model."""
    if not d.enabled:
        return
    groups = {
        name: (m.sg_labels.cpu(), m.sg_keep.cpu(), m.sg_mask.cpu())
        for name, m in model.named_modules()
        if is_masked(m)
    }
    groups = broadcast_object(d, groups)
    modules = dict(model.named_modules())
    for name, (labels, keep, mask) in groups.items():
        modules[name].set_groups_(labels, keep, mask)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset of ``n`` items: disjoint shards that
    cover it exactly once (no padding), for evaluation."""

    def __init__(self, n: int, d: Dist) -> None:
        self.indices = list(range(d.rank, n, d.world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@torch.no_grad()
def sync_buffers_(d: Dist, model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart per rank:
    each updates its own in the last forward pass of an epoch)."""
    if not d.enabled:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():  # masks are synchronised by broadcast_groups_
            dist.broadcast(buffer, src=0)
