"""Data loaders: shuffled per epoch, sharded across ranks, resumable in the middle of an epoch.

The training order of an epoch is a pure function of ``(seed, epoch)`` (torch's
:class:`~torch.utils.data.DistributedSampler`, one shard per rank, also for a single process),
so a resumed run sees the same batches; :meth:`EpochSampler.set_epoch` can skip the batches an
interrupted epoch already did. DataLoader workers are seeded from a generator reset per epoch
to a function of ``(seed, epoch, rank)``: worker ``w`` of every rank would otherwise draw the
same crops and flips (rank 0's seed is that of a single process).
Augmentation in the main process (``workers = 0``) draws from torch's global generator, which
the training state saves: resuming is then exact, even mid-epoch. With workers it is exact at
epoch boundaries.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from sgcnn.engine.distributed import Dist, ShardSampler


class EpochSampler(Sampler[int]):
    """This rank's shuffled shard of ``dataset`` for the current epoch, minus ``skip`` items."""

    def __init__(self, dataset: Dataset, d: Dist, seed: int) -> None:
        self.inner = DistributedSampler(
            dataset, num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed
        )
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Shuffle for ``epoch``; leave out its first ``skip`` items (already trained on)."""
        self.inner.set_epoch(epoch)
        self.skip = skip

    @property
    def full_length(self) -> int:
        return len(self.inner)

    def __iter__(self):
        return iter(list(self.inner)[self.skip :])

    def __len__(self) -> int:
        return len(self.inner) - self.skip


class TrainLoader:
    """A DataLoader over :class:`EpochSampler`; full batches only when there are enough."""

    def __init__(
        self,
        dataset: Dataset,
        d: Dist,
        batch_size: int,
        workers: int,
        seed: int,
        pin: bool,
        limit_batches: int = 0,
    ) -> None:
        self.sampler = EpochSampler(dataset, d, seed)
        self.limit_batches = limit_batches
        self.batch_size = batch_size
        self.seed = seed
        self.rank = d.rank
        # Dropping the last partial batch avoids a 1-image batch (BatchNorm cannot train on
        # it); with fewer images than one batch, keep the partial one.
        self.drop_last = self.sampler.full_length >= batch_size
        self.generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin,
            drop_last=self.drop_last,
            generator=self.generator,
        )

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in an epoch (at most ``limit_batches`` when that is set)."""
        n = self.sampler.full_length
        steps = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return min(steps, self.limit_batches) if self.limit_batches else steps

    def epoch(self, epoch: int, skip_batches: int = 0):
        """The batches of ``epoch`` after the first ``skip_batches``."""
        self.sampler.set_epoch(epoch, skip_batches * self.batch_size)
        self.generator.manual_seed(worker_seed(self.seed, epoch, self.rank))
        return self.loader


# Rank r's seeds lie r * _RANK_STRIDE above rank 0's: apart for any epoch count.
_RANK_STRIDE = 0x9E3779B97F4A7C15


def worker_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of the generator the DataLoader draws its workers' base seed from in ``epoch``
    (workers seed ``base + worker id``): different on every rank, and for rank 0 the same as
    it always was (``seed * 1_000_003 + epoch``), so single-process runs resume unchanged."""
    return (seed * 1_000_003 + epoch + rank * _RANK_STRIDE) % 2**64


def eval_loader(dataset: Dataset, d: Dist, batch_size: int, workers: int, pin: bool) -> DataLoader:
    """In order, this rank's disjoint shard, no padding (see :class:`ShardSampler`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), d),
        num_workers=workers,
        pin_memory=pin,
    )
