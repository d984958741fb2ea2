"""Fully connected layer: ``y = x W^T + b``, one GEMM forward and two GEMMs backward."""
from __future__ import annotations


def linear_forward(x, weight, bias=None):
    """Return ``(y, cache)``.

    Shape:
        x: (N, in_features), weight: (out_features, in_features), bias: (out_features,)
        y: (N, out_features)
    """
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y, (x, weight)


def linear_backward(dy, cache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None``.

    Shape:
        dy: (N, out_features) -> dx: (N, in_features), dweight: (out, in), dbias: (out,)
    """
    x, weight = cache
    dx = dy @ weight if need_dx else None
    dweight = dy.T @ x if need_dweight else None
    dbias = dy.sum(axis=0) if need_dbias else None
    return dx, dweight, dbias
