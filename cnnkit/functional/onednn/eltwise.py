"""ReLU and the residual sum (``a + b``, optionally followed by ReLU) through oneDNN.

``relu_forward``/``relu_backward`` have the arguments and results of the NumPy reference in
:mod:`cnnkit.functional.activation`: the cache is the output ``y`` and ``dx = dy * [y > 0]``
(oneDNN's ``relu_use_dst_for_bwd``, which reads ``y`` as the reference does).

``add_forward(a, b, relu)`` is the join of a residual block, ``y = a + b`` or ``max(a + b, 0)``,
one pass through memory (oneDNN's binary add with a ReLU post-op) instead of two; its backward
gives the same gradient to both inputs, masked by ``y > 0`` after a ReLU.

NaN: PyTorch's (and the reference's) ReLU keeps a NaN, oneDNN's turns it into 0, which would
hide a diverging training run. So a ReLU whose input holds a NaN is declined (one ``min``
reduction of the input, a fraction of the ReLU's own pass), and so is an add + ReLU whose inputs
hold a NaN or -inf (``inf - inf`` is NaN too; one ``min`` per input). The backward passes agree with
PyTorch as they are (``dx = 0`` wherever ``y <= 0``, even where ``dy`` is infinite).

Every output keeps the memory order of the first input (channels-last in, channels-last out);
an input in another order is reordered first.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..memory import LayerMemory
from . import library as L
from . import runtime as R
from .checks import array_reason, first_reason, has_data, holds_nan, lowest, unavailable
from .layout import converted, empty_like_layout, is_channels_last

# Below this many values NumPy's one call beats the trip through ctypes (measured: a ReLU of
# 16k values takes ~15 us either way).
MIN_ELEMENTS = 1 << 14


def _decline_input(*arrays):
    reason = first_reason(unavailable(), *(array_reason("input", a) for a in arrays))
    if reason is None and arrays[0].ndim > 6:
        return f"{arrays[0].ndim}-D input"
    return reason


def small_defer(x, *args, **kwargs):
    """``defer`` of the element-wise kernels: tiny arrays run faster on NumPy."""
    if x.size < MIN_ELEMENTS:
        return f"small input ({x.size} values): NumPy's one call is faster"
    return None


def _readable(x):
    """``x`` if it is C-ordered or channels-last, else a C-order copy."""
    if x.flags.c_contiguous or (is_channels_last(x) and x.ndim == 4):
        return x
    return np.ascontiguousarray(x)


def _like(x):
    return empty_like_layout(x) if x.ndim == 4 else np.empty(x.shape, dtype=x.dtype)


# -- ReLU -------------------------------------------------------------------------------------------
def relu_decline(x):
    """Why oneDNN will not run this ReLU (None when it will); one ``min`` of ``x``'s values."""
    reason = _decline_input(x)
    if reason is None and has_data(x) and holds_nan(x):
        return "input holds NaN (PyTorch's ReLU keeps it, oneDNN's makes it 0)"
    return reason


def relu_memory(x) -> LayerMemory:
    """The output is the cache, as in the reference."""
    return LayerMemory(keeps_output=True)


class ReluOnednnCache(NamedTuple):
    y: object  # the output: dx = dy * [y > 0]


class _ReluForward:
    def __init__(self, x):
        self.key = ("relu", R.layout_key(x))
        data = R.describe(x)
        self.attr = R.Attributes()
        self.pd = R.create_pd("dnnl_eltwise_forward_primitive_desc_create", R.engine(), L.FORWARD_TRAINING,
                              L.ELTWISE_RELU_USE_DST_FOR_BWD, data.handle, data.handle, 0.0, 0.0, self.attr.handle)
        self.data_md = self.pd.md(L.QUERY_SRC_MD)
        self.primitive = R.Primitive(self.pd, {L.ARG_SRC: self.data_md, L.ARG_DST: self.pd.md(L.QUERY_DST_MD)},
                                     "relu forward")


class _ReluBackward:
    def __init__(self, fwd: _ReluForward):
        self.key = ("relu_backward", fwd.key)
        self.attr = R.Attributes()
        md = fwd.data_md
        self.pd = R.create_pd("dnnl_eltwise_backward_primitive_desc_create", R.engine(),
                              L.ELTWISE_RELU_USE_DST_FOR_BWD, md, md, md, 0.0, 0.0, fwd.pd.handle, self.attr.handle)
        self.primitive = R.Primitive(self.pd, {L.ARG_DST: md, L.ARG_DIFF_DST: md, L.ARG_DIFF_SRC: md}, "relu backward")


