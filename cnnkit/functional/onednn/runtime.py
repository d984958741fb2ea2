"""Engine, streams, threads, memory descriptors and cached primitives: what every op module uses.

* One CPU engine per process; one stream per calling thread (CPU streams run primitives
  synchronously: when ``execute`` returns, the outputs are written).
* NumPy arrays are described to oneDNN as they are, with their own strides
  (:func:`describe`): an ``(N, C, H, W)`` array in NCHW or in channels-last memory needs no copy.
* :class:`Primitive` wraps one created primitive with a memory object per argument; running
  it only points those objects at the arrays of this call (``set_data_handle``) and executes.
  The arrays must stay alive until it returns, which they do: the caller holds them.
* Scratchpads are *user-managed* (``dnnl_scratchpad_mode_user``): oneDNN's own scratchpad
  crashed when a primitive ran on another thread than its creator, and a NumPy scratchpad is
  memory ``tracemalloc`` and ``cnnkit.summary`` can see. It comes from cnnkit's shared scratch
  arena (``functional.workspace.scratch``), sized by the largest primitive.
* :func:`cached` keeps built primitives per call signature (shapes, strides, geometry). A miss
  costs a JIT compile (0.3-3 ms): :func:`stats` counts them and a profile run shows the time
  as the section ``"onednn compile"``.
* Threads: oneDNN runs on OpenMP threads, as many as ``CNNKIT_NUM_THREADS`` (set per calling
  thread, OpenMP's thread count being a per-thread setting) or OpenMP's default otherwise; small
  calls and batch norm on one (:func:`small_calls_on_one_thread`, :func:`one_thread`); idle
  workers wait passively (``library._prepare_openmp``).
* Memory: glibc is asked to keep freed blocks for the next step (:func:`keep_freed_memory`).
"""
from __future__ import annotations

import ctypes
import threading
import time
from contextlib import contextmanager, nullcontext

import numpy as np

from ..instrument import section
from ..parallel import num_threads
from ..workspace import scratch
from . import library as L
from .library import OnednnError, lib

_engine = None
_engine_lock = threading.Lock()
_local = threading.local()
_cache: dict = {}
_cache_lock = threading.RLock()
_stats = {"primitives": 0, "compile_seconds": 0.0, "executions": 0}
_executions_by_kind: dict = {}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of returning them to the system.

    A training step frees its activations and allocates the same sizes again in the next one. By
    default glibc gives large freed blocks back to the kernel (munmap, or trimming the heap), and
    the next step page-faults every page in again; with oneDNN's kernels that first touch became a
    third of a LeNet-5 step (14.8 -> 10.9 ms with this setting; its ReLU forward 1.33 -> 0.35 ms,
    pooling backward 1.80 -> 0.63 ms on 3 MB of activations). Kept memory is reused by the next
    step, so the peak does not grow; it is not handed back until the process ends. Done once,
    when oneDNN is first used; ``CNNKIT_KEEP_FREED_MEMORY=0`` opts out. Returns whether it applied.
    """
    import os
    import sys

    if os.environ.get("CNNKIT_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        return bool(libc.mallopt(m_mmap_threshold, 1 << 29) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # another C library (musl): leave it alone
        return False


def engine():
    """The process's CPU engine (created on first use)."""
    global _engine
    if _engine is None:
        with _engine_lock:
            if _engine is None:
                keep_freed_memory()
                e = L.handle()
                lib().call("dnnl_engine_create", ctypes.byref(e), L.ENGINE_CPU, 0)
                _engine = e
    return _engine


def stream():
    """This thread's stream (and, once per thread, its OpenMP thread count)."""
    s = getattr(_local, "stream", None)
    if s is None:
        _set_openmp_threads()
        s = L.handle()
        lib().call("dnnl_stream_create", ctypes.byref(s), engine(), L.STREAM_DEFAULT)
        _local.stream = s
    return s


def _set_openmp_threads() -> None:
    import os

    if not os.environ.get("CNNKIT_NUM_THREADS"):
        return  # OpenMP's own default: OMP_NUM_THREADS, else every core
    gomp = _openmp()
    if gomp is not None:
        gomp.omp_set_num_threads(ctypes.c_int(num_threads()))


_gomp = None


def _openmp():
    """libgomp (the copy libdnnl loaded), or None under another OpenMP runtime."""
    global _gomp
    if _gomp is None:
        try:
            _gomp = ctypes.CDLL("libgomp.so.1")
            _gomp.omp_get_max_threads.restype = ctypes.c_int
        except OSError:  # pragma: no cover
            _gomp = False
    return _gomp or None


