"""``DataLoader``: mini-batches ``(x, y)`` from a ``Dataset``, shuffled by an explicit generator."""
from __future__ import annotations

import math

import numpy as np


class DataLoader:
    """Iterate over ``dataset`` in mini-batches.

    Each batch is ``(x, y)``: ``x`` the images as floats ``(B, C, H, W)`` scaled to [0, 1]
    (``dtype``, float32 by default) and then passed through ``transform(x, generator)``; ``y`` the
    labels, ``int64`` ``(B,)``. ``len(loader)`` is the number of batches per epoch.

    Randomness comes only from ``loader.generator``, an ``np.random.Generator`` made from ``seed``
    (or passed as ``generator=``): every epoch draws a fresh permutation (when ``shuffle``) and the
    transform's random numbers from it, so the same seed gives the same batches, epoch after epoch.
    ``state_dict()`` / ``load_state_dict()`` save and restore that generator, so a training run
    resumed from a checkpoint taken between epochs sees the same data as an uninterrupted one.

    ``dataset`` is a ``Dataset`` or anything with ``images`` (uint8 ``N x C x H x W``) and
    ``labels`` arrays.

    ``sampler`` (e.g. a ``DistributedSampler``: this rank's shard) decides which samples an epoch
    visits and in which order, instead of ``shuffle``.

    ``epoch`` counts the passes: each ``iter()`` takes the current value and adds one;
    ``set_epoch(e)`` says which epoch the next pass is (the trainer does, so a resumed run counts
    on). A transform that depends on the epoch and on which images it gets (``per_sample``, e.g.
    ``AlternatingHorizontalFlip``) receives ``indices`` (the images' dataset positions) and ``epoch``.
    """

    def __init__(self, dataset, batch_size: int = 128, shuffle: bool = False, drop_last: bool = False,
                 transform=None, seed=None, *, generator: np.random.Generator | None = None, dtype=np.float32,
                 sampler=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader batch_size must be a positive integer, got {batch_size!r}")
        if not (hasattr(dataset, "images") and hasattr(dataset, "labels")):
            raise TypeError(f"DataLoader expects a dataset with images and labels, got {type(dataset).__name__}")
        if len(dataset.images) != len(dataset.labels):
            raise ValueError(
                f"DataLoader: the dataset has {len(dataset.images)} images but {len(dataset.labels)} labels"
            )
        if transform is not None and not callable(transform):
            raise TypeError(f"DataLoader transform must be callable as transform(x, generator), got {transform!r}")
        if generator is not None and seed is not None:
            raise ValueError("DataLoader takes seed= or generator=, not both")
        if not np.issubdtype(np.dtype(dtype), np.floating):
            raise ValueError(f"DataLoader dtype must be a floating type, got {dtype!r}")
        if sampler is not None:
            if shuffle:
                raise ValueError("DataLoader: sampler= and shuffle=True exclude each other; the sampler "
                                 "decides the order (e.g. DistributedSampler(..., shuffle=True))")
            if not (hasattr(sampler, "__iter__") and hasattr(sampler, "__len__")):
                raise TypeError(f"DataLoader sampler must be iterable with a len(), got {type(sampler).__name__}")
            expected = getattr(sampler, "dataset_length", len(dataset.images))
            if expected != len(dataset.images):
                raise ValueError(f"DataLoader: the sampler was made for {expected} samples but the dataset "
                                 f"has {len(dataset.images)}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.transform = transform
        self.dtype = np.dtype(dtype)
        self.generator = generator if generator is not None else np.random.default_rng(seed)
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch (0, 1, ...) of the next pass over the data."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset.images) if self.sampler is None else len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        images, labels = self.dataset.images, np.asarray(self.dataset.labels)
        if self.sampler is not None:
            order = np.fromiter(self.sampler, dtype=np.int64)
            n = len(order)
            if n and (order.min() < 0 or order.max() >= len(images)):
                raise ValueError(f"DataLoader: the sampler gave indices {order.min()}..{order.max()} for a dataset "
                                 f"of {len(images)} samples")
        else:
            n = len(images)
            order = self.generator.permutation(n) if self.shuffle else None
        stop = (n // self.batch_size) * self.batch_size if self.drop_last else n
        scale = self.dtype.type(1 / 255)
        epoch, self.epoch = self.epoch, self.epoch + 1
        per_sample = getattr(self.transform, "per_sample", False)
        for start in range(0, stop, self.batch_size):
            index = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            x = images[index].astype(self.dtype)
            x *= scale
            y = labels[index].astype(np.int64, copy=False)
            if per_sample:
                indices = np.arange(start, min(start + self.batch_size, stop)) if order is None else index
                x = self.transform(x, self.generator, indices=indices, epoch=epoch)
            elif self.transform is not None:
                x = self.transform(x, self.generator)
            yield x, y

    def state_dict(self) -> dict:
        """The generator's state and the next epoch (a plain dict), to store in a checkpoint."""
        return {"generator": self.generator.bit_generator.state, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` saved (a state without ``epoch`` keeps the current one)."""
        self.generator.bit_generator.state = state["generator"]
        self.epoch = int(state.get("epoch", self.epoch))

    def __repr__(self) -> str:
        return (f"DataLoader({getattr(self.dataset, 'name', type(self.dataset).__name__)!r}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, drop_last={self.drop_last}, "
                f"batches={len(self)})")
