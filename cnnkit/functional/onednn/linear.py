"""The fully connected layer through oneDNN's matmul: forward, input and weight gradients.

Same arguments and results as :mod:`cnnkit.functional.linear` (``linear_forward(x, weight, bias)
-> (y, cache)``, ``linear_backward(dy, cache, need_dx, need_dweight, need_dbias)``), as three
matrix products on the arrays as they lie, transposes included (a transpose is a strided view,
which oneDNN's matmul reads without a copy)::

    y = x @ W^T + b,    dx = dy @ W,    dW = dy^T @ x,    db = sum(dy, axis=0)

The weight stays in PyTorch's ``(out, in)`` layout. oneDNN's *inner product* primitive was
measured first and dropped: with the weight in that layout it ran a 64x4096x4096 product in 36 ms,
its matmul (brgemm kernels) in 14 ms. Small products (under ``SMALL_MACS``) are left to NumPy
(a ``defer``): one BLAS call beats a trip through two threads there.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..memory import LayerMemory
from . import library as L
from . import runtime as R
from .checks import array_reason, first_reason, unavailable

# Below this many multiply-adds NumPy's single BLAS call was faster (128x400 -> 120: 0.10 ms
# against 0.20 ms; 16x512 -> 1000: 0.37 against 0.56 ms).
SMALL_MACS = 1 << 24


def linear_decline(x, weight, bias=None):
    """Why oneDNN will not run this product (None when it will)."""
    reason = first_reason(unavailable(), array_reason("input", x, (2,)), array_reason("weight", weight, (2,)),
                          array_reason("bias", bias))
    if reason is None and x.shape[0] == 0:
        return "empty batch"
    return reason


def linear_defer(x, weight, bias=None):
    """Small products run faster as one NumPy call."""
    macs = x.shape[0] * weight.shape[0] * weight.shape[1]
    if macs < SMALL_MACS:
        return f"{macs} multiply-adds: NumPy's one BLAS call is faster below {SMALL_MACS}"
    return None


def linear_memory(x, weight, bias=None) -> LayerMemory:
    """The cache references x and the weight; backward makes the weight gradient and the layer
    copies it into ``.grad``."""
    return LayerMemory(keeps_input=True, backward_temp=2 * weight.size * 4)


def _matmul(a_shape, a_strides, b_shape, b_strides, with_bias: bool) -> R.Primitive:
    """A matmul primitive ``(M, K) @ (K, N) -> (M, N)`` (C order) for operands with these strides."""
    a = R.MemoryDesc.from_strides(a_shape, a_strides)
    b = R.MemoryDesc.from_strides(b_shape, b_strides)
    out = R.MemoryDesc.from_tag((a_shape[0], b_shape[1]), L.TAG_AB)
    bias = R.MemoryDesc.from_tag((1, b_shape[1]), L.TAG_AB) if with_bias else None
    attr = R.Attributes()
    pd = R.create_pd("dnnl_matmul_primitive_desc_create", R.engine(), a.handle, b.handle,
                     bias.handle if bias else None, out.handle, attr.handle)
    args = {L.ARG_SRC: a.handle, L.ARG_WEIGHTS: b.handle, L.ARG_DST: out.handle}
    if with_bias:
        args[L.ARG_BIAS] = bias.handle
    return R.Primitive(pd, args, "matmul")


class LinearOnednnCache(NamedTuple):
    x: object
    weight: object


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
    (n, k), m = x.shape, weight.shape[0]
    product = R.cached(("linear_forward", n, k, m, bias is not None),
                       lambda: _matmul((n, k), (k, 1), (k, m), (1, k), bias is not None))  # W^T: a view
    y = np.empty((n, m), dtype=np.float32)
    buffers = {L.ARG_SRC: x, L.ARG_WEIGHTS: weight, L.ARG_DST: y}
    if bias is not None:
        buffers[L.ARG_BIAS] = _c(bias)
    product.run(buffers)
    return y, LinearOnednnCache(x, weight)


@R.small_calls_on_one_thread(lambda dy, cache, *a, **k: dy.nbytes + cache.x.nbytes + cache.weight.nbytes)
def linear_backward(dy, cache: LinearOnednnCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None``.

    Shape:
        dy: (N, out_features) -> dx: (N, in_features), dweight: (out, in), dbias: (out,)
    """
    x, weight = cache
    dy = _c(dy)
    (n, k), m = x.shape, weight.shape[0]
    dx = dweight = dbias = None
    if need_dx:  # dy (N, M) @ W (M, K)
        product = R.cached(("linear_backward_data", n, k, m), lambda: _matmul((n, m), (m, 1), (m, k), (k, 1), False))
        dx = np.empty((n, k), dtype=np.float32)
        product.run({L.ARG_SRC: dy, L.ARG_WEIGHTS: weight, L.ARG_DST: dx})
    if need_dweight:  # dy^T (M, N) @ x (N, K), dy^T a view
        product = R.cached(("linear_backward_weights", n, k, m),
                           lambda: _matmul((m, n), (1, m), (n, k), (k, 1), False))
        dweight = np.empty((m, k), dtype=np.float32)
        product.run({L.ARG_SRC: dy, L.ARG_WEIGHTS: x, L.ARG_DST: dweight})
    if need_dbias:
        dbias = dy.sum(axis=0)
    return dx, dweight, dbias
