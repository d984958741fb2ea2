"""2-D convolution (cross-correlation, as in every CNN library): im2col + one GEMM.

Forward, for group ``g`` with ``Fg = F/groups`` filters over ``Cg = C/groups`` channels::

    y[n, f, oy, ox] = b[f] + sum_{c, i, j} w[f, c, i, j] * x_pad[n, g*Cg + c, oy*sh + i*dh, ox*sw + j*dw]

which, with the columns of :mod:`cnnkit.functional.im2col` ``cols (N, G, Kg, P)``
(``Kg = Cg*kh*kw``, ``P = out_h*out_w``) and the weight as ``(G, Fg, Kg)``, is the batched GEMM
``y = w @ cols`` over the group axis. Backward: ``dweight = sum_n dy_n @ cols_n^T`` (a GEMM with the
forward's columns, kept in the cache), ``dcols = w^T @ dy`` then ``dx = col2im(dcols)``,
``dbias = sum of dy over (N, H, W)``.

A 1x1 convolution without padding needs no columns: the input itself, ``x.reshape(N, C, H*W)``
(subsampled first when strided), is already the column matrix.

Algorithms (``algorithm=``): ``"im2col"`` is the kernel above, the readable reference and the
default of these functions. ``"flat"`` (:mod:`cnnkit.functional.conv_flat`) lays the padded input
out channel-major over the whole batch so that every im2col row is one contiguous slice and the
convolution one large GEMM; it wins wherever there are more than a few input channels.
``"auto"`` picks per shape with :func:`choose_algorithm` (the layers' default), or, after
``set_benchmark(True)``, by timing each candidate once per shape and caching the winner, like
cuDNN's benchmark mode.
"""
from __future__ import annotations

from typing import NamedTuple

import time

import numpy as np

from ..backend import array_module
from ..profile import section
from .conv_flat import FlatCache, conv2d_flat_backward, conv2d_flat_forward
from .im2col import col2im, conv_geometry, im2col
from .parallel import threaded_matmul

ALGORITHMS = ("auto", "im2col", "flat")

# Columns up to this size are built whole and kept from forward to backward by the flat kernel;
# otherwise it runs by cache-sized column chunks, gathered again in backward from the input
# (which the previous layer keeps anyway). Keeping the columns of every layer made a ResNet-20
# step hold twice PyTorch's memory, and the chunks are faster. 0: never keep (the default).
KEEP_COLUMNS_MAX_BYTES = 0

_benchmark = False
_benchmark_choices: dict = {}


def set_benchmark(enabled: bool = True) -> None:
    """Choose ``"auto"`` algorithms by timing the candidates once per shape (cached per process)."""
    global _benchmark
    _benchmark = bool(enabled)
    _benchmark_choices.clear()


# Below this many input channels the flat kernel still wins on large images (output positions
# per image at least this many): measured, fwd + weight-only bwd, float32, 2 cores: ResNet-18 stem
# 7x7/2 on 224x224 470 -> 195 ms, AlexNet conv1 11x11/4 423 -> 106-136 ms, VGG 3x3 3->64 on
# 224x224 (batch 2) 1790 -> 50 ms; but the ResNet-20 stem (3 channels, 32x32) im2col 9.7 ms,
# flat 19.7 ms. From 6 channels flat wins: LeNet-5 conv2 (6 -> 16, 5x5, batch 128) forward +
# full backward 20.4 -> 14.7 ms (at 4 channels it depends on the shape).
FLAT_MIN_CHANNELS = 6
FLAT_MIN_POSITIONS_FEW_CHANNELS = 2048


def _static_choice(x_shape, weight_shape, stride, padding, dilation, groups) -> str:
    """The rule ``"auto"`` follows without benchmark mode (see ``choose_algorithm``)."""
    if groups != 1:
        return "im2col"
    if x_shape[1] >= FLAT_MIN_CHANNELS:
        return "flat"
    *_, (out_h, out_w) = conv_geometry(tuple(x_shape[2:]), tuple(weight_shape[2:]), stride, padding, dilation)
    return "flat" if out_h * out_w >= FLAT_MIN_POSITIONS_FEW_CHANNELS else "im2col"


