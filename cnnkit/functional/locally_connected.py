"""Locally connected layer: a convolution whose filters are *not* shared across positions.

Every output position ``(oy, ox)`` has its own filter bank (DeepFace, and the notes' "locally
connected" layer, where parameter sharing is dropped because different image regions need
different features)::

    y[n, f, oy, ox] = b[f, oy, ox] + sum_{c, i, j} w[oy, ox, f, c, i, j] * x_pad[n, c, oy*sh + i*dh, ox*sw + j*dw]

Weight layout ``(out_h, out_w, out_channels, in_channels, kh, kw)``: position-major, and per
position the PyTorch conv layout ``(out, in, kh, kw)``, so ``weight[oy, ox]`` is an ordinary conv
filter bank. Bias ``(out_channels, out_h, out_w)``, laid out like one sample's output.

With the columns arranged position-major, ``cols (P, N, K)``, the layer is one batched GEMM over the
``P = out_h*out_w`` positions: ``y_p = cols_p (N, K) @ w_p^T (K, F)``. No loop over positions.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import array_module
from .im2col import col2im, sliding_windows
from .memory import LayerMemory
from .shapes import pair
from .parallel import threaded_matmul


class LocallyConnected2dCache(NamedTuple):
    cols: object  # (P, N, K): the receptive fields, position-major
    weight: object  # (out_h, out_w, F, C, kh, kw)
    input_shape: tuple
    stride: object
    padding: object
    dilation: object


def locally_connected2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Return ``(y, cache)``.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.conv.locally_connected_naive`.

    Shape:
        x: (N, C, H, W), weight: (out_h, out_w, F, C, kh, kw), bias: (F, out_h, out_w)
        -> y: (N, F, out_h, out_w)
        out_h = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1, likewise out_w; the weight's
        (out_h, out_w) must equal these.
    """
    xp = array_module(x)
    n, c, h, w = x.shape
    out_h, out_w, f, cw, kh, kw = weight.shape
    windows = sliding_windows(x, (kh, kw), stride, padding, dilation)  # (N, C, kh, kw, oh, ow)
    if windows.shape[4:] != (out_h, out_w) or cw != c:
        raise ValueError(
            f"locally_connected2d: weight of shape {tuple(weight.shape)} expects {cw} channels and a "
            f"{out_h}x{out_w} output, but input {tuple(x.shape)} gives {c} channels and "
            f"{windows.shape[4]}x{windows.shape[5]}"
        )
    p, k = out_h * out_w, c * kh * kw
    # One copy, straight into the position-major layout the batched GEMM wants.
    cols = xp.empty((out_h, out_w, n, c, kh, kw), dtype=x.dtype)
    cols[...] = windows.transpose(4, 5, 0, 1, 2, 3)
    cols = cols.reshape(p, n, k)
    weight_pfk = weight.reshape(p, f, k)
    y_pnf = threaded_matmul(cols, weight_pfk.transpose(0, 2, 1))  # (P, N, F)
    y = xp.ascontiguousarray(y_pnf.transpose(1, 2, 0)).reshape(n, f, out_h, out_w)
    if bias is not None:
        y += bias
    return y, LocallyConnected2dCache(cols, weight, (n, c, h, w), stride, padding, dilation)


def locally_connected2d_backward(dy, cache: LocallyConnected2dCache, need_dx=True, need_dweight=True,
                                 need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None`` and is not computed.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.conv.locally_connected_naive_backward`.

    Shape:
        dy: (N, F, out_h, out_w) -> dx: (N, C, H, W), dweight: (out_h, out_w, F, C, kh, kw),
        dbias: (F, out_h, out_w)
        dweight_p = dy_p^T (F, N) @ cols_p (N, K);  dcols_p = dy_p (N, F) @ w_p (F, K);  dx = col2im(dcols)
    """
    xp = array_module(dy)
    cols, weight = cache.cols, cache.weight
    out_h, out_w, f, c, kh, kw = weight.shape
    n = dy.shape[0]
    p, k = out_h * out_w, c * kh * kw
    dbias = dy.sum(axis=0) if need_dbias else None
    if not (need_dweight or need_dx):
        return None, None, dbias
    dy_pnf = xp.ascontiguousarray(dy.reshape(n, f, p).transpose(2, 0, 1))  # (P, N, F)
    dweight = None
    if need_dweight:
        dweight = threaded_matmul(dy_pnf.transpose(0, 2, 1), cols).reshape(weight.shape)
    dx = None
    if need_dx:
        dcols = threaded_matmul(dy_pnf, weight.reshape(p, f, k))  # (P, N, K)
        # A view in col2im's (N, C, kh, kw, out_h, out_w) order; col2im accepts any strides.
        dcols = dcols.reshape(out_h, out_w, n, c, kh, kw).transpose(2, 3, 4, 5, 0, 1)
        dx = col2im(dcols, cache.input_shape, (kh, kw), cache.stride, cache.padding, cache.dilation)
    return dx, dweight, dbias


def locally_connected2d_memory(x, weight, bias=None, stride=1, padding=0, dilation=1) -> LayerMemory:
    """The columns ``(P, N, K)`` are kept for backward; forward also makes the padded input and
    the ``(P, N, F)`` product; backward makes ``dy`` position-major, ``dweight`` (the weight's
    size) and its copy into ``.grad``, and ``dcols`` (the columns' size)."""
    n, c, h, w = x.shape
    out_h, out_w, f, _, kh, kw = weight.shape
    itemsize = x.itemsize
    padding = pair(padding, "padding", "locally_connected2d")
    cols = out_h * out_w * n * c * kh * kw * itemsize
    padded = n * c * (h + 2 * padding[0]) * (w + 2 * padding[1]) * itemsize if any(padding) else 0
    product = n * f * out_h * out_w * itemsize
    return LayerMemory(saved=cols, forward_temp=padded + product,
                       backward_temp=product + 2 * weight.size * itemsize + cols)
