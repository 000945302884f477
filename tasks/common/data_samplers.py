"""Data-order samplers every task's loaders share: seeded, resumable mid-epoch, distributed.

:class:`TrainSampler` yields ``(index, sample_seed)``: the order of epoch ``e`` and every sample's augmentation seed
are functions of ``(seed, e, position)`` only, which is what makes exact resume and worker-count-independent
augmentation possible. :class:`InferenceSampler` shards ``range(size)`` contiguously over ranks.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["InferenceSampler", "TrainSampler"]


class TrainSampler(Sampler):
    """Epoch-based, seeded, optionally repeat-factor, distributed sampler yielding ``(index, sample_seed)``.

    The global order of epoch ``e`` depends only on ``(seed, e)``; rank ``r`` of ``w`` takes every w-th entry,
    truncated so every rank gets the same number of full batches. ``sample_seed`` depends on
    ``(seed, e, global position)``, so augmentations do not depend on the number of workers.
    ``set_epoch(e, start_batch)`` resumes in the middle of an epoch without decoding skipped images.
    """

    def __init__(
        self,
        size: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        factors: np.ndarray | None = None,
    ) -> None:
        if size < batch_size * world_size:
            raise ValueError(
                f"the training set has {size} images, fewer than the global batch {batch_size * world_size}"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.factors = rank, world_size, factors
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _global_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        indices = np.arange(self.size)
        if self.factors is not None:  # stochastic rounding of the repeat factors
            reps = np.floor(self.factors + rng.random(self.size)).astype(np.int64)
            indices = np.repeat(indices, reps)
        return indices[rng.permutation(len(indices))]

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        order = self._global_order(self.epoch if epoch is None else epoch)
        return len(order) // (self.batch_size * self.world_size)

    def _positions(self) -> tuple[np.ndarray, np.ndarray]:
        order = self._global_order(self.epoch)
        per_rank = len(order) // (self.batch_size * self.world_size) * self.batch_size
        positions = np.arange(self.rank, per_rank * self.world_size, self.world_size)
        positions = positions[self.start_batch * self.batch_size :]
        return order[positions], positions

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices, positions = self._positions()
        for index, pos in zip(indices.tolist(), positions.tolist()):
            seed = int(np.random.SeedSequence([self.seed, self.epoch, pos]).generate_state(1)[0])
            yield index, seed

    def __len__(self) -> int:
        return len(self._positions()[0])


class InferenceSampler(Sampler):
    """Contiguous shard of ``range(size)`` for this rank (no padding, no duplicates)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        shard = (size + world_size - 1) // world_size
        self.indices = list(range(min(rank * shard, size), min((rank + 1) * shard, size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
