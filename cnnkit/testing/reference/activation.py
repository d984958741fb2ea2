"""Naive activations: the formula applied to one number at a time, and the softmax Jacobian
written out in full. Slow on purpose; the tests hold :mod:`cnnkit.functional.activation` equal to
these."""
from __future__ import annotations

import math

import numpy as np


def _elementwise(f, x):
    """Apply the scalar function ``f`` to every element of ``x`` (result in the dtype of ``x``)."""
    y = np.empty_like(x)
    for index in np.ndindex(x.shape):
        y[index] = f(float(x[index]))
    return y


def relu(x):
    return _elementwise(lambda v: v if v > 0 else 0.0, x)


def relu_grad(x, dy):
    """``dx`` for ``dy``: the derivative is 1 where ``x > 0`` and 0 elsewhere (0 at 0)."""
    return _elementwise(lambda v: 1.0 if v > 0 else 0.0, x) * dy


def leaky_relu(x, negative_slope=0.01):
    return _elementwise(lambda v: v if v > 0 else negative_slope * v, x)


def leaky_relu_grad(x, dy, negative_slope=0.01):
    return _elementwise(lambda v: 1.0 if v > 0 else negative_slope, x) * dy


def tanh(x):
    return _elementwise(math.tanh, x)


def tanh_grad(x, dy):
    return _elementwise(lambda v: 1.0 - math.tanh(v) ** 2, x) * dy


def _sigmoid(v):
    # the two algebraically equal forms, each used where its exp cannot overflow
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


def sigmoid(x):
    return _elementwise(_sigmoid, x)


def sigmoid_grad(x, dy):
    return _elementwise(lambda v: _sigmoid(v) * (1.0 - _sigmoid(v)), x) * dy


def _rows(x, axis):
    """Move ``axis`` last and view the array as rows along it (a copy, for the loops)."""
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(-1, moved.shape[-1]).copy(), moved.shape


def _unrows(rows, moved_shape, axis):
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)


def _softmax_row(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def softmax(x, axis=1):
    rows, shape = _rows(x, axis)
    for r in range(rows.shape[0]):
        rows[r] = _softmax_row([float(v) for v in rows[r]])
    return _unrows(rows, shape, axis)


def log_softmax(x, axis=1):
    rows, shape = _rows(x, axis)
    for r in range(rows.shape[0]):
        row = [float(v) for v in rows[r]]
        top = max(row)
        log_total = math.log(sum(math.exp(v - top) for v in row))
        rows[r] = [v - top - log_total for v in row]
    return _unrows(rows, shape, axis)


def softmax_grad(x, dy, axis=1):
    """``dx = J^T dy`` with the full Jacobian ``J[i][j] = s_i (delta_ij - s_j)``, row by row."""
    xr, shape = _rows(x, axis)
    dyr, _ = _rows(dy, axis)
    dx = np.empty_like(xr)
    for r in range(xr.shape[0]):
        s = _softmax_row([float(v) for v in xr[r]])
        for j in range(len(s)):
            dx[r, j] = sum(float(dyr[r, i]) * s[i] * ((1.0 if i == j else 0.0) - s[j]) for i in range(len(s)))
    return _unrows(dx, shape, axis)


def log_softmax_grad(x, dy, axis=1):
    """``dx = J^T dy`` with ``J[i][j] = delta_ij - s_j`` (derivative of ``log s_i`` by ``x_j``)."""
    xr, shape = _rows(x, axis)
    dyr, _ = _rows(dy, axis)
    dx = np.empty_like(xr)
    for r in range(xr.shape[0]):
        s = _softmax_row([float(v) for v in xr[r]])
        for j in range(len(s)):
            dx[r, j] = sum(float(dyr[r, i]) * ((1.0 if i == j else 0.0) - s[j]) for i in range(len(s)))
    return _unrows(dx, shape, axis)
