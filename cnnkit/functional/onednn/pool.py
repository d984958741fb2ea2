"""Max and average pooling through oneDNN, forward and backward.

Same arguments and results as the NumPy reference :mod:`cnnkit.functional.pool`
(``max_pool2d_forward``/``max_pool2d_backward``, ``avg_pool2d_forward``/``avg_pool2d_backward``);
the geometry (output size, ceil mode, PyTorch's padding rule) comes from its ``pool_geometry``.

Where oneDNN and PyTorch agree, and where they do not (checked in ``tests/test_onednn_pool.py``):

* max pooling picks the first maximum of a window in scan order on ties, as PyTorch does; its
  backward routes through the forward's *workspace*: per output, the offset ``i*KW + j`` of the
  winning tap (one byte each), exactly the reference's "switches", kept in the cache;
* a NaN in a window: PyTorch's output is NaN, oneDNN's is the largest number. A window whose
  real values are all ``-inf``: oneDNN pads with the lowest float, not ``-inf``, so its padding
  would win. Both show in one reduction of the input (``min(x)`` is NaN or ``-inf``), and such
  calls are declined (the reference runs them);
* average pooling: oneDNN's ``exclude_padding`` divisor is PyTorch's ``count_include_pad=False``
  one; ``include_padding`` divides by the whole window, which is PyTorch's divisor except where a
  ceil-mode window runs past the padding (declined); ``divisor_override`` is declined.

The output keeps the memory order of the input (channels-last in, channels-last out).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..memory import LayerMemory
from ..pool_geometry import PoolGeometry, pool_geometry, switches_dtype
from . import library as L
from . import runtime as R
from .checks import array_reason, first_reason, has_data, lowest, unavailable
from .layout import converted, empty_channels_last, is_channels_last


def _common_decline(x):
    reason = first_reason(unavailable(), array_reason("input", x, (4,)))
    if reason is None and x.size == 0:
        return f"empty input {tuple(x.shape)}"
    return reason


def _channels_last(x) -> bool:
    return is_channels_last(x) and not x.flags.c_contiguous


def _readable(x):
    """``x`` if it is NCHW or channels-last memory (oneDNN's fast kernels), else a C-order copy."""
    return x if (x.flags.c_contiguous or _channels_last(x)) else np.ascontiguousarray(x)


def _strides(shape, channels_last: bool) -> tuple:
    n, c, h, w = shape
    return (h * w * c, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)


def _new(shape, channels_last: bool, dtype=np.float32):
    return empty_channels_last(shape, dtype) if channels_last else np.empty(shape, dtype=dtype)


def _right_padding(g: PoolGeometry) -> tuple:
    """Right/bottom padding for which oneDNN's size formula gives exactly ``g.output`` (may be < 0)."""
    return tuple((o - 1) * s + d * (k - 1) + 1 - size - p
                 for o, s, d, k, size, p in zip(g.output, g.stride, g.dilation, g.kernel, g.input_shape[2:],
                                                g.padding))


class _Forward:
    """The forward primitive of one geometry, algorithm and memory order."""

    def __init__(self, g: PoolGeometry, algorithm: int, training: bool, channels_last: bool):
        self.key = ("pool", g, algorithm, training, channels_last)
        self.geometry, self.algorithm, self.channels_last = g, algorithm, channels_last
        self.output_shape = g.output_shape
        src = R.MemoryDesc.from_strides(g.input_shape, _strides(g.input_shape, channels_last))
        dst = R.MemoryDesc.from_strides(self.output_shape, _strides(self.output_shape, channels_last))
        self.geometry_dims = (R.dims(g.stride), R.dims(g.kernel), R.dims(d - 1 for d in g.dilation),
                              R.dims(g.padding), R.dims(_right_padding(g)))
        self.attr = R.Attributes()
        self.pd = R.create_pd("dnnl_pooling_forward_primitive_desc_create", R.engine(),
                              L.FORWARD_TRAINING if training else L.FORWARD_INFERENCE, algorithm,
                              src.handle, dst.handle, *self.geometry_dims, self.attr.handle)
        self.dst_md = self.pd.md(L.QUERY_DST_MD)
        args = {L.ARG_SRC: self.pd.md(L.QUERY_SRC_MD), L.ARG_DST: self.dst_md}
        self.workspace_md = self.pd.md(L.QUERY_WORKSPACE_MD) if self.pd.size(L.QUERY_WORKSPACE_MD) else None
        if self.workspace_md:
            args[L.ARG_WORKSPACE] = self.workspace_md
            self.workspace_dtype = _workspace_dtype(self.workspace_md, self.output_shape, channels_last)
        self.primitive = R.Primitive(self.pd, args, "pooling forward")


def _workspace_dtype(md, shape, channels_last):
    """The NumPy dtype whose array of the output's shape and order *is* the workspace layout.

    oneDNN's max-pooling workspace holds the offset of each output's winning tap, one element per
    output in the output's layout (u8 for windows up to 256 taps, else s32). Checked, so that
    ``max_pool2d_indices`` can read it; None if the layout is something else.
    """
    for dtype, code in ((np.uint8, L.U8), (np.int32, L.S32)):
        desc = R.MemoryDesc.from_strides(shape, _strides(shape, channels_last), code)
        if R.md_equal(desc.handle, md):
            return dtype
    return None


class _Backward:
    def __init__(self, fwd: _Forward):
        g = fwd.geometry
        self.key = ("pool_backward", fwd.key)
        diff_src = R.MemoryDesc.from_strides(g.input_shape, _strides(g.input_shape, fwd.channels_last))
        self.attr = R.Attributes()
        self.pd = R.create_pd("dnnl_pooling_backward_primitive_desc_create", R.engine(), fwd.algorithm,
                              diff_src.handle, fwd.dst_md, *fwd.geometry_dims, fwd.pd.handle, self.attr.handle)
        self.diff_dst_md = self.pd.md(L.QUERY_DIFF_DST_MD)
        args = {L.ARG_DIFF_SRC: self.pd.md(L.QUERY_DIFF_SRC_MD), L.ARG_DIFF_DST: self.diff_dst_md}
        if fwd.workspace_md:
            args[L.ARG_WORKSPACE] = fwd.workspace_md
        self.primitive = R.Primitive(self.pd, args, "pooling backward")


class MaxPoolOnednnCache(NamedTuple):
    """What max pooling's backward needs: the workspace, i.e. the switches (per output the offset
    ``i*KW + j`` of the winning tap, as the reference keeps them), the geometry, the primitive."""

    switches: object
    geometry: PoolGeometry
    forward: _Forward


class AvgPoolOnednnCache(NamedTuple):
    """What average pooling's backward needs: the forward primitive (no data)."""

    geometry: PoolGeometry
    forward: _Forward


def _run_forward(x, g: PoolGeometry, algorithm: int, training: bool):
    x = _readable(x)
    channels_last = _channels_last(x)
    fwd = R.cached(("pool_forward", g, algorithm, training, channels_last),
                   lambda: _Forward(g, algorithm, training, channels_last))
    y = _new(fwd.output_shape, channels_last)
    buffers = {L.ARG_SRC: x, L.ARG_DST: y}
    workspace = None
    if fwd.workspace_md:
        workspace = (_new(fwd.output_shape, channels_last, fwd.workspace_dtype) if fwd.workspace_dtype
                     else R.aligned_bytes(R.md_size(fwd.workspace_md)))
        buffers[L.ARG_WORKSPACE] = workspace
    fwd.primitive.run(buffers)
    return y, fwd, workspace


def _run_backward(dy, fwd: _Forward, workspace):
    bwd = R.cached(("pool_backward", fwd.key), lambda: _Backward(fwd))
    diff_dst = converted(dy, bwd.diff_dst_md, (bwd.key, "diff_dst"))
    dx = _new(fwd.geometry.input_shape, fwd.channels_last)
    buffers = {L.ARG_DIFF_SRC: dx, L.ARG_DIFF_DST: diff_dst}
    if workspace is not None:
        buffers[L.ARG_WORKSPACE] = workspace
    bwd.primitive.run(buffers)
    return dx


# -- max pooling ----------------------------------------------------------------------------------
def max_pool2d_decline(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **options):
    """Why oneDNN will not run this max pooling (None when it will); one ``min`` of ``x``'s values."""
    reason = _common_decline(x)
    if reason or not has_data(x):
        return reason
    low = lowest(x)
    if low != low:
        return "input holds NaN (PyTorch's max pooling propagates it, oneDNN's does not)"
    if low == -np.inf:
        return "input holds -inf (oneDNN pads with the lowest float, which would beat -inf)"
    return None


@R.small_calls_on_one_thread(lambda x, *a, **k: x.nbytes)
def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       check_geometry=False, layer="max_pool2d", need_switches=True):
    """Max pooling; return ``(y, cache)``, as ``functional.pool.max_pool2d_forward``.

    ``need_switches=False`` (inference) runs oneDNN's forward-inference kernel, which keeps no
    workspace, and returns ``cache=None``.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW),
        OH = floor_or_ceil((H + 2*PH - DH*(KH-1) - 1) / SH) + 1, likewise OW
    """
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                      check_geometry=check_geometry, layer=layer)
    y, fwd, workspace = _run_forward(x, g, L.POOLING_MAX, bool(need_switches))
    if not need_switches:
        return y, None
    if fwd.workspace_dtype is None:  # pragma: no cover - a workspace layout other than the switches
        raise RuntimeError("oneDNN max pooling keeps its argmax in an unknown layout")
    return y, MaxPoolOnednnCache(workspace, g, fwd)


