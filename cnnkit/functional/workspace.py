"""Reusable work buffers, so that a training step does not allocate (and page-fault) its big
temporaries afresh every time.

A fresh 75 MB NumPy array costs about as much in first-touch page faults as the copy that fills
it (measured: the im2col copy of a ResNet-20 layer took 58 ms into a new array, 22 ms into a
reused one). Two kinds of reuse:

* ``scratch(name, shape, dtype)``: a per-thread pool of *transient* buffers, shared by every
  layer whose temporary has that name and shape (e.g. the columns of all 16-channel 32x32 convs of
  a ResNet-20). Valid only until the next call with the same key: never cache it.
* a ``Workspace`` owned by one layer, for buffers that live from forward to backward.

Buffers created with ``zero=True`` are zeroed once; kernels that write only the same positions
of a buffer every time (the interior of a padded image, the valid corner of a grid) rely on the
untouched positions staying zero.
"""
from __future__ import annotations

import threading

from ..backend import array_module

_local = threading.local()


class Workspace:
    """Buffers by key; ``get`` returns the same array for the same key, shape and dtype."""

    def __init__(self):
        self._buffers = {}

    def get(self, key, shape, dtype, xp=None, zero=False, tag=None):
        """The buffer for ``key``; a new one when the shape, dtype, array module or ``tag`` changed.

        ``tag`` names what the buffer's untouched positions assume (e.g. a geometry): a buffer
        made with ``zero=True`` for one tag is never handed out for another.
        """
        import numpy as np

        xp = xp or np
        shape = tuple(int(s) for s in shape)
        entry = self._buffers.get(key)
        if entry is not None:
            buffer, old_tag = entry
            if buffer.shape == shape and buffer.dtype == dtype and array_module(buffer) is xp and old_tag == tag:
                return buffer
        buffer = (xp.zeros if zero else xp.empty)(shape, dtype=dtype)
        self._buffers[key] = (buffer, tag)
        return buffer

    def clear(self) -> None:
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b, _ in self._buffers.values())


def _pool() -> Workspace:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = Workspace()
    return pool


def scratch(name: str, shape, dtype, xp=None, zero=False, extra=()):
    """A transient buffer shared by every caller with the same name, shape, dtype and ``extra``."""
    return _pool().get((name, tuple(shape), str(dtype), tuple(extra)), shape, dtype, xp, zero, tuple(extra))


def clear_scratch() -> None:
    """Free the transient buffers of this thread (they are rebuilt on demand)."""
    _pool().clear()
