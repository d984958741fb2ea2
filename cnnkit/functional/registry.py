"""Kernels behind one registry: each op's named implementations, and how one is chosen.

An *op* (``"conv2d"``, ``"max_pool2d"``, ``"batch_norm"``, ...) is an :class:`Op`; each of its
implementations is a :class:`Kernel` with a name (``"im2col"``, ``"flat"``, ``"onednn"``), the
backend it belongs to (``"numpy"`` or a compiled library, see :mod:`cnnkit.backend`) and a
priority. A kernel has the *same arguments and results* as the op's NumPy reference function:

* ``forward(*args, **kw) -> (y, cache)``, ``cache`` an instance of the kernel's own
  ``cache_type`` (a NamedTuple): that is how ``Op.backward`` finds the kernel again;
* ``backward(dy, cache, **flags)`` -> the reference's gradients (``need_dx=False`` and friends
  skip what is not asked for);
* ``decline(*args, **kw) -> None | str``: why this kernel *cannot* run this call (dtype,
  geometry, layout, library missing); ``None`` when it can. It reads only ``.shape``,
  ``.dtype`` and ``.ndim`` of its array arguments, so it can be asked with
  :class:`~cnnkit.functional.memory.ArraySpec` stand-ins before any data exists;
* ``defer(*args, **kw) -> None | str``: why ``auto`` should pass over it although it can run
  (a case where a lower-priority kernel was measured faster); an explicit choice still runs it;
* ``memory(*args, **kw) -> LayerMemory``: what it keeps and allocates, for ``cnnkit.summary``
  (asked with ArraySpecs).

Choosing (:meth:`Op.select`): a kernel name runs that kernel (or raises its decline reason);
``"auto"`` tries the kernels of the enabled backends (``CNNKIT_BACKEND``,
``cnnkit.backend.use_backend``) from the highest priority down and takes the first that
neither declines nor defers. The op's reference kernel accepts every call, so ``auto`` always
ends somewhere; if a faster kernel declines, the NumPy path runs. With
``set_benchmark(True)`` an op marked ``benchmark=True`` times every kernel that can run a new
shape once (forward + backward) and keeps the fastest, like cuDNN's benchmark mode.

Process-wide state kept here: the benchmark mode and its per-shape choices.

How to add a backend (a compiled library, or kernels for CuPy arrays)
--------------------------------------------------------------------
1. Write the kernels as plain functions with the reference's signatures, each with a
   NamedTuple cache type of its own, in a package of their own (``cnnkit/functional/<name>/``);
   load the library lazily, on first use, never at ``import cnnkit``.
2. Declare the backend with ``cnnkit.backend.register_backend(name, probe)``; ``probe()`` says
   why it cannot run here (``None`` when it can), and ``cnnkit info`` shows that reason.
3. ``OP.register(Kernel(...))`` for every op it implements, with a priority above the NumPy
   kernels, a ``decline`` that refuses whatever the library cannot do exactly (float64 for
   gradient checks, geometries, a CuPy kernel refusing NumPy arrays), and a ``memory`` rule.
4. Tests: the kernel against the NumPy reference and PyTorch, forward and every gradient, and a
   summary-vs-measured memory check; nothing else in cnnkit changes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import backend as _backend
from .memory import ArraySpec, LayerMemory

AUTO = "auto"


def _accept(*args, **kwargs):
    return None


def _unknown_memory(*args, **kwargs) -> LayerMemory:
    return LayerMemory(keeps_input=True)


@dataclass(frozen=True)
class Kernel:
    """One implementation of one op; see the module docstring for the contract."""

    name: str
    backend: str
    priority: int
    forward: Callable
    backward: Callable
    cache_type: type
    decline: Callable = _accept
    defer: Callable = _accept
    memory: Callable = _unknown_memory
    doc: str = ""

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, backend={self.backend!r}, priority={self.priority})"


class Op:
    """An operation and its registered kernels.

    ``reference`` names the kernel that runs every call (the readable NumPy one); ``benchmark``
    says whether timing candidates on the real arguments is harmless (no side effects).
    """

    def __init__(self, name: str, reference: str, *, benchmark: bool = False):
        self.name = name
        self.reference = reference
        self.benchmark = benchmark
        self._kernels: dict[str, Kernel] = {}
        self._by_cache: dict[type, Kernel] = {}
        self._timed: dict = {}

    # -- registration ---------------------------------------------------------------------------
    def register(self, kernel: Kernel) -> Kernel:
        if kernel.name == AUTO or kernel.name in self._kernels:
            raise ValueError(f"{self.name}: a kernel named {kernel.name!r} is already registered")
        if kernel.cache_type in self._by_cache:
            raise ValueError(f"{self.name}: kernels {self._by_cache[kernel.cache_type].name!r} and "
                             f"{kernel.name!r} share a cache type; give each its own NamedTuple")
        self._kernels[kernel.name] = kernel
        self._by_cache[kernel.cache_type] = kernel
        self._timed.clear()
        return kernel

    def kernel(self, name: str) -> Kernel:
        try:
            return self._kernels[name]
        except KeyError:
            raise ValueError(f"{self.name}: algorithm must be one of {(AUTO,) + self.names()}, "
                             f"got {name!r}") from None

    def names(self) -> tuple:
        """Every kernel's name, highest priority first."""
        return tuple(k.name for k in sorted(self._kernels.values(), key=lambda k: -k.priority))

    def check_algorithm(self, algorithm: str, layer: str) -> str:
        """Validate a layer's ``algorithm=`` argument (a kernel name or ``"auto"``)."""
        if algorithm != AUTO and algorithm not in self._kernels:
            raise ValueError(f"{layer}: algorithm must be one of {(AUTO,) + self.names()}, got {algorithm!r}")
        return algorithm

    # -- choosing -------------------------------------------------------------------------------
    def candidates(self) -> list:
        """Kernels ``auto`` may use now (enabled backends), highest priority first."""
        enabled = _backend.enabled_backends()
        kernels = [k for k in self._kernels.values() if k.backend in enabled]
        return sorted(kernels, key=lambda k: -k.priority)

    def select(self, algorithm: str, *args, **kwargs) -> Kernel:
        """The kernel that runs this call; see the module docstring."""
        if algorithm != AUTO:
            kernel = self.kernel(algorithm)
            reason = kernel.decline(*args, **kwargs)
            if reason:
                raise ValueError(f"{self.name}: algorithm={algorithm!r} cannot run this call: {reason}")
            return kernel
        able = [k for k in self.candidates() if not k.decline(*args, **kwargs)]
        if _benchmark and self.benchmark and len(able) > 1 and not any(isinstance(a, ArraySpec) for a in args):
            return self._fastest(able, args, kwargs)
        for kernel in able:
            if not kernel.defer(*args, **kwargs):
                return kernel
        return self._kernels[self.reference]

    def plan(self, algorithm: str, *args, **kwargs) -> Kernel:
        """The kernel ``select`` would pick, asked with ArraySpecs (no data, nothing timed).

        In benchmark mode a shape not yet timed is assumed to get the static choice.
        """
        kernel = self.select(algorithm, *args, **kwargs)
        if algorithm == AUTO and _benchmark and self.benchmark:
            return self._timed.get(self._key(args, kwargs), kernel)
        return kernel

    def why_not(self, *args, **kwargs) -> dict:
        """For each kernel, why ``auto`` would not run it on this call (``None``: it could)."""
        enabled = _backend.enabled_backends()
        reasons = {}
        for kernel in sorted(self._kernels.values(), key=lambda k: -k.priority):
            if kernel.backend not in enabled:
                reasons[kernel.name] = (_backend.unavailable_reason(kernel.backend)
                                        or f"backend {kernel.backend!r} is switched off")
            else:
                reasons[kernel.name] = kernel.decline(*args, **kwargs) or kernel.defer(*args, **kwargs)
        return reasons

    # -- running --------------------------------------------------------------------------------
    def forward(self, *args, algorithm: str = AUTO, **kwargs):
        """``(y, cache)`` from the kernel ``select`` picks."""
        return self.run(self.select(algorithm, *args, **kwargs), *args, **kwargs)

    @staticmethod
    def run(kernel: Kernel, *args, **kwargs):
        """``kernel.forward(*args, **kwargs)``, its array arguments in the layout it reads (see
        :func:`in_reference_layout`)."""
        if kernel.backend == _backend.REFERENCE_BACKEND:
            args = tuple(in_reference_layout(a) for a in args)
        return kernel.forward(*args, **kwargs)

    def backward(self, dy, cache, **flags):
        """The gradients, from the kernel whose forward made ``cache``."""
        kernel = self.kernel_of(cache)
        if kernel.backend == _backend.REFERENCE_BACKEND:
            dy = in_reference_layout(dy)
        return kernel.backward(dy, cache, **flags)

    def kernel_of(self, cache) -> Kernel:
        try:
            return self._by_cache[type(cache)]
        except KeyError:
            raise TypeError(f"{self.name}: backward got a {type(cache).__name__}, which no registered "
                            "kernel's forward makes") from None

    def memory(self, algorithm: str, *args, **kwargs) -> LayerMemory:
        """The memory rule of the kernel this call would run (arrays as ArraySpecs)."""
        return self.plan(algorithm, *args, **kwargs).memory(*args, **kwargs)

    # -- benchmark mode -------------------------------------------------------------------------
    @staticmethod
    def _key(args, kwargs):
        def describe(a):
            shape = getattr(a, "shape", None)
            if shape is not None:
                return ("array", tuple(shape), str(getattr(a, "dtype", "")))
            return a

        return (tuple(describe(a) for a in args), tuple(sorted((k, describe(v)) for k, v in kwargs.items())))

    def _fastest(self, able, args, kwargs) -> Kernel:
        key = self._key(args, kwargs)
        if key not in self._timed:
            best, best_time = able[-1], float("inf")
            for kernel in able:
                elapsed = float("inf")
                for _ in range(2):  # the first run warms caches and buffers; keep the second
                    start = time.perf_counter()
                    y, cache = self.run(kernel, *args, **kwargs)
                    kernel.backward(y, cache)
                    elapsed = time.perf_counter() - start
                if elapsed < best_time:
                    best, best_time = kernel, elapsed
            self._timed[key] = best
        return self._timed[key]