@contextmanager
def one_thread():
    """Within the block, oneDNN primitives built and run on this thread use one OpenMP thread.

    For small calls (:func:`small_calls_on_one_thread`) and for the primitives whose threads meet
    at spin barriers inside one call (batch normalisation's statistics): when another process
    holds one of the cores, the barrier waits for the descheduled thread's next time slice.
    Measured on the shared 2-core machine, a 128x16x32x32 batch norm forward took 0.5-0.9 ms on
    one thread and 24-84 ms on two. These passes are memory-bound, so one thread loses little when
    the machine is quiet (0.68 against 0.61 ms).
    """
    stream()  # this thread's OpenMP setting first (its first stream sets it)
    gomp = _openmp()
    if gomp is None:
        yield
        return
    previous = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        gomp.omp_set_num_threads(previous)


@contextmanager
def all_threads():
    """No change to the thread count (the counterpart of :func:`one_thread` in conditional code)."""
    yield


def small_calls_on_one_thread(size_of, threshold=None):
    """Decorate a kernel so that calls with ``size_of(*args, **kwargs) < threshold`` build and run
    their primitives on one OpenMP thread (default threshold: ``parallel.MIN_PARALLEL_BYTES``).

    cnnkit's rule for its own threads, applied to oneDNN's: below it a fork and join of the
    threads costs more than the work. Worse, a sleeping OpenMP worker must be woken and scheduled
    for every parallel region: on a busy machine that took milliseconds per region, and the
    digits job's 8x8 convolutions ran 5x slower on two threads than NumPy's single-threaded
    kernels. The decision depends on shapes only, so a shape's primitives are always built and
    run with the same thread count.
    """
    import functools

    from ..parallel import MIN_PARALLEL_BYTES

    limit = MIN_PARALLEL_BYTES if threshold is None else threshold

    def decorate(kernel):
        @functools.wraps(kernel)
        def run(*args, **kwargs):
            if size_of(*args, **kwargs) < limit:
                with one_thread():
                    return kernel(*args, **kwargs)
            return kernel(*args, **kwargs)
        return run
    return decorate


def openmp_threads() -> int | None:
    """The number of threads oneDNN's parallel regions use from this thread (None if unknown)."""
    stream()
    gomp = _openmp()
    return None if gomp is None else int(gomp.omp_get_max_threads())


# -- memory descriptors ---------------------------------------------------------------------------
def dims(values) -> L.Dims:
    d = L.Dims()
    for i, v in enumerate(values):
        d[i] = int(v)
    return d


class MemoryDesc:
    """An owned ``dnnl_memory_desc_t`` (destroyed with this object).

    Keep the object referenced while its ``handle`` is in use: ``f(MemoryDesc...(...).handle)``
    would hand ``f`` a descriptor already destroyed with the temporary object.
    """

    __slots__ = ("handle",)

    def __init__(self, h):
        self.handle = h

    @classmethod
    def from_strides(cls, shape, strides, dtype: int = L.F32) -> "MemoryDesc":
        h = L.handle()
        lib().call("dnnl_memory_desc_create_with_strides", ctypes.byref(h), len(shape), dims(shape), dtype,
                   dims(strides))
        return cls(h)

    @classmethod
    def from_tag(cls, shape, tag: int) -> "MemoryDesc":
        h = L.handle()
        lib().call("dnnl_memory_desc_create_with_tag", ctypes.byref(h), len(shape), dims(shape), L.F32, tag)
        return cls(h)

    def __del__(self):
        if self.handle and L is not None and lib is not None:
            try:
                lib().raw.dnnl_memory_desc_destroy(self.handle)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass
            self.handle = None


