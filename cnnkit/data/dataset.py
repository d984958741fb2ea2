"""``Dataset``: images and labels held as two NumPy arrays, the form every loader returns."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class Dataset:
    """A labelled image set held in memory.

    Attributes:
        images: ``uint8`` array of shape ``(N, C, H, W)`` (raw pixel values 0..255).
        labels: ``int64`` array of shape ``(N,)`` with values in ``0 .. len(classes) - 1``.
        classes: the class names, ``classes[label]`` is the name of ``label``.
        name: the dataset's name (``"mnist"``, ``"cifar10"``, a folder name, ...).
        split: ``"train"``, ``"test"`` or ``None`` when the data has no split.
        source: the folder or file the data was read from (``None`` for built-in data).

    ``dataset[i]`` is the pair ``(image, label)`` of one sample (``image`` is ``C x H x W``
    uint8, ``label`` an ``int``); ``dataset.subset(indices)`` is a smaller ``Dataset``.
    """

    def __init__(self, images, labels, classes, name: str, split: str | None = None, source=None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"Dataset images must be a uint8 array (N, C, H, W), got {images.dtype} with shape {images.shape}"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"Dataset labels must be a 1-D array with one label per image: got shape {labels.shape} "
                f"for {len(images)} images"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Dataset labels must be integers, got dtype {labels.dtype}")
        classes = [str(c) for c in classes]
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(
                f"Dataset labels must lie in 0..{len(classes) - 1} (one per class), "
                f"got values {labels.min()}..{labels.max()}"
            )
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.classes = classes
        self.name = name
        self.split = split
        self.source = Path(source) if source is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(
                f"Dataset index must be an integer, got {type(index).__name__}; "
                "use dataset.subset(indices) for several samples"
            )
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple:
        """The shape of one image, ``(C, H, W)`` (what ``model.output_shape`` takes)."""
        return tuple(self.images.shape[1:])

    def subset(self, indices) -> "Dataset":
        """A new ``Dataset`` with the samples at ``indices`` (a slice, integer or boolean array)."""
        if isinstance(indices, slice):
            return Dataset(self.images[indices], self.labels[indices], self.classes, self.name, self.split, self.source)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if indices.shape != (len(self),):
                raise ValueError(f"boolean mask must have shape ({len(self)},), got {indices.shape}")
        elif not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"subset indices must be integers, a boolean mask or a slice, got dtype {indices.dtype}")
        return Dataset(self.images[indices], self.labels[indices], self.classes, self.name, self.split, self.source)

    def __repr__(self) -> str:
        c, h, w = self.image_shape if len(self.images.shape) == 4 else (0, 0, 0)
        split = f", split={self.split!r}" if self.split is not None else ""
        return f"Dataset({self.name!r}{split}, {len(self)} images {c}x{h}x{w}, {self.num_classes} classes)"