def in_reference_layout(a):
    """``a`` itself, or a C-order copy of a 4-D NumPy array in another memory order.

    The NumPy kernels walk ``(N, C, H, W)`` arrays as C-ordered memory; handed a channels-last
    array (what the oneDNN kernels pass on between layers) their strided passes ran 1.1-7x
    slower (average pooling 4.5x, batch norm 4.1x, ReLU 6.8x, im2col convolution 1.3x, on
    64x16x32x32 float32). One copy first costs less than that, and the result is the same.
    """
    if isinstance(a, np.ndarray) and a.ndim == 4 and not a.flags.c_contiguous:
        return np.ascontiguousarray(a)
    return a


_benchmark = False
OPS: dict[str, Op] = {}


def set_benchmark(enabled: bool = True) -> None:
    """Choose ``auto`` kernels by timing the candidates once per shape (cached per process)."""
    global _benchmark
    _benchmark = bool(enabled)
    for op in OPS.values():
        op._timed.clear()


def benchmark_enabled() -> bool:
    return _benchmark


def define_op(name: str, reference: str, *, benchmark: bool = False) -> Op:
    """Create (once) and return the op ``name``."""
    if name in OPS:
        raise ValueError(f"op {name!r} is already defined")
    OPS[name] = Op(name, reference, benchmark=benchmark)
    return OPS[name]
