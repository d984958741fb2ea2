"""Run independent pieces of array work on several threads, so both cores copy and add.

BLAS already spreads a GEMM over the cores, but NumPy's copies and ufuncs run on one thread. They
do release the GIL while they work, so a thread pool lets the data-movement phases of a kernel
(im2col copies, col2im adds, layout transposes) run on every core: the work is cut into disjoint
chunks (channels, kernel taps) that never write the same memory.

``CNNKIT_NUM_THREADS`` sets the number of threads (default: the CPU count, or what
:func:`set_num_threads` set: ``cores / ranks`` per MPI rank); 1 runs everything inline. Small jobs
always run inline (a thread hand-off costs tens of microseconds).
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_PARALLEL_BYTES = 1 << 20  # below this much data per call, threads cost more than they save

_pool = None
_pool_lock = threading.Lock()
_in_worker = threading.local()
_default_threads = None  # set_num_threads(); None: the CPU count


def set_num_threads(threads: int | None) -> None:
    """The thread count used when ``CNNKIT_NUM_THREADS`` is unset (None: the CPU count again).

    ``cnnkit.distributed.init_process_group`` sets ``cores / ranks on this machine`` here, so that
    MPI ranks sharing a machine do not each spread over every core.
    """
    global _default_threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"set_num_threads: threads must be a positive int or None, got {threads!r}")
    _default_threads = threads


def num_threads() -> int:
    """Threads used for data movement (``CNNKIT_NUM_THREADS``, else :func:`set_num_threads`'s, else the CPU count)."""
    value = os.environ.get("CNNKIT_NUM_THREADS")
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"CNNKIT_NUM_THREADS must be a positive integer, got {value!r}") from None
    return _default_threads or max(1, os.cpu_count() or 1)


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cnnkit")
        return _pool


def split(length: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``range(length)`` into at most ``parts`` even pieces."""
    parts = max(1, min(parts, length))
    bounds = [length * k // parts for k in range(parts + 1)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def parallel_chunks(work, length: int, nbytes: int = MIN_PARALLEL_BYTES, xp=None) -> None:
    """Call ``work(start, stop)`` over chunks of ``range(length)``, one chunk per thread.

    ``nbytes`` (the data the whole job touches) decides whether threads pay; CuPy arrays
    (``xp`` not NumPy) always run inline, their work is already asynchronous on the device.
    """
    threads = num_threads()
    inline = (threads == 1 or length < 2 or nbytes < MIN_PARALLEL_BYTES or getattr(_in_worker, "active", False)
              or (xp is not None and xp.__name__ != "numpy"))
    if inline:
        work(0, length)
        return

    def run(bounds):
        _in_worker.active = True
        try:
            work(*bounds)
        finally:
            _in_worker.active = False

    chunks = split(length, threads)
    futures = [_executor(threads).submit(run, c) for c in chunks[1:]]
    run(chunks[0])  # the calling thread takes the first chunk
    for f in futures:
        f.result()


_blas_controller = None


def single_threaded_blas():
    """A context in which BLAS runs on one thread (``threadpoolctl``; a no-op without it).

    For kernels that cut a GEMM into cache-sized pieces and spread the pieces over
    :func:`parallel_chunks` themselves: a multi-threaded BLAS would split every small piece
    again, and its threads' hand-offs cost more than the piece (measured: 8 ms per 16x144x2048
    product on a busy 2-core machine, against 0.1 ms on one thread).
    """
    global _blas_controller
    import contextlib

    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - threadpoolctl is optional
        return contextlib.nullcontext()
    if _blas_controller is None:
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


# Below this many multiply-adds a product runs in one piece (still on one BLAS thread): a
# thread hand-off costs tens of microseconds, ~1 MFLOP of GEMM.
MIN_SPLIT_MACS = 1 << 24
# Below this many, OpenBLAS itself runs one thread (its multithreading threshold), so the call
# goes straight to NumPy without switching the BLAS thread count (~25 microseconds).
BLAS_SINGLE_THREAD_MACS = 1 << 18


def threaded_matmul(a, b, out=None):
    """``a @ b`` (NumPy ``matmul`` semantics, both operands at least 2-D) with BLAS on one thread,
    cut into pieces over :func:`parallel_chunks` when it is large; into ``out`` if given.

    Why not let OpenBLAS thread it: after a multi-threaded call its worker threads busy-wait for
    new work for a while, on the very cores this module's threads then need for the copies and
    element-wise passes around the GEMMs (measured: a BatchNorm forward + backward took 14 ms
    right after a 2-thread GEMM, 7 ms after a 1-thread one). So every GEMM of a training step
    runs on one BLAS thread per core, split here: over the leading batch axis of the result, or
    its rows, or, when there are few rows, its columns.

    Shape:
        a: (..., M, K), b: (..., K, N) -> (broadcast batch..., M, N)
    """
    from ..backend import array_module

    xp = array_module(a)
    (m, k), n = a.shape[-2:], b.shape[-1]
    batch = a.shape[:-2] if b.ndim == 2 else tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    total = math.prod(batch) * m * n * k
    if xp is not np or total < BLAS_SINGLE_THREAD_MACS:
        return xp.matmul(a, b, out=out)
    threads = num_threads()
    if total < MIN_SPLIT_MACS or threads == 1:
        with single_threaded_blas():
            return xp.matmul(a, b, out=out)
    if out is None:  # else a C-contiguous array of the result's shape and dtype
        out = xp.empty(batch + (m, n), dtype=xp.result_type(a, b))
    with single_threaded_blas():
        if batch and batch[0] >= threads:
            def part(i0, i1):  # operands broadcast along this axis are taken whole
                xp.matmul(_leading(a, len(batch) + 2, i0, i1), _leading(b, len(batch) + 2, i0, i1), out=out[i0:i1])
            parallel_chunks(part, batch[0], MIN_PARALLEL_BYTES)
        elif m >= 8 * threads or m >= n:
            def part(i0, i1):
                xp.matmul(a[..., i0:i1, :], b, out=out[..., i0:i1, :])
            parallel_chunks(part, m, MIN_PARALLEL_BYTES)
        else:
            def part(i0, i1):  # BLAS cannot write a column block of `out`: through a temporary
                out[..., i0:i1] = xp.matmul(a, b[..., i0:i1])
            parallel_chunks(part, n, MIN_PARALLEL_BYTES)
    return out


def _leading(x, ndim: int, i0: int, i1: int):
    """``x[i0:i1]`` along the leading batch axis of an ``ndim``-D result, unless ``x`` is broadcast there."""
    if x.ndim < ndim or x.shape[0] == 1:
        return x
    return x[i0:i1]
