"""Array-module selection: NumPy by default, CuPy when the arrays live on a GPU.

Kernels call ``xp = array_module(x)`` and use ``xp`` instead of a hard-coded ``np``, so the
same code runs on CuPy arrays. CuPy is never imported unless it is already loaded by the user.
"""
from __future__ import annotations

import sys

import numpy as np

DEFAULT_DTYPE = np.float32


def array_module(*arrays):
    """Return ``cupy`` if any argument is a CuPy array, else ``numpy``."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def to_numpy(x):
    """Return ``x`` as a NumPy array (copies from the GPU when needed)."""
    if array_module(x) is np:
        return np.asarray(x)
    return x.get()
