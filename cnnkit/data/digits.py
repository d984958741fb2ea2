"""``digits``: scikit-learn's bundled 8 x 8 handwritten digits (no download).

1,797 grayscale images with values 0..16, rescaled here to ``uint8`` 0..255 by
``round(v * 255 / 16)``, so that every dataset has the same pixel range.

The dataset has no official split, so cnnkit fixes one: for each class (in order 0..9), its
samples are permuted with ``np.random.RandomState(0)`` (whose stream NumPy keeps stable across
versions) and the first ``round(0.2 * n_class)`` go to ``test``. That gives 1,438 training and
359 test images, each class 80 / 20, the same on every machine. Both splits keep the original
order of the samples.
"""
from __future__ import annotations

import numpy as np

TEST_FRACTION = 0.2
SPLIT_SEED = 0
CLASSES = [str(d) for d in range(10)]


def split_indices(labels: np.ndarray, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED):
    """A stratified ``(train_indices, test_indices)`` split, both sorted, reproducible from ``seed``."""
    rs = np.random.RandomState(seed)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(np.floor(test_fraction * len(members) + 0.5))  # round half up, explicitly
        test.append(members[rs.permutation(len(members))[:n_test]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def load_digits_dataset(split: str):
    from sklearn.datasets import load_digits

    from .dataset import Dataset

    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    train, test = split_indices(labels)
    index = train if split == "train" else test
    return Dataset(images[index], labels[index], CLASSES, name="digits", split=split, source=None)
