"""Marks for the phases of a kernel (``"im2col"``, ``"gemm"``, ``"col2im"``), read by ``cnnkit.profile``.

A kernel writes ``with section("im2col"): ...``. Outside a profile run that costs one global
lookup (a shared no-op context manager comes back), so the marks stay in the fast path.
``cnnkit.profile`` installs a recorder with :func:`recording` for the length of its run. This
module sits below the kernels so that they need not import the profiler above them.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

_active = None  # the recorder of the profile run in progress: an object with add(name, seconds)


class _NullSection:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _NullSection()


@contextmanager
def _timed_section(recorder, name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        recorder.add(name, time.perf_counter() - start)


def section(name: str):
    """Context manager marking a phase of a kernel; free outside a profile run."""
    recorder = _active
    if recorder is None:
        return _NULL
    return _timed_section(recorder, name)


def enabled() -> bool:
    """Whether a profile run is recording sections (kernels may skip costly bookkeeping if not)."""
    return _active is not None


@contextmanager
def recording(recorder):
    """Send every ``section`` to ``recorder.add(name, seconds)`` within the block."""
    global _active
    previous, _active = _active, recorder
    try:
        yield recorder
    finally:
        _active = previous
