"""Process-wide choices about where arrays live and which kernel libraries run them.

Array module: kernels call ``xp = array_module(x)`` and use ``xp`` instead of a hard-coded
``np``, so the same code runs on CuPy arrays. CuPy is never imported unless the user has
already loaded it.

Kernel backends: every op with more than one implementation lists them in
:mod:`cnnkit.functional.registry`, each belonging to a backend (``"numpy"``, the readable
reference that is always there, or a compiled library such as ``"onednn"``). Which backends
``auto`` may choose from is one process-wide setting:

* ``CNNKIT_BACKEND=auto`` (the default): every backend that is installed;
* ``CNNKIT_BACKEND=numpy``: the NumPy kernels only;
* ``CNNKIT_BACKEND=onednn``: that backend, with NumPy as the fallback where it declines.

In Python, ``set_backend(name)`` changes it and ``with use_backend("numpy"): ...`` changes it
for a block. A layer's own ``algorithm=`` argument overrides the choice for that layer.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

DEFAULT_DTYPE = np.float32

REFERENCE_BACKEND = "numpy"


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


# -- kernel backends ------------------------------------------------------------------------------
# name -> a function returning None when the backend can run here, else why not (e.g. "the
# oneDNN library is not installed: pip install ..."). Backends register themselves here; the
# probe runs on first use, so `import cnnkit` loads no compiled library.
_PROBES: dict = {REFERENCE_BACKEND: lambda: None}
_probe_results: dict = {}


def register_backend(name: str, probe) -> None:
    """Declare a kernel backend; ``probe()`` returns ``None`` when usable, else the reason."""
    _PROBES[name] = probe
    _probe_results.pop(name, None)


def backend_names() -> tuple:
    """Every declared backend, the reference first."""
    return tuple(_PROBES)


def unavailable_reason(name: str):
    """``None`` when backend ``name`` can run here, else why it cannot (probed once)."""
    if name not in _PROBES:
        return f"unknown backend {name!r} (known: {', '.join(_PROBES)})"
    if name not in _probe_results:
        _probe_results[name] = _PROBES[name]()
    return _probe_results[name]


def _check_setting(name, source: str) -> str:
    if not isinstance(name, str) or (name != "auto" and name not in _PROBES):
        raise ValueError(f"{source} must be 'auto' or one of {', '.join(_PROBES)}, got {name!r}")
    return name


def get_backend() -> str:
    """The current setting: ``"auto"`` or a backend name."""
    # CNNKIT_BACKEND is checked here, not at import: backends declare themselves as their
    # modules load, after this one.
    return _check_setting(_setting, "CNNKIT_BACKEND" if _setting == _from_environment else "the backend")


def set_backend(name: str) -> None:
    """Let ``auto`` choose from every installed backend (``"auto"``) or from ``name`` (plus NumPy)."""
    global _setting
    _setting = _check_setting(name, "set_backend: name")


@contextmanager
def use_backend(name: str):
    """Within the block, ``auto`` chooses as ``set_backend(name)`` says; restored afterwards."""
    global _setting
    previous = _setting
    _setting = _check_setting(name, "use_backend: name")
    try:
        yield
    finally:
        _setting = previous


def enabled_backends() -> tuple:
    """The backends ``auto`` may choose from now: the setting's, installed ones only, NumPy always."""
    setting = get_backend()
    wanted = _PROBES if setting == "auto" else (setting,)
    usable = [b for b in wanted if b != REFERENCE_BACKEND and unavailable_reason(b) is None]
    return tuple(usable) + (REFERENCE_BACKEND,)


def active_backend() -> tuple[str, str]:
    """``(backend, why)``: the fastest backend ``auto`` uses now, and the reason in words."""
    setting = get_backend()
    for name in enabled_backends():
        if name != REFERENCE_BACKEND:
            return name, f"{name} is installed and enabled (backend setting: {setting})"
    if setting == REFERENCE_BACKEND:
        return REFERENCE_BACKEND, "the backend setting (CNNKIT_BACKEND or set_backend) selects the NumPy kernels"
    reasons = [f"{b}: {unavailable_reason(b)}" for b in (_PROBES if setting == "auto" else (setting,))
               if b != REFERENCE_BACKEND]
    return REFERENCE_BACKEND, "; ".join(reasons) if reasons else "no other backend is declared"


_from_environment = os.environ.get("CNNKIT_BACKEND", "").strip().lower() or "auto"
_setting = _from_environment
