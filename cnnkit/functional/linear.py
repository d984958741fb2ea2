"""Fully connected layer: ``y = x W^T + b``, one GEMM forward and two GEMMs backward.

The GEMMs go through ``threaded_matmul`` (one BLAS thread per core, split by cnnkit), like
every GEMM of a training step; see :mod:`cnnkit.functional.parallel` for why.
"""
from __future__ import annotations

from typing import NamedTuple

from .memory import LayerMemory
from .parallel import threaded_matmul
from .registry import Kernel, define_op


class LinearCache(NamedTuple):
    x: object
    weight: object


def linear_forward(x, weight, bias=None):
    """Return ``(y, cache)``.

    Shape:
        x: (N, in_features), weight: (out_features, in_features), bias: (out_features,)
        y: (N, out_features)
    """
    y = threaded_matmul(x, weight.T)
    if bias is not None:
        y += bias
    return y, LinearCache(x, weight)


def linear_backward(dy, cache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None``.

    Shape:
        dy: (N, out_features) -> dx: (N, in_features), dweight: (out, in), dbias: (out,)
    """
    x, weight = cache
    dx = threaded_matmul(dy, weight) if need_dx else None
    dweight = threaded_matmul(dy.T, x) if need_dweight else None
    dbias = dy.sum(axis=0) if need_dbias else None
    return dx, dweight, dbias


def linear_memory(x, weight, bias=None) -> LayerMemory:
    """The cache references x and the weight; backward makes dweight then copies it into .grad."""
    return LayerMemory(keeps_input=True, backward_temp=2 * weight.size * x.itemsize)


LINEAR = define_op("linear", reference="numpy")
LINEAR.register(Kernel("numpy", "numpy", 0, linear_forward, linear_backward, LinearCache, memory=linear_memory,
                       doc="one GEMM forward, two backward"))
