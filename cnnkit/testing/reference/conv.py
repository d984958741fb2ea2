"""Naive convolution and locally connected layers: the textbook sums as plain loops.

Each output is the dot product of one filter with one receptive field of the zero-padded input::

    y[n, f, oy, ox] = b[f] + sum_{c, i, j} w[f, c, i, j] * x_pad[n, g*Cg + c, oy*sh + i*dh, ox*sw + j*dw]

where ``g = f // (F/groups)`` is the group of filter ``f`` and ``Cg = C/groups``. The backward
pass sends each ``dy`` entry back along the same products. Slow on purpose: tests hold the fast
kernels in :mod:`cnnkit.functional.conv` equal to these.
"""
from __future__ import annotations

import numpy as np

from ...functional.shapes import conv_output_size, pair


def _geometry(x_shape, kernel, stride, padding, dilation):
    (kh, kw), (sh, sw) = pair(kernel, "kernel", "naive"), pair(stride, "stride", "naive")
    (ph, pw), (dh, dw) = pair(padding, "padding", "naive"), pair(dilation, "dilation", "naive")
    out_h = conv_output_size(x_shape[2], kh, sh, ph, dh, check_geometry=False)
    out_w = conv_output_size(x_shape[3], kw, sw, pw, dw, check_geometry=False)
    return (kh, kw), (sh, sw), (ph, pw), (dh, dw), (out_h, out_w)


def _window(oy, ox, kernel, stride, dilation):
    """The slices of the padded input read by output ``(oy, ox)``."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    rows = slice(oy * sh, oy * sh + dh * (kh - 1) + 1, dh)
    cols = slice(ox * sw, ox * sw + dw * (kw - 1) + 1, dw)
    return rows, cols


def _pad(x, padding):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def conv2d_naive(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Convolution by four nested loops (image, filter, output row, output column).

    Shape:
        x: (N, C, H, W), w: (F, C/groups, kh, kw), b: (F,) -> y: (N, F, out_h, out_w)
    """
    n_images, _, _, _ = x.shape
    n_filters, cg, _, _ = w.shape
    kernel, stride, padding, dilation, (out_h, out_w) = _geometry(x.shape, w.shape[2:], stride, padding, dilation)
    filters_per_group = n_filters // groups
    x_pad = _pad(x, padding)
    y = np.zeros((n_images, n_filters, out_h, out_w), dtype=x.dtype)
    for n in range(n_images):
        for f in range(n_filters):
            g = f // filters_per_group
            channels = slice(g * cg, (g + 1) * cg)
            for oy in range(out_h):
                for ox in range(out_w):
                    rows, cols = _window(oy, ox, kernel, stride, dilation)
                    y[n, f, oy, ox] = np.sum(x_pad[n, channels, rows, cols] * w[f])
            if b is not None:
                y[n, f] += b[f]
    return y


def conv2d_naive_backward(dy, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Gradients ``(dx, dw, db)`` of :func:`conv2d_naive` by the same loops.

    Each ``dy[n, f, oy, ox]`` adds ``dy * w[f]`` to the receptive field it came from (``dx``) and
    ``dy * receptive field`` to the filter (``dw``); ``db[f]`` is the sum of ``dy[:, f]``.
    """
    n_images = x.shape[0]
    n_filters, cg, _, _ = w.shape
    kernel, stride, padding, dilation, (out_h, out_w) = _geometry(x.shape, w.shape[2:], stride, padding, dilation)
    filters_per_group = n_filters // groups
    x_pad = _pad(x, padding)
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    for n in range(n_images):
        for f in range(n_filters):
            g = f // filters_per_group
            channels = slice(g * cg, (g + 1) * cg)
            for oy in range(out_h):
                for ox in range(out_w):
                    rows, cols = _window(oy, ox, kernel, stride, dilation)
                    dx_pad[n, channels, rows, cols] += dy[n, f, oy, ox] * w[f]
                    dw[f] += dy[n, f, oy, ox] * x_pad[n, channels, rows, cols]
    ph, pw = padding
    dx = dx_pad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


def locally_connected_naive(x, w, b=None, stride=1, padding=0, dilation=1):
    """Locally connected layer (unshared filters) by loops over positions.

    Shape:
        x: (N, C, H, W), w: (out_h, out_w, F, C, kh, kw), b: (F, out_h, out_w) -> y: (N, F, out_h, out_w)
        y[n, f, oy, ox] = b[f, oy, ox] + sum_{c, i, j} w[oy, ox, f, c, i, j] * x_pad[n, c, oy*sh + i*dh, ox*sw + j*dw]
    """
    out_h, out_w, n_filters = w.shape[:3]
    kernel, stride, padding, dilation, _ = _geometry(x.shape, w.shape[4:], stride, padding, dilation)
    x_pad = _pad(x, padding)
    y = np.zeros((x.shape[0], n_filters, out_h, out_w), dtype=x.dtype)
    for n in range(x.shape[0]):
        for f in range(n_filters):
            for oy in range(out_h):
                for ox in range(out_w):
                    rows, cols = _window(oy, ox, kernel, stride, dilation)
                    y[n, f, oy, ox] = np.sum(x_pad[n, :, rows, cols] * w[oy, ox, f])
    if b is not None:
        y += b
    return y


def locally_connected_naive_backward(dy, x, w, stride=1, padding=0, dilation=1):
    """Gradients ``(dx, dw, db)`` of :func:`locally_connected_naive` by the same loops."""
    out_h, out_w, n_filters = w.shape[:3]
    kernel, stride, padding, dilation, _ = _geometry(x.shape, w.shape[4:], stride, padding, dilation)
    x_pad = _pad(x, padding)
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    for n in range(x.shape[0]):
        for f in range(n_filters):
            for oy in range(out_h):
                for ox in range(out_w):
                    rows, cols = _window(oy, ox, kernel, stride, dilation)
                    dx_pad[n, :, rows, cols] += dy[n, f, oy, ox] * w[oy, ox, f]
                    dw[oy, ox, f] += dy[n, f, oy, ox] * x_pad[n, :, rows, cols]
    ph, pw = padding
    dx = dx_pad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    return dx, dw, dy.sum(axis=0)
