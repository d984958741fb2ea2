"""Batched augmentations: each transform maps a float NCHW batch to a new batch.

Every transform is called as ``transform(x, generator)`` with ``x`` a floating array
``(N, C, H, W)`` and ``generator`` an ``np.random.Generator`` (the DataLoader passes its own, so
one seed fixes shuffling and augmentation together). The input is never modified in place. The
work is vectorised over the batch: no Python loop over images.

A transform whose choice depends on *which* images it gets and in which epoch (``per_sample =
True``, e.g. ``AlternatingHorizontalFlip``) is called as ``transform(x, generator, indices=...,
epoch=...)``: ``indices`` the images' positions in the dataset ``(N,)``, ``epoch`` the loader's
pass over the data (0, 1, ...). ``Compose`` passes them on to such members.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..functional.shapes import check_positive, pair

# Per-channel mean and standard deviation of the training images scaled to [0, 1].
# CIFAR-10, MNIST and Fashion-MNIST: the values in common use (torchvision examples).
# digits: computed here from cnnkit's fixed training split (1,438 images, see digits.py) over all
# pixels; tests/test_data_transforms.py recomputes it.
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3058,), (0.3764,)),
}


def _check_batch(x, name: str) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        what = f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{name} expects a floating batch (N, C, H, W), got a {what}")


class Compose:
    """Apply ``transforms`` in order, passing each the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for t in self.transforms:
            if not callable(t):
                raise TypeError(f"Compose expects callables transform(x, generator), got {t!r}")

    @property
    def per_sample(self) -> bool:
        """Whether a member needs the images' dataset indices and the epoch."""
        return any(getattr(t, "per_sample", False) for t in self.transforms)

    def __call__(self, x, generator=None, **context):
        for t in self.transforms:
            x = t(x, generator, **context) if getattr(t, "per_sample", False) else t(x, generator)
        return x

    def __repr__(self):
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class Normalize:
    """``(x - mean[c]) / std[c]`` per channel; deterministic (the generator is not used).

    ``Normalize.for_dataset("cifar10")`` uses the standard constants of a dataset
    (``DATASET_STATS``).
    """

    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in np.atleast_1d(mean))
        self.std = tuple(float(s) for s in np.atleast_1d(std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalize needs one mean and one std per channel, got mean={self.mean}, std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalize std must be positive, got {self.std}")

    @classmethod
    def for_dataset(cls, name: str) -> "Normalize":
        if name not in DATASET_STATS:
            raise ValueError(f"no standard statistics for dataset {name!r}; known: {sorted(DATASET_STATS)}")
        return cls(*DATASET_STATS[name])

    def __call__(self, x, generator=None):
        _check_batch(x, "Normalize")
        if x.shape[1] != len(self.mean):
            raise ValueError(f"Normalize has {len(self.mean)} channel statistics but the batch has {x.shape[1]} channels")
        shape = (1, -1, 1, 1)
        mean = np.asarray(self.mean, dtype=x.dtype).reshape(shape)
        scale = (1 / np.asarray(self.std, dtype=np.float64)).astype(x.dtype).reshape(shape)
        y = x - mean
        y *= scale  # in place: one temporary instead of two
        return y

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


class RandomCrop:
    """Zero-pad each side by ``padding``, then crop a random ``size`` window from each image.

    The offsets are drawn as ``top = generator.integers(0, H + 2p - h + 1, size=N)`` then
    ``left = generator.integers(0, W + 2p - w + 1, size=N)``; image ``i`` becomes
    ``padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w]``. One gather through a view of all
    windows (``sliding_window_view``) does every image at once.

    Shape: ``(N, C, H, W) -> (N, C, h, w)`` with ``(h, w) = pair(size)``.
    """

    def __init__(self, size, padding: int = 0):
        self.size = pair(size, "size", "RandomCrop")
        check_positive(self.size, "size", "RandomCrop")
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"RandomCrop padding must be a non-negative integer, got {padding!r}")
        self.padding = int(padding)

    def __call__(self, x, generator):
        _check_batch(x, "RandomCrop")
        n, _, height, width = x.shape
        h, w = self.size
        p = self.padding
        if h > height + 2 * p or w > width + 2 * p:
            raise ValueError(
                f"RandomCrop size {self.size} is larger than the padded image {(height + 2 * p, width + 2 * p)} "
                f"(input {(height, width)}, padding {p})"
            )
        if p:
            # zeros + one slice assignment: several times faster than np.pad for this case
            padded = np.zeros((n, x.shape[1], height + 2 * p, width + 2 * p), dtype=x.dtype)
            padded[:, :, p:p + height, p:p + width] = x
            x = padded
        top = generator.integers(0, x.shape[2] - h + 1, size=n)
        left = generator.integers(0, x.shape[3] - w + 1, size=n)
        windows = sliding_window_view(x, (h, w), axis=(2, 3))  # (N, C, H', W', h, w), no copy
        # Advanced indices separated by a slice move to the front: the result is (N, C, h, w).
        return windows[np.arange(n), :, top, left]

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (decided by ``generator.random(N) < p``)."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomHorizontalFlip p must lie in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x, generator):
        _check_batch(x, "RandomHorizontalFlip")
        flip = np.flatnonzero(generator.random(x.shape[0]) < self.p)
        y = x.copy()
        y[flip] = x[flip, :, :, ::-1]  # (faster than np.where over the reversed view)
        return y

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


def _mix64(values):
    """SplitMix64's finaliser over uint64 ``values``: well-spread pseudo-random bits from consecutive
    integers (NumPy's uint64 arithmetic wraps, as the algorithm wants)."""
    z = values.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class AlternatingHorizontalFlip:
    """Mirror each image in every other epoch (airbench's "alternating flip", Jordan 2024).

    Image ``i`` of the dataset is mirrored in epoch ``e`` when ``first(i) XOR (e is odd)``, where
    ``first(i)`` is a fixed pseudo-random bit per image (from ``seed``, half the images). Each image
    is thus seen both ways in every two consecutive epochs, instead of the same way several epochs
    running as happens with independent coin flips; random flips waste some epochs of a short run
    on repeated views. Deterministic: it ignores the generator and needs the dataset ``indices`` and
    the ``epoch`` (``per_sample``; the DataLoader passes them).
    """

    per_sample = True

    def __init__(self, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"AlternatingHorizontalFlip seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def __call__(self, x, generator=None, *, indices=None, epoch=None):
        _check_batch(x, "AlternatingHorizontalFlip")
        if indices is None or epoch is None:
            raise ValueError("AlternatingHorizontalFlip needs each image's dataset index and the epoch: use it in a "
                             "DataLoader (which passes them) or call it with indices=..., epoch=...")
        indices = np.asarray(indices)
        if indices.shape != (x.shape[0],):
            raise ValueError(f"AlternatingHorizontalFlip: {x.shape[0]} images but indices of shape {indices.shape}")
        offset = np.uint64(self.seed * 0x9E3779B97F4A7C15 % 2 ** 64)  # a different bit pattern per seed
        mixed = _mix64(indices.astype(np.uint64) + offset)
        first = (mixed & np.uint64(1)).astype(bool)
        flip = np.flatnonzero(first ^ bool(int(epoch) % 2))
        y = x.copy()
        y[flip] = x[flip, :, :, ::-1]
        return y

    def __repr__(self):
        return f"AlternatingHorizontalFlip(seed={self.seed})"
