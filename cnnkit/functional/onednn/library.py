"""Finding, loading and calling ``libdnnl`` (oneDNN v3.x, CPU) through ctypes.

The library comes from the ``onednn-cpu-gomp`` wheel (``pip install "cnnkit[onednn]"``), which
puts ``libdnnl.so.3.2`` into the environment's ``lib/`` directory. It is looked up there (or at
``CNNKIT_ONEDNN_LIBRARY``, a path), loaded at the first call of :func:`lib`, never at
``import cnnkit``, and never downloaded. :func:`status` says whether it loaded and why not.

Every C function used is declared once in ``_SIGNATURES`` (argument and result types: the
float parameters of oneDNN are C ``float``, which ctypes gets wrong unless told). A non-zero
status becomes an :class:`OnednnError` whose message names the call and the status, one line.

The numeric values of the C enums are those of the v3.2 headers (``dnnl_types.h``,
``dnnl_common_types.h``); the positional ones (memory format tags) are checked against the
loaded library by ``tests/test_onednn.py`` (a descriptor made with the tag must have the
strides the tag means).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading

# -- enum values (oneDNN v3.2) ------------------------------------------------------------------
SUCCESS = 0
STATUS_NAMES = {0: "success", 1: "out_of_memory", 2: "invalid_arguments", 3: "unimplemented",
                4: "last_impl_reached", 5: "runtime_error", 6: "not_required", 7: "invalid_graph",
                8: "invalid_graph_op", 9: "invalid_shape", 10: "invalid_data_type"}
ENGINE_CPU = 1
STREAM_DEFAULT = 1  # in-order
F32 = 3
S32 = 4
U8 = 6

# format tags (positional in dnnl_format_tag_t)
TAG_ANY = 1
TAG_A = 2        # x
TAG_AB = 3       # nc, oi
TAG_ABCD = 5     # nchw, oihw
TAG_ABCDE = 6    # goihw
TAG_ACDB = 22    # nhwc

# propagation kinds
FORWARD_TRAINING = 64
FORWARD_INFERENCE = 96
BACKWARD = 128
BACKWARD_DATA = 160
BACKWARD_WEIGHTS = 192

# algorithms
CONVOLUTION_DIRECT = 1
ELTWISE_RELU = 32
ELTWISE_RELU_USE_DST_FOR_BWD = 256
POOLING_MAX = 511
POOLING_AVG_INCLUDE_PADDING = 767
POOLING_AVG_EXCLUDE_PADDING = 1023
LRN_ACROSS_CHANNELS = 2815
BINARY_ADD = 131056

# batch normalisation flags
BN_USE_GLOBAL_STATS = 1
BN_USE_SCALE = 2
BN_USE_SHIFT = 4
BN_FUSE_NORM_RELU = 8

# execution argument indices (DNNL_ARG_*)
ARG_SRC = 1
ARG_SRC_1 = 2
ARG_DST = 17
ARG_WEIGHTS = 33
ARG_BIAS = 41
ARG_MEAN = 49
ARG_VARIANCE = 50
ARG_SCALE = 51
ARG_SHIFT = 52
ARG_WORKSPACE = 64
ARG_SCRATCHPAD = 80
ARG_DIFF_SRC = 129
ARG_DIFF_DST = 145
ARG_DIFF_WEIGHTS = 161
ARG_DIFF_BIAS = 169
ARG_DIFF_SCALE = 255
ARG_DIFF_SHIFT = 256
ARG_FROM = 1
ARG_TO = 17

# primitive descriptor queries
QUERY_IMPL_INFO_STR = 8
QUERY_SRC_MD = 129
QUERY_DIFF_SRC_MD = 130
QUERY_WEIGHTS_MD = 131
QUERY_DIFF_WEIGHTS_MD = 132
QUERY_DST_MD = 133
QUERY_DIFF_DST_MD = 134
QUERY_WORKSPACE_MD = 135
QUERY_SCRATCHPAD_MD = 136

SCRATCHPAD_USER = 1
MAX_DIMS = 12

handle = ctypes.c_void_p
Dims = ctypes.c_int64 * MAX_DIMS


class ExecArg(ctypes.Structure):
    """``dnnl_exec_arg_t``: an argument index and a memory object."""

    _fields_ = [("arg", ctypes.c_int), ("memory", handle)]


class Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


_h = handle
_ph = ctypes.POINTER(handle)
_f = ctypes.c_float
_i = ctypes.c_int
_u = ctypes.c_uint
_i64 = ctypes.c_int64
_sz = ctypes.c_size_t

# name -> (argument types, result type); result None means dnnl_status_t, checked.
_SIGNATURES = {
    "dnnl_version": ((), ctypes.POINTER(Version)),
    "dnnl_get_effective_cpu_isa": ((), _i),
    "dnnl_set_primitive_cache_capacity": ((_i,), None),
    "dnnl_engine_create": ((_ph, _i, _sz), None),
    "dnnl_stream_create": ((_ph, _h, _u), None),
    "dnnl_stream_wait": ((_h,), None),
    "dnnl_memory_desc_create_with_tag": ((_ph, _i, Dims, _i, _i), None),
    "dnnl_memory_desc_create_with_strides": ((_ph, _i, Dims, _i, Dims), None),
    "dnnl_memory_desc_destroy": ((_h,), None),
    "dnnl_memory_desc_get_size": ((_h,), _sz),
    "dnnl_memory_desc_equal": ((_h, _h), _i),
    "dnnl_memory_desc_clone": ((_ph, _h), None),
    "dnnl_memory_create": ((_ph, _h, _h, _h), None),
    "dnnl_memory_set_data_handle": ((_h, _h), None),
    "dnnl_memory_destroy": ((_h,), None),
    "dnnl_primitive_attr_create": ((_ph,), None),
    "dnnl_primitive_attr_destroy": ((_h,), None),
    "dnnl_primitive_attr_set_scratchpad_mode": ((_h, _i), None),
    "dnnl_primitive_attr_set_post_ops": ((_h, _h), None),
    "dnnl_post_ops_create": ((_ph,), None),
    "dnnl_post_ops_destroy": ((_h,), None),
    "dnnl_post_ops_append_eltwise": ((_h, _i, _f, _f), None),
    "dnnl_post_ops_append_sum": ((_h, _f, ctypes.c_int32, _i), None),
    "dnnl_primitive_desc_query": ((_h, _i, _i, _h), None),
    "dnnl_primitive_desc_query_md": ((_h, _i, _i), _h),
    "dnnl_primitive_desc_destroy": ((_h,), None),
    "dnnl_primitive_create": ((_ph, _h), None),
    "dnnl_primitive_execute": ((_h, _h, _i, ctypes.POINTER(ExecArg)), None),
    "dnnl_primitive_destroy": ((_h,), None),
    "dnnl_reorder_primitive_desc_create": ((_ph, _h, _h, _h, _h, _h), None),
    "dnnl_convolution_forward_primitive_desc_create": (
        (_ph, _h, _i, _i, _h, _h, _h, _h, Dims, Dims, Dims, Dims, _h), None),
    "dnnl_convolution_backward_data_primitive_desc_create": (
        (_ph, _h, _i, _h, _h, _h, Dims, Dims, Dims, Dims, _h, _h), None),
    "dnnl_convolution_backward_weights_primitive_desc_create": (
        (_ph, _h, _i, _h, _h, _h, _h, Dims, Dims, Dims, Dims, _h, _h), None),
    "dnnl_pooling_forward_primitive_desc_create": (
        (_ph, _h, _i, _i, _h, _h, Dims, Dims, Dims, Dims, Dims, _h), None),
    "dnnl_pooling_backward_primitive_desc_create": (
        (_ph, _h, _i, _h, _h, Dims, Dims, Dims, Dims, Dims, _h, _h), None),
    "dnnl_eltwise_forward_primitive_desc_create": ((_ph, _h, _i, _i, _h, _h, _f, _f, _h), None),
    "dnnl_eltwise_backward_primitive_desc_create": ((_ph, _h, _i, _h, _h, _h, _f, _f, _h, _h), None),
    "dnnl_batch_normalization_forward_primitive_desc_create": ((_ph, _h, _i, _h, _h, _f, _u, _h), None),
    "dnnl_batch_normalization_backward_primitive_desc_create": (
        (_ph, _h, _i, _h, _h, _h, _f, _u, _h, _h), None),
    "dnnl_lrn_forward_primitive_desc_create": ((_ph, _h, _i, _i, _h, _h, _i64, _f, _f, _f, _h), None),
    "dnnl_lrn_backward_primitive_desc_create": ((_ph, _h, _i, _h, _h, _h, _i64, _f, _f, _f, _h, _h), None),
    "dnnl_matmul_primitive_desc_create": ((_ph, _h, _h, _h, _h, _h, _h), None),
    "dnnl_binary_primitive_desc_create": ((_ph, _h, _i, _h, _h, _h, _h), None),
}


class OnednnError(RuntimeError):
    """A oneDNN call failed; the message names the call and the status."""


class OnednnUnavailable(RuntimeError):
    """The oneDNN library is not installed or could not be loaded."""


class _Library:
    """The loaded ``libdnnl`` with checked wrappers: ``L.call("dnnl_x", ...)`` or ``L.raw.dnnl_x``."""

    def __init__(self, cdll: ctypes.CDLL, path: str):
        self.raw = cdll
        self.path = path
        for name, (argtypes, restype) in _SIGNATURES.items():
            fn = getattr(cdll, name)
            fn.argtypes = argtypes
            fn.restype = ctypes.c_int if restype is None else restype
        version = cdll.dnnl_version().contents
        self.version = (version.major, version.minor, version.patch)
        self.cpu_runtime = version.cpu_runtime
        self.isa = cdll.dnnl_get_effective_cpu_isa()

    def call(self, name: str, *args) -> None:
        """Call a status-returning function; raise :class:`OnednnError` unless it succeeded."""
        status = getattr(self.raw, name)(*args)
        if status != SUCCESS:
            raise OnednnError(f"oneDNN {name} failed: {STATUS_NAMES.get(status, status)}")


_lock = threading.Lock()
_library: _Library | None = None
_failure: str | None = None

LIBRARY_NAMES = ("libdnnl.so.3.2", "libdnnl.so.3", "libdnnl.so")


def candidate_paths() -> list[str]:
    """Where the library is looked for: ``CNNKIT_ONEDNN_LIBRARY``, else the environment's ``lib/``."""
    override = os.environ.get("CNNKIT_ONEDNN_LIBRARY")
    if override:
        return [override]
    prefixes = [sys.prefix] + ([sys.base_prefix] if sys.base_prefix != sys.prefix else [])
    return [os.path.join(p, "lib", name) for p in prefixes for name in LIBRARY_NAMES]