@R.small_calls_on_one_thread(lambda dy, cache: 5 * dy.nbytes)
def max_pool2d_backward(dy, cache: MaxPoolOnednnCache):
    """Route each output's gradient to the input its switch (oneDNN's workspace) names; return ``dx``.

    ``functional.pool.max_pool2d_indices`` reads this cache too (its ``switches`` are the same).

    Shape:
        dy: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    return _run_backward(dy, cache.forward, cache.switches)


def max_pool2d_memory(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **options):
    """The workspace (one byte per output up to 16x16 windows) is kept for backward; nothing else."""
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return LayerMemory(saved=math.prod(g.output_shape) * np.dtype(switches_dtype(g.kernel)).itemsize)


# -- average pooling ------------------------------------------------------------------------------
def avg_pool2d_decline(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None, **options):
    """Why oneDNN will not run this average pooling (None when it will)."""
    reason = _common_decline(x)
    if reason:
        return reason
    if divisor_override is not None:
        return "divisor_override is not a oneDNN pooling mode"
    if count_include_pad:
        g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode)
        if any(end > p for end, p in zip(g.pad_end, g.padding)):  # the padded input runs past the padding
            return ("a ceil-mode window runs past the padding: PyTorch leaves the overhang out of "
                    "the divisor, oneDNN counts it")
    return None


@R.small_calls_on_one_thread(lambda x, *a, **k: x.nbytes)
def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None, *, check_geometry=False, layer="avg_pool2d"):
    """Average pooling with PyTorch's divisor; return ``(y, cache)``, as ``functional.pool``.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = floor_or_ceil((H + 2*PH - KH) / SH) + 1
    """
    if divisor_override is not None:
        raise ValueError(f"{layer}: oneDNN average pooling has no divisor_override (use the NumPy kernel)")
    g = pool_geometry(x.shape, kernel_size, stride, padding, 1, ceil_mode,
                      check_geometry=check_geometry, layer=layer)
    algorithm = L.POOLING_AVG_INCLUDE_PADDING if count_include_pad else L.POOLING_AVG_EXCLUDE_PADDING
    y, fwd, _ = _run_forward(x, g, algorithm, True)
    return y, AvgPoolOnednnCache(g, fwd)


@R.small_calls_on_one_thread(lambda dy, cache: 5 * dy.nbytes)
def avg_pool2d_backward(dy, cache: AvgPoolOnednnCache):
    """Spread each output's gradient evenly over its window; return ``dx``.

    Shape:
        dy: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    return _run_backward(dy, cache.forward, None)


def avg_pool2d_memory(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None, **options):
    """Nothing is kept (the primitive knows the geometry); no temporaries beyond dy and dx."""
    return LayerMemory()
