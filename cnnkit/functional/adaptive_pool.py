"""Adaptive average pooling: a fixed output size, bin ``i`` covering ``[floor(i*H/OH),
ceil((i+1)*H/OH))`` (PyTorch's bins).

When the output divides the input the bins are equal blocks (a reshape and a mean); otherwise the
pooling is separable, ``y = P_h @ x @ P_w^T`` with per-axis bin-averaging matrices, and a
non-finite input falls back to averaging bin by bin (the product would spread 0 * inf = NaN).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import array_module
from .memory import LayerMemory


class AdaptiveAvgPoolCache(NamedTuple):
    input_shape: tuple
    matrices: object  # None for equal blocks, else the (rows, cols) bin-averaging matrices


def adaptive_bins(in_size: int, out_size: int):
    """PyTorch's bins: ``start = floor(i*in/out)``, ``end = ceil((i+1)*in/out)`` for each output ``i``."""
    i = np.arange(out_size)
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    return start, end


def adaptive_pool_matrix(in_size: int, out_size: int, dtype):
    """The ``(out, in)`` matrix that averages each bin: row ``i`` is ``1/len`` on its bin."""
    start, end = adaptive_bins(in_size, out_size)
    positions = np.arange(in_size)
    inside = (positions >= start[:, None]) & (positions < end[:, None])
    return (inside / (end - start)[:, None]).astype(dtype)


# The largest output side of adaptive pooling: 65536, beyond any image (ImageNet's largest side is
# a few thousand); the averaging matrices are output x input, so 10**9 would be refused only by a
# MemoryError after allocating.
MAX_ADAPTIVE_OUTPUT = 1 << 16


def adaptive_output_size(input_hw, output_size, layer="adaptive_avg_pool2d") -> tuple[int, int]:
    """Resolve ``output_size`` (int, or pair whose ``None`` entries keep the input size)."""
    if output_size is None or isinstance(output_size, (int, np.integer)):
        sizes = (output_size, output_size)
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        sizes = tuple(output_size)
    else:
        raise ValueError(f"{layer}: output_size must be an int or a pair of ints/None, got {output_size!r}")
    resolved = []
    for size, keep in zip(sizes, input_hw):
        if size is None:
            resolved.append(int(keep))
        elif isinstance(size, (int, np.integer)) and not isinstance(size, bool) and 1 <= size <= MAX_ADAPTIVE_OUTPUT:
            resolved.append(int(size))
        else:
            raise ValueError(
                f"{layer}: output_size entries must be ints from 1 to {MAX_ADAPTIVE_OUTPUT} "
                f"(cnnkit.functional.adaptive_pool.MAX_ADAPTIVE_OUTPUT) or None, got {output_size!r}"
            )
    return tuple(resolved)


def _bin_means(a, out_size: int, axis: int):
    """Adaptive average along ``axis`` (-1 or -2), one bin at a time (the non-finite fallback)."""
    xp = array_module(a)
    start, end = adaptive_bins(a.shape[axis], out_size)
    index = (lambda s, e: (..., slice(s, e))) if axis == -1 else (lambda s, e: (..., slice(s, e), slice(None)))
    return xp.stack([a[index(s, e)].mean(axis=axis) for s, e in zip(start, end)], axis=axis)


def _bin_spread(d, in_size: int, axis: int):
    """The adjoint of :func:`_bin_means`: each bin's gradient shared over its inputs, bin by bin."""
    xp = array_module(d)
    start, end = adaptive_bins(in_size, d.shape[axis])
    shape = list(d.shape)
    shape[axis] = in_size
    out = xp.zeros(shape, dtype=d.dtype)
    for i, (s, e) in enumerate(zip(start, end)):
        if axis == -1:
            out[..., s:e] += d[..., i:i + 1] / (e - s)
        else:
            out[..., s:e, :] += d[..., i:i + 1, :] / (e - s)
    return out


def adaptive_avg_pool2d_forward(x, output_size, *, layer="adaptive_avg_pool2d"):
    """Adaptive average pooling to ``output_size``; return ``(y, cache)``.

    When the output divides the input (global pooling included) the bins are equal blocks and
    ``y`` is a reshape and a mean. Otherwise the bins overlap or differ in length and the pooling
    is separable, ``y = P_h @ x @ P_w^T`` with the per-axis bin-averaging matrices.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.adaptive_avg_pool2d`.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW); bin i covers [floor(i*H/OH), ceil((i+1)*H/OH))
    """
    xp = array_module(x)
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    oh, ow = adaptive_output_size((h, w), output_size, layer)
    if h % oh == 0 and w % ow == 0:
        y = x.reshape(n, c, oh, h // oh, ow, w // ow).mean(axis=(3, 5))
        return y, AdaptiveAvgPoolCache(x.shape, None)
    rows = xp.asarray(adaptive_pool_matrix(h, oh, x.dtype))
    cols = xp.asarray(adaptive_pool_matrix(w, ow, x.dtype))
    with np.errstate(invalid="ignore"):  # inf * 0: handled just below
        y = xp.matmul(rows, xp.matmul(x, cols.T))
    if not xp.isfinite(y).all():
        # The product multiplies every input by the zeros of other bins: 0 * inf = NaN would
        # spread one inf over the whole row. PyTorch keeps it in its bin: average bin by bin.
        y = _bin_means(_bin_means(x, ow, -1), oh, -2)
    return y, AdaptiveAvgPoolCache(x.shape, (rows, cols))


def adaptive_avg_pool2d_backward(dy, cache):
    """``dx = P_h^T @ dy @ P_w`` (equal blocks: ``dy / block area`` repeated over each block).

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.adaptive_avg_pool2d_backward`.

    Shape:
        dy: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    (n, c, h, w), matrices = cache
    xp = array_module(dy)
    if matrices is None:
        oh, ow = dy.shape[2:]
        share = (dy / ((h // oh) * (w // ow))).reshape(n, c, oh, 1, ow, 1)
        return xp.ascontiguousarray(xp.broadcast_to(share, (n, c, oh, h // oh, ow, w // ow))).reshape(n, c, h, w)
    rows, cols = matrices
    if not xp.isfinite(dy).all():  # as in forward: keep a non-finite gradient in its bins
        return _bin_spread(_bin_spread(dy, h, -2), w, -1)
    return xp.matmul(rows.T, xp.matmul(dy, cols))


def adaptive_avg_pool2d_memory(x, output_size, **options):
    """The cache is the input shape (and small pooling matrices); backward is two small GEMMs."""
    n, c = x.shape[:2]
    oh, ow = adaptive_output_size(tuple(x.shape[2:]), output_size)
    return LayerMemory(backward_temp=n * c * oh * ow * x.itemsize)
