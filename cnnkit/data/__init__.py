"""Datasets, the DataLoader and batched transforms.

``load(name, split)`` returns a ``Dataset`` (``images`` uint8 ``N x C x H x W``, ``labels``
int64, ``classes``) for ``digits`` (bundled with scikit-learn), ``mnist``, ``fashion-mnist`` and
``cifar10``. Files are looked for in ``<root>/<dataset>/``, where the root is the ``root``
argument, else ``$CNNKIT_DATA``, else ``~/.cache/cnnkit``; a missing file is downloaded from the
official location, its MD5 checked, and only then moved into place. Offline, the error says
which file to put where.
"""
from __future__ import annotations

from . import transforms
from .cifar import load_cifar10
from .dataset import Dataset
from .digits import load_digits_dataset
from .download import DatasetFormatError, DatasetNotFoundError, data_root
from .folder import ImageFolder
from .idx import load_idx_dataset
from .loader import DataLoader
from .sampler import DistributedSampler
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

SPLITS = ("train", "test")

# name -> loader(split, root, download, verify); a registry rather than an if/elif chain.
_LOADERS = {
    "digits": lambda split, root, download, verify: load_digits_dataset(split),
    "mnist": lambda split, root, download, verify: load_idx_dataset("mnist", split, root, download, verify),
    "fashion-mnist": lambda split, root, download, verify: load_idx_dataset("fashion-mnist", split, root, download, verify),
    "cifar10": lambda split, root, download, verify: load_cifar10(split, root, download, verify),
}


def list_datasets() -> list[str]:
    """The names ``load`` accepts."""
    return sorted(_LOADERS)


def load(name: str, split: str = "train", root=None, download: bool = True, verify: bool = False) -> Dataset:
    """Load one split of a standard dataset as a ``Dataset``.

    Args:
        name: ``"digits"``, ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
        split: ``"train"`` or ``"test"`` (``digits`` has cnnkit's fixed 80/20 split, see ``digits.py``).
        root: the data folder; default ``$CNNKIT_DATA``, else ``~/.cache/cnnkit``.
        download: fetch missing files from the official site (``False``: raise
            ``DatasetNotFoundError`` saying where to put them, without using the network).
        verify: also check the MD5 of files already on disk (downloads are always checked).
    """
    key = name.lower().replace("_", "-") if isinstance(name, str) else name
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for {key}; use one of {SPLITS}")
    return _LOADERS[key](split, root, download, verify)


__all__ = [
    "load", "list_datasets", "Dataset", "ImageFolder", "DataLoader", "DistributedSampler", "transforms", "Compose", "Normalize",
    "RandomCrop", "RandomHorizontalFlip", "DatasetNotFoundError", "DatasetFormatError", "data_root",
]