def choose_algorithm(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> str:
    """The algorithm ``"auto"`` runs for this shape.

    Rule, from the per-layer benchmark (``benchmarks/layers.py``): the flat kernel needs
    ``groups=1`` and pays when there are at least 6 input channels (its copy is C*kh*kw long
    rows instead of N*C*kh*kw*out_h short ones), or, with fewer channels (a network's first
    layer), on large images (at least 2048 output positions per image); on small images with
    1-5 channels the per-image im2col is as fast and computes no seam positions.
    """
    choice = _static_choice(x_shape, weight_shape, stride, padding, dilation, groups)
    if choice == "flat" and _benchmark:
        key = (tuple(x_shape), tuple(weight_shape), stride, padding, dilation)
        if key not in _benchmark_choices:
            _benchmark_choices[key] = _time_candidates(x_shape, weight_shape, stride, padding, dilation)
        return _benchmark_choices[key]
    return choice


def planned_algorithm(algorithm, x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1) -> str:
    """The algorithm a layer with ``algorithm=`` runs on ``x_shape``, without timing anything.

    For static accounting (``cnnkit.summary``'s memory rules): in benchmark mode a shape not yet
    timed is assumed to get the default choice.
    """
    if algorithm != "auto":
        return algorithm
    choice = _static_choice(x_shape, weight_shape, stride, padding, dilation, groups)
    if choice == "flat" and _benchmark:
        key = (tuple(x_shape), tuple(weight_shape), stride, padding, dilation)
        return _benchmark_choices.get(key, "flat")
    return choice


def _time_candidates(x_shape, weight_shape, stride, padding, dilation) -> str:
    """Time forward + backward of each algorithm once (after a warm-up) on random data."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    weight = rng.standard_normal(weight_shape, dtype=np.float32)
    best, best_time = "im2col", float("inf")
    for name in ("im2col", "flat"):
        for attempt in range(2):
            start = time.perf_counter()
            y, cache = conv2d_forward(x, weight, None, stride, padding, dilation, 1, algorithm=name)
            conv2d_backward(y, cache)
            elapsed = time.perf_counter() - start
        if elapsed < best_time:
            best, best_time = name, elapsed
    return best


class Conv2dCache(NamedTuple):
    """What ``conv2d_backward`` needs: the forward's columns, the weight and the geometry."""

    cols: object  # (N, C*kh*kw, P); for the 1x1 path, the (subsampled) input as (N, C, P)
    weight: object  # (F, C/groups, kh, kw)
    input_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    pointwise: bool  # 1x1 kernel, no padding: cols are the input, no im2col


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="im2col",
                   keep_columns=None, workspace=None):
    """Return ``(y, cache)`` for a grouped, strided, padded, dilated 2-D convolution.

    ``algorithm``: ``"im2col"`` (default), ``"flat"`` or ``"auto"`` (see the module docstring);
    the cache records which one ran (``conv2d_algorithm(cache)``). ``keep_columns`` and
    ``workspace`` tune the flat kernel (``None``: keep columns up to ``KEEP_COLUMNS_MAX_BYTES``, i.e. rebuild them in backward).

    ``stride``, ``padding`` and ``dilation`` are ints or ``(h, w)`` pairs; padding is zeros on both
    sides. No geometry check happens here (the layer runs it); windows that do not fit are dropped
    as in PyTorch.

    Shape:
        x: (N, C, H, W), weight: (F, C/groups, kh, kw), bias: (F,) -> y: (N, F, out_h, out_w)
        out_h = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1, likewise out_w
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"conv2d: algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "auto":
        algorithm = choose_algorithm(x.shape, weight.shape, stride, padding, dilation, groups)
    if algorithm == "flat":
        if groups != 1:
            raise ValueError(f"conv2d: algorithm='flat' needs groups=1, got groups={groups}")
        if x.shape[0] == 0:  # an empty batch (PyTorch: empty output): nothing to lay out flat
            return conv2d_forward(x, weight, bias, stride, padding, dilation, groups, algorithm="im2col")
        if keep_columns is None:
            k = weight.shape[1] * weight.shape[2] * weight.shape[3]
            keep_columns = k * x.shape[0] * x.shape[2] * x.shape[3] * x.dtype.itemsize <= KEEP_COLUMNS_MAX_BYTES
        return conv2d_flat_forward(x, weight, bias, stride, padding, dilation, keep_columns, workspace)
    xp = array_module(x)
    n, c, h, w = x.shape
    f, cg, kh, kw = weight.shape
    kernel, stride, padding, dilation, (out_h, out_w) = conv_geometry((h, w), (kh, kw), stride, padding, dilation)
    pointwise = kernel == (1, 1) and padding == (0, 0)
    if pointwise:
        source = x if stride == (1, 1) else x[:, :, ::stride[0], ::stride[1]]
        cols = xp.ascontiguousarray(source).reshape(n, c, out_h * out_w)  # a view when stride 1
    else:
        with section("im2col"):
            cols = im2col(x, kernel, stride, padding, dilation)
    # Grouped GEMM: (G, Fg, Kg) @ (N, G, Kg, P) -> (N, G, Fg, P), broadcast over the batch. For
    # groups=1 this is (F, K) @ (N, K, P); the result is already NCHW (see im2col's layout note).
    with section("gemm"):
        y = threaded_matmul(weight.reshape(groups, f // groups, cg * kh * kw),
                      cols.reshape(n, groups, cg * kh * kw, out_h * out_w))
    y = y.reshape(n, f, out_h, out_w)
    if bias is not None:
        y += bias.reshape(1, f, 1, 1)
    return y, Conv2dCache(cols, weight, (n, c, h, w), stride, padding, dilation, groups, pointwise)


def conv2d_backward(dy, cache: Conv2dCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None`` and is not computed.

    Shape:
        dy: (N, F, out_h, out_w) -> dx: (N, C, H, W), dweight: (F, C/groups, kh, kw), dbias: (F,)
        dweight[g] = sum_n dy[n, g] @ cols[n, g]^T;  dcols = weight[g]^T @ dy[n, g];  dx = col2im(dcols)
    """
    if isinstance(cache, FlatCache):
        with np.errstate(invalid="ignore"):  # 0 * inf on the seams: handled just below
            dx, dweight, dbias = conv2d_flat_backward(dy, cache, need_dx, need_dweight, need_dbias)
        # The flat kernel also multiplies the dropped seam positions (zeros of dY) by the input
        # (dweight) and by the weight (dx): a NaN or inf there gives 0 * inf = NaN in taps that
        # never read it, where PyTorch stays finite. Then (rarely) im2col recomputes those.
        xp = array_module(dy)
        redo_dweight = dweight is not None and not xp.isfinite(dweight).all()
        redo_dx = dx is not None and not xp.isfinite(cache.weight).all()
        if redo_dweight or redo_dx:
            g = cache.geometry
            cols = im2col(cache.x, g.kernel, g.stride, g.padding, g.dilation)
            exact = Conv2dCache(cols, cache.weight, g.input_shape, g.stride, g.padding, g.dilation, 1, False)
            dx_exact, dweight_exact, _ = conv2d_backward(dy, exact, redo_dx, redo_dweight, False)
            dx = dx_exact if redo_dx else dx
            dweight = dweight_exact if redo_dweight else dweight
        return dx, dweight, dbias
    xp = array_module(dy)
    cols, weight, input_shape = cache.cols, cache.weight, cache.input_shape
    groups = cache.groups
    n, f, out_h, out_w = dy.shape
    _, cg, kh, kw = weight.shape
    fg, kg, p = f // groups, cg * kh * kw, out_h * out_w
    dy_groups = xp.ascontiguousarray(dy).reshape(n, groups, fg, p)

    dbias = dy.sum(axis=(0, 2, 3)) if need_dbias else None

    dweight = None
    if need_dweight:
        with section("gemm"):
            cols_groups = cols.reshape(n, groups, kg, p)
            if fg <= p:
                # One product per image, then a sum over the batch: the intermediate
                # (N, G, Kg, Fg) is no larger than the columns themselves. Written as
                # (cols @ dy^T)^T, the orientation OpenBLAS runs fast for a long inner
                # dimension (see conv_flat): dy @ cols^T took 2.5-4 s against 0.3 s for the
                # ResNet-18 stem (16x3x224x224, 7x7/2) on this machine.
                dweight = threaded_matmul(cols_groups, dy_groups.transpose(0, 1, 3, 2)).sum(axis=0).transpose(0, 2, 1)
            else:
                # Many filters, few positions (deep layers): one GEMM over all N*P positions is both
                # faster and smaller than N products, at the price of one copy of the columns.
                dy_flat = dy_groups.transpose(1, 2, 0, 3).reshape(groups, fg, n * p)
                cols_flat = cols_groups.transpose(1, 2, 0, 3).reshape(groups, kg, n * p)
                # cols @ dy^T, transposed: OpenBLAS runs this orientation of the long-inner-
                # dimension GEMM much faster than dy @ cols^T (see conv_flat).
                dweight = threaded_matmul(cols_flat, dy_flat.transpose(0, 2, 1)).transpose(0, 2, 1)
        dweight = dweight.reshape(weight.shape)

    dx = None
    if need_dx:
        weight_t = weight.reshape(groups, fg, kg).transpose(0, 2, 1)  # (G, Kg, Fg), a view
        with section("gemm"):
            dcols = threaded_matmul(weight_t, dy_groups)  # (N, G, Kg, P)
        if cache.pointwise and cache.stride == (1, 1):
            dx = dcols.reshape(input_shape)
        else:
            with section("col2im"):
                dx = col2im(dcols.reshape(n, groups * kg, p), input_shape, (kh, kw),
                            cache.stride, cache.padding, cache.dilation)
    return dx, dweight, dbias


def conv2d_algorithm(cache) -> str:
    """Which algorithm produced ``cache`` (``"im2col"`` or ``"flat"``)."""
    return "flat" if isinstance(cache, FlatCache) else "im2col"
