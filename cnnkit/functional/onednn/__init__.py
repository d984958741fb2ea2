"""The oneDNN backend: cnnkit's kernels computed by oneDNN (the CPU library PyTorch, TensorFlow
and ONNX Runtime use), called through ctypes.

Optional: ``pip install "cnnkit[onednn]"`` brings ``libdnnl`` (the ``onednn-cpu-gomp`` wheel);
without it every op runs on the NumPy reference kernels. Importing this package loads nothing;
the library is loaded at the first oneDNN call (:mod:`.library`).

Modules, one job each:

* :mod:`.library` -- finding and loading ``libdnnl``, the C signatures and enum values, errors;
* :mod:`.runtime` -- engine, streams, OpenMP threads, memory descriptors of NumPy arrays,
  primitives cached per call signature, JIT-compile counters;
* :mod:`.layout` -- channels-last activations and the reorders between layouts;
* one module per op family: :mod:`.conv`, :mod:`.pool`, :mod:`.norm` (batch norm, LRN),
  :mod:`.eltwise` (ReLU, residual add + ReLU), :mod:`.linear`.

Each op module offers ``decline(...)`` (why oneDNN will not run a call, or None),
``*_forward`` and ``*_backward`` with the arguments and results of the NumPy reference in
:mod:`cnnkit.functional` (the reference is the definition; these are faster ways to compute it
for float32 arrays).
"""
from __future__ import annotations

from .library import OnednnError, OnednnUnavailable, status, unavailable_reason
from . import kernels  # noqa: F401  (registers the oneDNN kernels with the op registry)


def available() -> bool:
    """Whether the oneDNN library is installed and loads."""
    return unavailable_reason() is None


__all__ = ["OnednnError", "OnednnUnavailable", "available", "status", "unavailable_reason"]
