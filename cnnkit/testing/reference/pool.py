"""Naive pooling: one Python loop per batch item, channel, output position and window tap.

Written straight from PyTorch's CPU kernels (``aten/src/ATen/native/cpu/*Pool*``) so the tests can
hold the fast kernels in ``cnnkit.functional.pool`` equal to them, ties and edges included. The
output size is derived here independently (PyTorch's ``pooling_output_shape``) rather than taken
from ``cnnkit.functional.shapes``, so the two are checked against each other too.

Every function takes ``x`` of shape ``(N, C, H, W)`` and per-axis ``(h, w)`` pairs (or ints).
"""
from __future__ import annotations

import math

import numpy as np


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def pooling_output_size(size, kernel, stride, padding, dilation=1, ceil_mode=False):
    """PyTorch's ``pooling_output_shape``, literally."""
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1  # the last window would start in the right padding
    return out


def _arguments(x, kernel_size, stride, padding, dilation, ceil_mode):
    kernel = _pair(kernel_size)
    stride = kernel if stride is None else _pair(stride)
    padding, dilation = _pair(padding), _pair(dilation)
    out = tuple(pooling_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                for a in range(2))
    return kernel, stride, padding, dilation, out


# -- max ----------------------------------------------------------------------------------------

def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Return ``(y, indices)``; ``indices`` is the flat ``ih*W + iw`` of each output's choice."""
    n_batch, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw), (oh_size, ow_size) = _arguments(
        x, kernel_size, stride, padding, dilation, ceil_mode)
    y = np.empty((n_batch, channels, oh_size, ow_size), dtype=x.dtype)
    indices = np.empty(y.shape, dtype=np.int64)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(oh_size):
                for ow in range(ow_size):
                    taps = [(oh * sh - ph + i * dh, ow * sw - pw + j * dw) for i in range(kh) for j in range(kw)]
                    real = [(ih, iw) for ih, iw in taps if 0 <= ih < height and 0 <= iw < width]
                    best, best_index = -math.inf, real[0][0] * width + real[0][1]
                    for ih, iw in real:  # scan order: row by row
                        value = x[n, c, ih, iw]
                        if value > best or math.isnan(value):  # strict: the first maximum wins ties
                            best, best_index = value, ih * width + iw
                    y[n, c, oh, ow] = best
                    indices[n, c, oh, ow] = best_index
    return y, indices


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Each output's gradient goes to the one input it chose."""
    _, indices = max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    dx = np.zeros_like(x)
    width = x.shape[3]
    for n, c, oh, ow in np.ndindex(*dy.shape):
        index = indices[n, c, oh, ow]
        dx[n, c, index // width, index % width] += dy[n, c, oh, ow]
    return dx


# -- average ------------------------------------------------------------------------------------

def _avg_windows(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Yield ``(n, c, oh, ow, rows, cols, divisor)`` with the clipped window and PyTorch's divisor."""
    n_batch, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), _, (oh_size, ow_size) = _arguments(x, kernel_size, stride, padding, 1, ceil_mode)
    for n in range(n_batch):
        for c in range(channels):
            for oh in range(oh_size):
                for ow in range(ow_size):
                    hstart, wstart = oh * sh - ph, ow * sw - pw
                    hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
                    pool_size = (hend - hstart) * (wend - wstart)
                    hstart, wstart = max(hstart, 0), max(wstart, 0)
                    hend, wend = min(hend, height), min(wend, width)
                    if divisor_override is not None:
                        divisor = divisor_override
                    elif count_include_pad:
                        divisor = pool_size
                    else:
                        divisor = (hend - hstart) * (wend - wstart)
                    yield n, c, oh, ow, range(hstart, hend), range(wstart, wend), divisor


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    shape = _arguments(x, kernel_size, stride, padding, 1, ceil_mode)[-1]
    y = np.empty(x.shape[:2] + shape, dtype=x.dtype)
    for n, c, oh, ow, rows, cols, divisor in _avg_windows(
            x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        total = 0.0
        for ih in rows:
            for iw in cols:
                total += x[n, c, ih, iw]
        y[n, c, oh, ow] = total / divisor
    return y


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    dx = np.zeros_like(x)
    for n, c, oh, ow, rows, cols, divisor in _avg_windows(
            x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
        for ih in rows:
            for iw in cols:
                dx[n, c, ih, iw] += dy[n, c, oh, ow] / divisor
    return dx


# -- LP -----------------------------------------------------------------------------------------

def lp_pool2d(x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """``(avg_pool2d(x^p) * KH*KW)^(1/p)`` (PyTorch's definition); ``inf``: max of ``|x|``."""
    p = float(norm_type)
    if math.isinf(p):
        sign = 1.0 if p > 0 else -1.0
        return sign * max_pool2d(sign * np.abs(x), kernel_size, stride, 0, 1, ceil_mode)[0]
    kh, kw = _pair(kernel_size)
    return (avg_pool2d(x ** p, kernel_size, stride, 0, ceil_mode) * (kh * kw)) ** (1.0 / p)


def lp_pool2d_backward(dy, x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """Chain rule through ``u = avg(x^p) * K``, ``y = u^(1/p)``; windows with ``u == 0`` get 0."""
    p = float(norm_type)
    if math.isinf(p):
        sign = 1.0 if p > 0 else -1.0
        return max_pool2d_backward(dy, sign * np.abs(x), kernel_size, stride, 0, 1, ceil_mode) * np.sign(x)
    kh, kw = _pair(kernel_size)
    u = avg_pool2d(x ** p, kernel_size, stride, 0, ceil_mode) * (kh * kw)
    du = np.zeros_like(u)
    for index in np.ndindex(*u.shape):
        if u[index] != 0:
            du[index] = dy[index] * (1.0 / p) * u[index] ** (1.0 / p - 1)
    d_power = avg_pool2d_backward(du * (kh * kw), x, kernel_size, stride, 0, ceil_mode)
    return d_power * p * x ** (p - 1)


# -- adaptive average ---------------------------------------------------------------------------

def _adaptive_sizes(x, output_size):
    sizes = (output_size, output_size) if output_size is None or isinstance(output_size, int) else output_size
    return tuple(x.shape[2 + a] if s is None else s for a, s in enumerate(sizes))


def _bin(i, in_size, out_size):
    return math.floor(i * in_size / out_size), math.ceil((i + 1) * in_size / out_size)


def adaptive_avg_pool2d(x, output_size):
    n_batch, channels, height, width = x.shape
    oh_size, ow_size = _adaptive_sizes(x, output_size)
    y = np.empty((n_batch, channels, oh_size, ow_size), dtype=x.dtype)
    for n, c, oh, ow in np.ndindex(*y.shape):
        (h0, h1), (w0, w1) = _bin(oh, height, oh_size), _bin(ow, width, ow_size)
        y[n, c, oh, ow] = x[n, c, h0:h1, w0:w1].sum() / ((h1 - h0) * (w1 - w0))
    return y


def adaptive_avg_pool2d_backward(dy, x, output_size):
    n_batch, channels, height, width = x.shape
    oh_size, ow_size = _adaptive_sizes(x, output_size)
    dx = np.zeros_like(x)
    for n, c, oh, ow in np.ndindex(*dy.shape):
        (h0, h1), (w0, w1) = _bin(oh, height, oh_size), _bin(ow, width, ow_size)
        dx[n, c, h0:h1, w0:w1] += dy[n, c, oh, ow] / ((h1 - h0) * (w1 - w0))
    return dx