@R.small_calls_on_one_thread(lambda x: 2 * x.nbytes)
def relu_forward(x):
    """``y = max(x, 0)``; return ``(y, cache)`` with ``cache = y``, as the reference.

    Shape:
        x: any shape -> y: same shape (and memory order) as x
    """
    x = _readable(x)
    fwd = R.cached(("relu_forward", R.layout_key(x)), lambda: _ReluForward(x))
    y = _like(x)
    fwd.primitive.run({L.ARG_SRC: x, L.ARG_DST: y})
    return y, ReluOnednnCache(y)


@R.small_calls_on_one_thread(lambda dy, cache: 3 * dy.nbytes)
def relu_backward(dy, cache: ReluOnednnCache):
    """``dx = dy * [y > 0]`` (the subgradient at 0 is 0, as in PyTorch).

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    y = cache.y
    fwd = R.cached(("relu_forward", R.layout_key(y)), lambda: _ReluForward(y))
    bwd = R.cached(("relu_backward", fwd.key), lambda: _ReluBackward(fwd))
    diff_dst = converted(dy, fwd.data_md, (bwd.key, "diff_dst"))
    dx = _like(y)
    bwd.primitive.run({L.ARG_DST: y, L.ARG_DIFF_DST: diff_dst, L.ARG_DIFF_SRC: dx})
    return dx


# -- the residual sum ------------------------------------------------------------------------------
def add_decline(a, b, relu=False):
    """Why oneDNN will not add these (None when it will); with ``relu``, one sum of each input."""
    reason = _decline_input(a, b)
    if reason:
        return reason
    if tuple(a.shape) != tuple(b.shape):
        return f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)} (no broadcasting here)"
    if relu and has_data(a) and not (_no_nan_nor_minus_inf(a) and _no_nan_nor_minus_inf(b)):
        return "inputs hold NaN or -inf (a NaN after the sum would become 0 in oneDNN's ReLU)"
    return None


def _no_nan_nor_minus_inf(a) -> bool:
    """``min(a)`` is finite: no NaN, no -inf. Then ``a + b`` holds no NaN either (that needs a NaN,
    or +inf meeting -inf), and one pass per input suffices."""
    low = lowest(a)
    return low == low and low != -np.inf


def add_memory(a, b, relu=False) -> LayerMemory:
    """With a ReLU the output is kept for its mask; backward makes one masked gradient."""
    if not relu:
        return LayerMemory()
    return LayerMemory(keeps_output=True, backward_temp=a.nbytes)


class _Add:
    def __init__(self, a, relu: bool):
        self.key = ("add", R.layout_key(a), relu)
        data = R.describe(a)
        self.attr = R.Attributes(("relu",) if relu else ())
        self.pd = R.create_pd("dnnl_binary_primitive_desc_create", R.engine(), L.BINARY_ADD, data.handle,
                              data.handle, data.handle, self.attr.handle)
        self.data_md = self.pd.md(L.QUERY_SRC_MD)
        self.primitive = R.Primitive(self.pd, {L.ARG_SRC: self.data_md, L.ARG_SRC_1: self.data_md,
                                               L.ARG_DST: self.data_md}, "add")


class AddOnednnCache(NamedTuple):
    y: object  # the output, when a ReLU followed the sum (its mask), else None


@R.small_calls_on_one_thread(lambda a, b, relu=False: 3 * a.nbytes)
def add_forward(a, b, relu=False):
    """``y = a + b``, or ``max(a + b, 0)`` with ``relu``; return ``(y, cache)``.

    Shape:
        a, b: the same shape -> y: that shape, in the memory order of ``a``
    """
    a = _readable(a)
    add = R.cached(("add_forward", R.layout_key(a), bool(relu)), lambda: _Add(a, bool(relu)))
    b = converted(b, add.data_md, (add.key, "src_1"))
    y = _like(a)
    add.primitive.run({L.ARG_SRC: a, L.ARG_SRC_1: b, L.ARG_DST: y})
    return y, AddOnednnCache(y if relu else None)


def add_backward(dy, cache: AddOnednnCache, need_da=True, need_db=True):
    """Return ``(da, db)``: the sum hands ``dy`` (masked by ``y > 0`` after a ReLU) to both inputs.

    The two are the same array, not copied (as in the reference).

    Shape:
        dy: the output's shape -> da, db: the same
    """
    grad = dy if cache.y is None else relu_backward(dy, ReluOnednnCache(cache.y))
    return (grad if need_da else None), (grad if need_db else None)
