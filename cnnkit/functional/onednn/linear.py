"""The fully connected layer through oneDNN's inner product: forward, input and weight gradients.

Same arguments and results as :mod:`cnnkit.functional.linear` (``linear_forward(x, weight, bias)
-> (y, cache)``, ``linear_backward(dy, cache, need_dx, need_dweight, need_dbias)``). The weight
stays in PyTorch's ``(out, in)`` layout (oneDNN's ``oi``/``ab``): no reorder per call, and the
weight gradient comes out in the same layout.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..memory import LayerMemory
from . import library as L
from . import runtime as R
from .checks import array_reason, first_reason, unavailable


def linear_decline(x, weight, bias=None):
    """Why oneDNN will not run this product (None when it will)."""
    reason = first_reason(unavailable(), array_reason("input", x, (2,)), array_reason("weight", weight, (2,)),
                          array_reason("bias", bias))
    if reason is None and x.shape[0] == 0:
        return "empty batch"
    return reason


def linear_memory(x, weight, bias=None) -> LayerMemory:
    """The cache references x and the weight; backward makes the weight and bias gradients and
    the layer copies them into ``.grad``."""
    return LayerMemory(keeps_input=True, backward_temp=2 * weight.size * 4)


class _Linear:
    """The three primitives of one shape (forward, backward data, backward weights)."""

    def __init__(self, n: int, features_in: int, features_out: int, bias: bool):
        self.key = ("linear", n, features_in, features_out, bias)
        src = R.MemoryDesc.from_tag((n, features_in), L.TAG_AB)
        weights = R.MemoryDesc.from_tag((features_out, features_in), L.TAG_AB)
        self.bias_md = R.MemoryDesc.from_tag((features_out,), L.TAG_A)
        dst = R.MemoryDesc.from_tag((n, features_out), L.TAG_AB)
        self.mds = (src, weights, dst)
        bias_handle = self.bias_md.handle if bias else None
        self.attr = R.Attributes()
        self.forward_pd = R.create_pd("dnnl_inner_product_forward_primitive_desc_create", R.engine(),
                                      L.FORWARD_TRAINING, src.handle, weights.handle, bias_handle, dst.handle,
                                      self.attr.handle)
        args = {L.ARG_SRC: src.handle, L.ARG_WEIGHTS: weights.handle, L.ARG_DST: dst.handle}
        if bias:
            args[L.ARG_BIAS] = bias_handle
        self.forward = R.Primitive(self.forward_pd, args, "inner product forward")
        self._data = self._weights = None
        self.bias = bias

    def backward_data(self) -> R.Primitive:
        if self._data is None:
            src, weights, dst = self.mds
            pd = R.create_pd("dnnl_inner_product_backward_data_primitive_desc_create", R.engine(), src.handle,
                             weights.handle, dst.handle, self.forward_pd.handle, self.attr.handle)
            self._data = R.Primitive(pd, {L.ARG_DIFF_SRC: src.handle, L.ARG_WEIGHTS: weights.handle,
                                          L.ARG_DIFF_DST: dst.handle}, "inner product backward data")
        return self._data

    def backward_weights(self) -> R.Primitive:
        if self._weights is None:
            src, weights, dst = self.mds
            bias = self.bias_md.handle
            pd = R.create_pd("dnnl_inner_product_backward_weights_primitive_desc_create", R.engine(), src.handle,
                             weights.handle, bias, dst.handle, self.forward_pd.handle, self.attr.handle)
            self._weights = R.Primitive(pd, {L.ARG_SRC: src.handle, L.ARG_DIFF_WEIGHTS: weights.handle,
                                             L.ARG_DIFF_BIAS: bias, L.ARG_DIFF_DST: dst.handle},
                                        "inner product backward weights")
        return self._weights


class LinearOnednnCache(NamedTuple):
    x: object
    weight: object
    primitives: _Linear


def _c(a):
    return np.ascontiguousarray(a, dtype=np.float32)


@R.small_calls_on_one_thread(lambda x, weight, bias=None: x.nbytes + weight.nbytes)
def linear_forward(x, weight, bias=None):
    """Return ``(y, cache)``, ``y = x W^T + b``.

    Shape:
        x: (N, in_features), weight: (out_features, in_features), bias: (out_features,)
        y: (N, out_features)
    """
    x, weight = _c(x), _c(weight)
    (n, features_in), features_out = x.shape, weight.shape[0]
    ops = R.cached(("linear", n, features_in, features_out, bias is not None),
                   lambda: _Linear(n, features_in, features_out, bias is not None))
    y = np.empty((n, features_out), dtype=np.float32)
    buffers = {L.ARG_SRC: x, L.ARG_WEIGHTS: weight, L.ARG_DST: y}
    if bias is not None:
        buffers[L.ARG_BIAS] = _c(bias)
    ops.forward.run(buffers)
    return y, LinearOnednnCache(x, weight, ops)


@R.small_calls_on_one_thread(lambda dy, cache, *a, **k: dy.nbytes + cache.x.nbytes + cache.weight.nbytes)
def linear_backward(dy, cache: LinearOnednnCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None``.

    The weight-gradient primitive computes the bias gradient along (always: it is one sum).

    Shape:
        dy: (N, out_features) -> dx: (N, in_features), dweight: (out, in), dbias: (out,)
    """
    x, weight, ops = cache
    dy = _c(dy)
    dx = dweight = dbias = None
    if need_dx:
        dx = np.empty(x.shape, dtype=np.float32)
        ops.backward_data().run({L.ARG_DIFF_SRC: dx, L.ARG_WEIGHTS: weight, L.ARG_DIFF_DST: dy})
    if need_dweight or need_dbias:
        dweight_all = np.empty(weight.shape, dtype=np.float32)
        dbias_all = np.empty(weight.shape[0], dtype=np.float32)
        ops.backward_weights().run({L.ARG_SRC: x, L.ARG_DIFF_WEIGHTS: dweight_all, L.ARG_DIFF_BIAS: dbias_all,
                                    L.ARG_DIFF_DST: dy})
        dweight = dweight_all if need_dweight else None
        dbias = dbias_all if need_dbias else None
    return dx, dweight, dbias
