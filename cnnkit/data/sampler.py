"""``DistributedSampler``: each rank's share of a dataset's indices, a new shuffle every epoch.

Every rank draws the same permutation of ``range(N)`` (seeded by ``seed`` and the epoch, so no
communication is needed) and takes every ``num_replicas``-th index starting at its rank, so the
shards are disjoint and together cover the dataset once. When ``N`` does not divide evenly, the
permutation is padded with its own first indices (a few samples seen twice that epoch) so every
rank gets the same number of samples and hence the same number of batches, which synchronous
training needs; with ``drop_last=True`` the tail is dropped instead. PyTorch's semantics and
argument names.
"""
from __future__ import annotations

import math
from numbers import Integral

import numpy as np

__all__ = ["DistributedSampler"]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"DistributedSampler: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class DistributedSampler:
    """The indices of rank ``rank``'s shard of a dataset (iterate it; ``len`` is the shard size).

    Args:
        dataset_or_length: a dataset (anything with ``len``) or its length.
        num_replicas: the number of ranks (default: ``cnnkit.distributed.get_world_size()``, 1
            without a process group).
        rank: this rank (default: ``cnnkit.distributed.get_rank()``, 0 without a process group).
        shuffle: a new permutation each epoch (call ``set_epoch(epoch)`` before each epoch; the
            trainer does), else the dataset order.
        seed: the shuffle's seed; must be the same on every rank.
        drop_last: drop the tail that does not divide evenly instead of padding it.

    Pass it to ``DataLoader(dataset, batch_size, sampler=sampler)``.
    """

    def __init__(self, dataset_or_length, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        from .. import distributed as dist

        if isinstance(dataset_or_length, Integral) and not isinstance(dataset_or_length, bool):
            length = int(dataset_or_length)
        elif hasattr(dataset_or_length, "__len__"):
            length = len(dataset_or_length)
        else:
            raise TypeError("DistributedSampler takes a dataset (with len()) or its length, got "
                            f"{type(dataset_or_length).__name__}")
        self.dataset_length = _check_int("the dataset length", length, 0)
        self.num_replicas = _check_int("num_replicas", dist.world_size_or_one() if num_replicas is None
                                       else num_replicas, 1)
        self.rank = _check_int("rank", dist.rank_or_zero() if rank is None else rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in 0..{self.num_replicas - 1} for "
                             f"num_replicas={self.num_replicas}, got {self.rank}")
        self.seed = _check_int("seed", seed, 0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.dataset_length // self.num_replicas
        else:
            self.num_samples = math.ceil(self.dataset_length / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of ``epoch`` (the same on every rank for the same seed and epoch)."""
        self.epoch = _check_int("epoch", epoch, 0)

    def indices(self) -> np.ndarray:
        """This rank's indices for the current epoch, an int64 array of length ``num_samples``."""
        n = self.dataset_length
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n and n > 0:  # pad with the permutation's own start, repeated if need be
            order = np.concatenate([order, np.resize(order, self.total_size - n)])
        order = order[:self.total_size]
        return order[self.rank::self.num_replicas].astype(np.int64, copy=False)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"DistributedSampler({self.dataset_length} samples, rank {self.rank} of {self.num_replicas}, "
                f"{self.num_samples} each, shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")