def _prepare_openmp() -> None:
    """The wait policy libgomp reads when it loads (with ``libdnnl``), unless the user chose one.

    Idle OpenMP workers spin after each parallel region (libgomp: up to 300k iterations, about a
    millisecond) on the very cores cnnkit's own threads need for the NumPy passes between oneDNN
    calls, and on a shared machine they cost the other processes' time too. PASSIVE workers sleep
    at once. Measured on the shared 2-core machine, a two-thread oneDNN ReLU of 1 MB: 52 us
    passive, 38 us with the default spin, 538 us with GOMP_SPINCOUNT=10000 (a spin that outlasted
    the gaps between regions and kept both cores busy). (No effect when libgomp is already loaded,
    e.g. by PyTorch, whose own default then applies.)
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _load() -> _Library:
    errors = []
    if sys.platform != "linux":
        raise OnednnUnavailable(f"the oneDNN backend is built for Linux, this is {sys.platform}")
    _prepare_openmp()
    for path in candidate_paths():
        if not os.path.exists(path):
            errors.append(f"{path}: not found")
            continue
        try:
            return _Library(ctypes.CDLL(path), path)
        except (OSError, AttributeError) as exc:  # a broken file or a library without our symbols
            errors.append(f"{path}: {exc}")
    broken = [e for e in errors if not e.endswith(": not found")]
    if broken:
        raise OnednnUnavailable(f"libdnnl could not be loaded: {broken[0]}")
    where = os.environ.get("CNNKIT_ONEDNN_LIBRARY") or os.path.join(sys.prefix, "lib")
    raise OnednnUnavailable(f"libdnnl not found in {where} (install it with: pip install \"cnnkit[onednn]\")")


def lib() -> _Library:
    """The loaded library (loading it on first use); raises :class:`OnednnUnavailable`."""
    global _library, _failure
    if _library is not None:
        return _library
    with _lock:
        if _library is None:
            if _failure is not None:
                raise OnednnUnavailable(_failure)
            try:
                library = _load()
                if library.version[0] != 3:
                    raise OnednnUnavailable(f"{library.path} is oneDNN {library.version}, cnnkit needs v3.x")
            except OnednnUnavailable as exc:
                _failure = str(exc)
                raise
            _library = library
    return _library


def status() -> tuple[bool, str]:
    """``(True, "oneDNN 3.2.0 (libdnnl at ..., ...)")`` or ``(False, why it cannot load)``."""
    try:
        library = lib()
    except OnednnUnavailable as exc:
        return False, str(exc)
    major, minor, patch = library.version
    runtime = {1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool"}.get(library.cpu_runtime, "?")
    return True, f"oneDNN {major}.{minor}.{patch} ({runtime}, ISA code {library.isa:#x}) from {library.path}"


def is_loaded() -> bool:
    """Whether the library has been loaded in this process (without loading it)."""
    return _library is not None


def unavailable_reason() -> str | None:
    """Why oneDNN cannot be used in this process (None when it can); loads it on first call."""
    if _library is not None:  # the common case, asked by every kernel's decline: no work
        return None
    ok, message = status()
    return None if ok else message
