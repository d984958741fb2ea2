"""What every oneDNN kernel's ``decline`` asks first, and the data checks some of them need.

Declines are asked with real arrays (a call about to run) or with
:class:`~cnnkit.functional.memory.ArraySpec` stand-ins (``cnnkit.summary`` planning a model):
shape and dtype are read from both; the values (NaN checks) only from real arrays.
"""
from __future__ import annotations

import numpy as np

from ..memory import ArraySpec
from .layout import is_channels_last


def unavailable() -> str | None:
    """Why the library cannot be used here (None when it can); loads it on the first call."""
    from .library import unavailable_reason

    return unavailable_reason()


def array_reason(name: str, a, ndims=None) -> str | None:
    """Why oneDNN cannot take ``a`` (None when it can): NumPy float32 of the right rank."""
    if a is None:
        return None
    if not isinstance(a, (np.ndarray, ArraySpec)):
        return f"{name} is a {type(a).__module__}.{type(a).__name__}, oneDNN reads NumPy arrays"
    if np.dtype(a.dtype) != np.float32:
        return f"{name} is {np.dtype(a.dtype)}, oneDNN runs float32 only"
    if ndims is not None and a.ndim not in ndims:
        return f"{name} must be {' or '.join(map(str, ndims))}-D, got {a.ndim}-D"
    return None


def first_reason(*reasons) -> str | None:
    for reason in reasons:
        if reason:
            return reason
    return None


def has_data(a) -> bool:
    """Whether ``a`` holds values (a real array), not just a shape."""
    return isinstance(a, np.ndarray)


def memory_flat(a):
    """A 1-D view of ``a``'s elements in memory order (C-ordered or channels-last), else ``a``."""
    if a.flags.c_contiguous:
        return a.reshape(-1)
    if a.ndim == 4 and is_channels_last(a):
        return a.transpose(0, 2, 3, 1).reshape(-1)
    return a


def _reduce(a, how):
    """``how`` (``np.minimum`` or ``np.maximum``) over all of ``a``'s memory; NaN propagates. One
    thread: splitting 8 MB over the thread pool measured 0.24 ms against 0.10 ms in one call."""
    return how.reduce(memory_flat(a), axis=None)


def holds_nan(a) -> bool:
    """Whether ``a`` holds a NaN: one NaN-propagating ``min`` over its memory."""
    low = _reduce(a, np.minimum)
    return bool(low != low)


def lowest(a) -> float:
    """``min(a)`` (NaN if ``a`` holds one), one pass over its memory."""
    return float(_reduce(a, np.minimum))


def all_finite(a) -> bool:
    """Whether every value of ``a`` is finite: its ``min`` and ``max`` are (NaN propagates through
    both, -inf shows in the one, +inf in the other). Two SIMD passes: 0.2 ms on 8 MB on one core,
    against 0.33 ms for one ``sum``."""
    return bool(np.isfinite(_reduce(a, np.minimum)) and np.isfinite(_reduce(a, np.maximum)))