def element_strides(array) -> tuple:
    """``array.strides`` in elements (what oneDNN's descriptors take)."""
    itemsize = array.itemsize
    return tuple(s // itemsize for s in array.strides)


def describe(array, shape=None) -> MemoryDesc:
    """A float32 descriptor of ``array`` exactly as it lies in memory (no copy needed).

    ``shape`` re-reads the same memory with another logical shape (e.g. a conv weight
    ``(F, C, kh, kw)`` as grouped ``(G, F/G, C, kh, kw)``); the array must then be C-contiguous.
    """
    if shape is None:
        return MemoryDesc.from_strides(array.shape, element_strides(array))
    return MemoryDesc.from_strides(shape, _contiguous_strides(shape))


def _contiguous_strides(shape) -> tuple:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def layout_key(array) -> tuple:
    """What a cached primitive depends on in an array: its shape and strides."""
    return (array.shape, array.strides)


def md_size(md_handle) -> int:
    return int(lib().raw.dnnl_memory_desc_get_size(md_handle))


def md_equal(a, b) -> bool:
    return bool(lib().raw.dnnl_memory_desc_equal(a, b))


def aligned_bytes(nbytes: int, alignment: int = 64) -> np.ndarray:
    """A new uint8 NumPy buffer of ``nbytes`` whose data starts on an ``alignment`` boundary."""
    raw = np.empty(nbytes + alignment, dtype=np.uint8)
    offset = (-raw.ctypes.data) % alignment
    return raw[offset:offset + nbytes]


# -- primitives -----------------------------------------------------------------------------------
def _query_md(pd, what: int, index: int = 0):
    return lib().raw.dnnl_primitive_desc_query_md(pd, what, index)


class PrimitiveDesc:
    """An owned ``dnnl_primitive_desc_t``; :meth:`md` queries the descriptors it chose."""

    __slots__ = ("handle",)

    def __init__(self, h):
        self.handle = h

    def md(self, what: int, index: int = 0):
        """The memory descriptor for ``what`` (owned by this pd: never destroyed by the caller)."""
        return _query_md(self.handle, what, index)

    def size(self, what: int) -> int:
        md = self.md(what)
        return md_size(md) if md else 0

    def implementation(self) -> str:
        text = ctypes.c_char_p()
        lib().call("dnnl_primitive_desc_query", self.handle, L.QUERY_IMPL_INFO_STR, 0, ctypes.byref(text))
        return text.value.decode() if text.value else "?"

    def __del__(self):
        if self.handle and lib is not None:
            try:
                lib().raw.dnnl_primitive_desc_destroy(self.handle)
            except Exception:  # pragma: no cover
                pass
            self.handle = None


def create_pd(function: str, *args) -> PrimitiveDesc:
    """Call ``dnnl_<...>_primitive_desc_create(&pd, *args)`` and own the result."""
    h = L.handle()
    lib().call(function, ctypes.byref(h), *args)
    return PrimitiveDesc(h)


class Attributes:
    """Primitive attributes with a user-managed scratchpad and optional eltwise/sum post-ops."""

    def __init__(self, post_ops=()):
        L_ = lib()
        self.handle = L.handle()
        L_.call("dnnl_primitive_attr_create", ctypes.byref(self.handle))
        L_.call("dnnl_primitive_attr_set_scratchpad_mode", self.handle, L.SCRATCHPAD_USER)
        if post_ops:
            ops = L.handle()
            L_.call("dnnl_post_ops_create", ctypes.byref(ops))
            try:
                for op in post_ops:
                    if op == "relu":
                        L_.call("dnnl_post_ops_append_eltwise", ops, L.ELTWISE_RELU, 0.0, 0.0)
                    elif op == "sum":
                        L_.call("dnnl_post_ops_append_sum", ops, 1.0, 0, L.F32)
                    else:  # pragma: no cover - a programming error
                        raise ValueError(f"unknown post-op {op!r}")
                L_.call("dnnl_primitive_attr_set_post_ops", self.handle, ops)
            finally:
                L_.raw.dnnl_post_ops_destroy(ops)

    def __del__(self):
        if self.handle and lib is not None:
            try:
                lib().raw.dnnl_primitive_attr_destroy(self.handle)
            except Exception:  # pragma: no cover
                pass
            self.handle = None


class Primitive:
    """A created primitive, ready to run on arrays.

    ``args`` maps each ``DNNL_ARG_*`` index the primitive takes to the memory descriptor of that
    argument; a memory object is made for each (without a buffer) and pointed at the caller's
    array by :meth:`run`. The scratchpad is added here when the primitive needs one. ``kind``
    names it in :func:`stats` (e.g. ``"conv backward data"``); ``one_thread`` runs it on one
    OpenMP thread (it must have been built on one).
    """

    def __init__(self, pd: PrimitiveDesc, args: dict, kind: str, one_thread: bool = False):
        L_ = lib()
        self.pd = pd
        self.kind = kind
        self.one_thread = one_thread  # built on one OpenMP thread: run it on one too
        # For cnnkit.profile: reorders are data movement, every other primitive is compute.
        self.section = "reorder" if kind == "reorder" else "onednn"
        self.handle = L.handle()
        L_.call("dnnl_primitive_create", ctypes.byref(self.handle), pd.handle)
        self.scratchpad_bytes = pd.size(L.QUERY_SCRATCHPAD_MD)
        if self.scratchpad_bytes:
            args = {**args, L.ARG_SCRATCHPAD: pd.md(L.QUERY_SCRATCHPAD_MD)}
        self.indices = list(args)
        self.memories = []
        for md in args.values():
            m = L.handle()
            L_.call("dnnl_memory_create", ctypes.byref(m), md, engine(), None)
            self.memories.append(m)
        self.exec_args = (L.ExecArg * len(self.indices))(
            *[L.ExecArg(i, m) for i, m in zip(self.indices, self.memories)])
        self._slot = {index: m for index, m in zip(self.indices, self.memories)}
        self._lock = threading.Lock()

    def run(self, buffers: dict) -> None:
        """Execute with ``buffers`` (argument index -> NumPy array, or a raw address)."""
        L_ = lib()
        set_handle = L_.raw.dnnl_memory_set_data_handle
        if self.scratchpad_bytes:
            pad = scratch("onednn_scratchpad", (self.scratchpad_bytes + 64,), np.uint8)
            buffers = {**buffers, L.ARG_SCRATCHPAD: pad}
        with self._lock, (one_thread() if self.one_thread else _NO_CHANGE):
            for index, array in buffers.items():
                address = array if isinstance(array, int) else array.ctypes.data
                if index == L.ARG_SCRATCHPAD:
                    address += (-address) % 64
                status = set_handle(self._slot[index], address)
                if status != L.SUCCESS:
                    raise OnednnError("oneDNN dnnl_memory_set_data_handle failed: "
                                      f"{L.STATUS_NAMES.get(status, status)}")
            with section(self.section):
                start = time.perf_counter()
                status = L_.raw.dnnl_primitive_execute(self.handle, stream(), len(self.indices), self.exec_args)
                elapsed = time.perf_counter() - start
        _stats["executions"] += 1
        count, seconds = _executions_by_kind.get(self.kind, (0, 0.0))
        _executions_by_kind[self.kind] = (count + 1, seconds + elapsed)
        if status != L.SUCCESS:
            raise OnednnError(f"oneDNN primitive ({self.pd.implementation()}) failed to run: "
                              f"{L.STATUS_NAMES.get(status, status)}")

    def __del__(self):
        if lib is None:
            return
        try:
            raw = lib().raw
            for m in getattr(self, "memories", ()):
                raw.dnnl_memory_destroy(m)
            if getattr(self, "handle", None):
                raw.dnnl_primitive_destroy(self.handle)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def cached(key, build):
    """The object ``build()`` made for ``key`` (built once per process: a JIT compile).

    The key includes the OpenMP thread count in force: oneDNN sizes a primitive's work split for
    the threads it is built with, and a primitive built for two threads runs two.
    """
    gomp = _openmp()
    key = (key, gomp.omp_get_max_threads() if gomp is not None else 0)
    found = _cache.get(key)
    if found is not None:
        return found
    with _cache_lock:
        found = _cache.get(key)
        if found is None:
            start = time.perf_counter()
            with section("onednn compile"):
                found = build()
            _stats["primitives"] += 1
            _stats["compile_seconds"] += time.perf_counter() - start
            _cache[key] = found
    return found


def stats() -> dict:
    """Counters: ``primitives`` built (JIT compiles), their ``compile_seconds``, ``executions``
    (in all, and per kind of primitive in ``by_kind`` with ``seconds_by_kind``), and how many
    objects are ``cached``."""
    return dict(_stats, cached=len(_cache), by_kind={k: n for k, (n, _) in _executions_by_kind.items()},
                seconds_by_kind={k: t for k, (_, t) in _executions_by_kind.items()})


def clear_cache() -> None:
    """Drop every cached primitive (they are rebuilt, and recompiled, on next use)."""
    with _cache_lock:
        _cache.clear()


def reorder(src_md, dst_md) -> Primitive:
    """A reorder primitive from ``src_md`` to ``dst_md`` (both handles).

    Reorders of less than ``parallel.MIN_PARALLEL_BYTES`` (weights, mostly) are built and run on
    one thread (see :func:`small_calls_on_one_thread`).
    """
    from ..parallel import MIN_PARALLEL_BYTES

    small = md_size(dst_md) < MIN_PARALLEL_BYTES
    with one_thread() if small else _NO_CHANGE:
        attr = Attributes()  # kept referenced until the pd is made
        pd = create_pd("dnnl_reorder_primitive_desc_create", src_md, engine(), dst_md, engine(), attr.handle)
        return Primitive(pd, {L.ARG_FROM: src_md, L.ARG_TO: dst_md}, "reorder", one_thread=small)


_NO_CHANGE = nullcontext()  # reusable: a nullcontext keeps no state
