"""Activation layouts: which memory order oneDNN ops read and write, and the copies between them.

A 4-D activation is always an ``(N, C, H, W)``-shaped NumPy array; what varies is where its
elements lie. NCHW is C order. *Channels-last* (PyTorch's ``channels_last``, oneDNN's ``nhwc``)
keeps ``(N, C, H, W)`` as the shape but stores the channels of a pixel next to each other: it is
``np.empty((N, H, W, C)).transpose(0, 3, 1, 2)``, an ordinary strided ndarray for every NumPy
function. oneDNN's fastest CPU convolutions read and write nhwc (or blocked layouts such as
``nChw16c``, which are not expressible as one strided array).

``ACTIVATION_LAYOUT`` is what oneDNN ops *produce* (outputs and input gradients):
``"channels_last"`` (the default: no copies between layers) or ``"nchw"`` (every op copies into
and out of the layout its kernel prefers, as PyTorch does for contiguous tensors). The choice was
made on whole training steps; ``benchmarks/layers.py --layouts`` re-measures it.
``CNNKIT_ONEDNN_LAYOUT`` overrides it for such measurements.
"""
from __future__ import annotations

import os

import numpy as np

from . import library as L
from . import runtime as R

LAYOUTS = ("channels_last", "nchw")


def activation_layout() -> str:
    value = os.environ.get("CNNKIT_ONEDNN_LAYOUT", "channels_last")
    if value not in LAYOUTS:
        raise ValueError(f"CNNKIT_ONEDNN_LAYOUT must be one of {LAYOUTS}, got {value!r}")
    return value


def is_channels_last(array) -> bool:
    """Whether a 4-D ``array`` lies in NHWC order (dimensions of size 1 may have any stride)."""
    if array.ndim != 4:
        return False
    n, c, h, w = array.shape
    s = array.strides
    item = array.itemsize
    return ((c == 1 or s[1] == item) and (w == 1 or s[3] == c * item) and (h == 1 or s[2] == w * c * item)
            and (n == 1 or s[0] == h * w * c * item))


def empty_channels_last(shape, dtype=np.float32):
    """An uninitialised ``(N, C, H, W)`` array in channels-last memory."""
    n, c, h, w = shape
    return np.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


def empty_activation(shape, dtype=np.float32):
    """An uninitialised 4-D array in the layout oneDNN ops produce (``activation_layout``)."""
    if activation_layout() == "channels_last":
        return empty_channels_last(shape, dtype)
    return np.empty(shape, dtype=dtype)


def empty_like_layout(array):
    """An uninitialised array with the shape and the memory order of ``array`` (NCHW otherwise)."""
    if is_channels_last(array) and not array.flags.c_contiguous:
        return empty_channels_last(array.shape, array.dtype)
    return np.empty(array.shape, dtype=array.dtype)


def activation_tag() -> int:
    """The oneDNN format tag of the activations an op hands on."""
    return L.TAG_ACDB if activation_layout() == "channels_last" else L.TAG_ABCD


COMPUTE_FORMATS = ("nhwc", "any")


def compute_tag() -> int:
    """The format tag convolution primitives are created with for their activations.

    ``nhwc`` (default): oneDNN's brgconv kernels on channels-last data. ``any``: oneDNN picks
    (blocked ``nChw16c`` with the jit kernels). ``CNNKIT_ONEDNN_COMPUTE`` chooses, for measurements.
    """
    value = os.environ.get("CNNKIT_ONEDNN_COMPUTE", "nhwc")
    if value not in COMPUTE_FORMATS:
        raise ValueError(f"CNNKIT_ONEDNN_COMPUTE must be one of {COMPUTE_FORMATS}, got {value!r}")
    return L.TAG_ACDB if value == "nhwc" else L.TAG_ANY


def plain(array):
    """``array`` itself if oneDNN can describe it (non-negative strides in whole elements), else a C copy."""
    if all(s >= 0 and s % array.itemsize == 0 for s in array.strides):
        return array
    return np.ascontiguousarray(array)


class _NoCopy:
    """Cached marker: the array already has the wanted layout."""


NO_COPY = _NoCopy()


def converted(array, target_md, key, shape=None):
    """``array`` in the memory layout ``target_md`` (a descriptor handle owned by a cached pd).

    ``shape``: read a C-contiguous ``array`` with another logical shape (a grouped weight as 5-D).

    Returns ``array`` itself when its own layout is already the target, else a new buffer (uint8,
    64-byte aligned, ``dnnl_memory_desc_get_size`` bytes: blocked layouts pad channels) written by
    a cached reorder primitive. ``key`` identifies the target (the owner's cache key and role).
    """
    array = plain(array)

    def build():
        source = R.describe(array, shape)
        if R.md_equal(source.handle, target_md):
            return NO_COPY
        return (R.reorder(source.handle, target_md), R.md_size(target_md))

    entry = R.cached(("convert", key, R.layout_key(array)), build)
    if entry is NO_COPY:
        return array
    primitive, nbytes = entry
    out = R.aligned_bytes(nbytes)
    primitive.run({L.ARG_FROM: array, L.ARG_TO: out})
    return out


def reorder_into(source, source_md, out, key) -> None:
    """Write ``source`` (a buffer in layout ``source_md``) into the ndarray ``out``, in ``out``'s own layout."""

    def build():
        target = R.describe(out)
        return R.reorder(source_md, target.handle)

    R.cached(("reorder_into", key, R.layout_key(out)), build).run({L.ARG_FROM: source, L.ARG_TO: out})
