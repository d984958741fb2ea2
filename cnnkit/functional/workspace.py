"""Reusable work buffers, so that a training step does not allocate (and page-fault) its big
temporaries afresh every time.

A fresh 75 MB NumPy array costs about as much in first-touch page faults as the copy that fills
it (measured: the im2col copy of a ResNet-20 layer took 58 ms into a new array, 22 ms into a
reused one). Two kinds of reuse:

* ``scratch(name, shape, dtype)``: a per-thread pool of *transient* buffers, shared by every
  layer whose temporary has that name (e.g. the columns of every conv of a ResNet-20, views of one
  arena as large as the largest). Valid only until the next call with the same name: never cache
  it.
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


class _ScratchPool:
    """One thread's transient buffers.

    Buffers made with ``zero=True`` are kept per key (their zeros are part of the contract).
    Every other name owns one byte *arena*, grown to the largest request seen: the columns of a
    ResNet's 16-, 32- and 64-channel stages all live in the same memory instead of three
    buffers, so the pool costs the largest layer's temporaries, not the sum over shapes.
    """

    def __init__(self):
        self.zeroed = Workspace()
        self.arenas = {}  # (name, array module) -> [arena, {(shape, dtype): view}]

    def get(self, name, shape, dtype, xp, zero, extra):
        import numpy as np

        xp = xp or np
        shape = tuple(int(s) for s in shape)
        if zero:
            return self.zeroed.get((name, shape, str(dtype), tuple(extra)), shape, dtype, xp, True, tuple(extra))
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        entry = self.arenas.get((name, xp.__name__))
        if entry is None or entry[0].nbytes < nbytes:
            # Drop the old arena first, so that growing does not hold both at once.
            self.arenas.pop((name, xp.__name__), None)
            entry = self.arenas[(name, xp.__name__)] = [xp.empty(nbytes, dtype=xp.uint8), {}]
        arena, views = entry
        key = (shape, dtype.str)
        view = views.get(key)
        if view is None:
            view = views[key] = arena[:nbytes].view(dtype).reshape(shape)
        return view

    def clear(self):
        self.zeroed.clear()
        self.arenas.clear()

    @property
    def nbytes(self) -> int:
        return self.zeroed.nbytes + sum(arena.nbytes for arena, _ in self.arenas.values())


def _pool() -> _ScratchPool:
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = _ScratchPool()
    return pool


def scratch(name: str, shape, dtype, xp=None, zero=False, extra=()):
    """A transient buffer, valid until the next ``scratch`` call with the same ``name``.

    Without ``zero``, every shape and dtype of one name share the same memory (views of one
    arena). With ``zero=True`` the buffer is zeroed once and kept per name, shape, dtype and
    ``extra`` (what its untouched zeros assume, e.g. a geometry).
    """
    return _pool().get(name, shape, dtype, xp, zero, extra)


def scratch_nbytes() -> int:
    """Bytes held by this thread's transient buffers."""
    return _pool().nbytes


def clear_scratch() -> None:
    """Free the transient buffers of this thread (they are rebuilt on demand)."""
    _pool().clear()
