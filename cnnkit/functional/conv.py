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

Kernels of the ``conv2d`` op (:data:`CONV2D`, see :mod:`cnnkit.functional.registry`):
``"im2col"`` is the kernel above, the readable reference and the default of these functions.
``"flat"`` (:mod:`cnnkit.functional.conv_flat`) lays the padded input out channel-major over the
whole batch so that every im2col row is one contiguous slice and the convolution one large GEMM;
it wins wherever there are more than a few input channels. ``"auto"`` (the layers' default)
takes the fastest kernel that accepts the call (:func:`choose_algorithm`), or, after
``set_benchmark(True)``, times the candidates once per shape and keeps the winner, like cuDNN's
benchmark mode.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import array_module
from .conv_flat import FlatCache, conv2d_flat_backward, conv2d_flat_forward, conv2d_flat_memory
from .im2col import col2im, conv_geometry, im2col
from .instrument import section
from .memory import ArraySpec, LayerMemory
from .parallel import threaded_matmul
from .registry import Kernel, benchmark_enabled, define_op
from .registry import set_benchmark  # noqa: F401  (its home before the registry)

# Columns up to this size are built whole and kept from forward to backward by the flat kernel;
# otherwise it runs by cache-sized column chunks, gathered again in backward from the input
# (which the previous layer keeps anyway). Keeping the columns of every layer made a ResNet-20
# step hold twice PyTorch's memory, and the chunks are faster. 0: never keep (the default).
KEEP_COLUMNS_MAX_BYTES = 0

# Below this many input channels the flat kernel still wins on large images (output positions
# per image at least this many): measured, fwd + weight-only bwd, float32, 2 cores: ResNet-18 stem
# 7x7/2 on 224x224 470 -> 195 ms, AlexNet conv1 11x11/4 423 -> 106-136 ms, VGG 3x3 3->64 on
# 224x224 (batch 2) 1790 -> 50 ms; but the ResNet-20 stem (3 channels, 32x32) im2col 9.7 ms,
# flat 19.7 ms. From 6 channels flat wins: LeNet-5 conv2 (6 -> 16, 5x5, batch 128) forward +
# full backward 20.4 -> 14.7 ms (at 4 channels it depends on the shape).
FLAT_MIN_CHANNELS = 6
FLAT_MIN_POSITIONS_FEW_CHANNELS = 2048


class Conv2dCache(NamedTuple):
    """What the im2col kernel's backward needs: the forward's columns, the weight and the geometry."""

    cols: object  # (N, C*kh*kw, P); for the 1x1 path, the (subsampled) input as (N, C, P)
    weight: object  # (F, C/groups, kh, kw)
    input_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    pointwise: bool  # 1x1 kernel, no padding: cols are the input, no im2col


def conv2d_im2col_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None,
                          relu=False):
    """The reference kernel: im2col, then one (grouped) GEMM; return ``(y, cache)``.

    ``stride``, ``padding`` and ``dilation`` are ints or ``(h, w)`` pairs; padding is zeros on both
    sides. No geometry check happens here (the layer runs it); windows that do not fit are dropped
    as in PyTorch. ``workspace`` is accepted for the common kernel signature and not used.
    ``relu`` applies ``max(y, 0)`` in place on the new output (inference fusion; a backend may
    fuse it into its kernel); the caller masks ``dy`` with ``y > 0`` before backward.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.conv.conv2d_naive`.

    Shape:
        x: (N, C, H, W), weight: (F, C/groups, kh, kw), bias: (F,) -> y: (N, F, out_h, out_w)
        out_h = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1, likewise out_w
    """
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
    if relu:
        xp.maximum(y, 0, out=y)  # y is new: nobody else holds it yet
    return y, Conv2dCache(cols, weight, (n, c, h, w), stride, padding, dilation, groups, pointwise)


def conv2d_im2col_backward(dy, cache: Conv2dCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None`` and is not computed.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.conv.conv2d_naive_backward`.

    Shape:
        dy: (N, F, out_h, out_w) -> dx: (N, C, H, W), dweight: (F, C/groups, kh, kw), dbias: (F,)
        dweight[g] = sum_n dy[n, g] @ cols[n, g]^T;  dcols = weight[g]^T @ dy[n, g];  dx = col2im(dcols)
    """
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


def conv2d_im2col_memory(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None,
                         relu=False):
    """What the im2col kernel holds (arrays as ArraySpecs): the columns, kept from forward to
    backward (a 1x1 unpadded conv uses the input itself: a view at stride 1, a subsampled copy
    otherwise); in forward the padded input; in backward ``dcols`` (the size of the columns)
    then col2im into dx, and ``dweight``, either one ``(Fg, Kg)`` product per image summed over
    the batch or, with few positions, one GEMM on transposed copies of dy and the columns; plus
    the gradient's copy into ``.grad``."""
    batch, c, h, w = x.shape
    f, cg, kh, kw = weight.shape
    itemsize = x.itemsize
    _, stride, padding, _, (oh, ow) = conv_geometry((h, w), (kh, kw), stride, padding, dilation)
    p = oh * ow
    k = cg * kh * kw
    pointwise = (kh, kw) == (1, 1) and padding == (0, 0)
    cols = batch * c * kh * kw * p * itemsize
    padded = batch * c * (h + 2 * padding[0]) * (w + 2 * padding[1]) * itemsize if any(padding) else 0
    weight_bytes = weight.size * itemsize
    if (f // groups) <= p:
        dweight_work = batch * f * k * itemsize
    else:
        dweight_work = cols + batch * f * p * itemsize
    if pointwise and stride == (1, 1):
        return LayerMemory(keeps_input=True, backward_temp=dweight_work + weight_bytes)
    if pointwise:
        return LayerMemory(saved=cols, backward_temp=cols + dweight_work + weight_bytes)
    return LayerMemory(saved=cols, forward_temp=padded, backward_temp=cols + dweight_work + weight_bytes)


def _flat_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    """The flat kernel with the common signature; keeps its columns when they are small enough."""
    if x.shape[0] == 0:  # an empty batch (PyTorch: an empty output): nothing to lay out flat
        return conv2d_im2col_forward(x, weight, bias, stride, padding, dilation, groups, relu=relu)
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    keep_columns = k * x.shape[0] * x.shape[2] * x.shape[3] * x.dtype.itemsize <= KEEP_COLUMNS_MAX_BYTES
    y, cache = conv2d_flat_forward(x, weight, bias, stride, padding, dilation, keep_columns, workspace)
    if relu:
        array_module(y).maximum(y, 0, out=y)
    return y, cache


def _flat_memory(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    return conv2d_flat_memory(x, weight, stride, padding, dilation, KEEP_COLUMNS_MAX_BYTES)


def _flat_declines(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    if groups != 1:
        return f"the flat kernel needs groups=1, got groups={groups}"
    return None


def _flat_backward(dy, cache: FlatCache, need_dx=True, need_dweight=True, need_dbias=True):
    """The flat kernel's backward, made exact for non-finite values.

    The flat kernel also multiplies the dropped seam positions (zeros of dY) by the input
    (dweight) and by the weight (dx): a NaN or inf there gives 0 * inf = NaN in taps that never
    read it, where PyTorch stays finite. Then (rarely) im2col recomputes those gradients.
    """
    xp = array_module(dy)
    with np.errstate(invalid="ignore"):  # 0 * inf on the seams: handled just below
        dx, dweight, dbias = conv2d_flat_backward(dy, cache, need_dx, need_dweight, need_dbias)
    redo_dweight = dweight is not None and not xp.isfinite(dweight).all()
    redo_dx = dx is not None and not xp.isfinite(cache.weight).all()
    if redo_dweight or redo_dx:
        g = cache.geometry
        cols = im2col(cache.x, g.kernel, g.stride, g.padding, g.dilation)
        exact = Conv2dCache(cols, cache.weight, g.input_shape, g.stride, g.padding, g.dilation, 1, False)
        dx_exact, dweight_exact, _ = conv2d_im2col_backward(dy, exact, redo_dx, redo_dweight, False)
        dx = dx_exact if redo_dx else dx
        dweight = dweight_exact if redo_dweight else dweight
    return dx, dweight, dbias


def _flat_defers(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    """Rule, from the per-layer benchmark (``benchmarks/layers.py``): the flat kernel pays when there
    are at least 6 input channels (its copy is C*kh*kw long rows instead of N*C*kh*kw*out_h short
    ones), or, with fewer channels (a network's first layer), on large images (at least 2048
    output positions per image); on small images with 1-5 channels the per-image im2col is as
    fast and computes no seam positions."""
    if x.shape[1] >= FLAT_MIN_CHANNELS:
        return None
    *_, (out_h, out_w) = conv_geometry(tuple(x.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    if out_h * out_w >= FLAT_MIN_POSITIONS_FEW_CHANNELS:
        return None
    return (f"{x.shape[1]} input channels on {out_h}x{out_w} outputs: im2col is as fast "
            f"(flat wins from {FLAT_MIN_CHANNELS} channels or {FLAT_MIN_POSITIONS_FEW_CHANNELS} positions)")


CONV2D = define_op("conv2d", reference="im2col", benchmark=True)
CONV2D.register(Kernel("im2col", "numpy", 0, conv2d_im2col_forward, conv2d_im2col_backward, Conv2dCache,
                       memory=conv2d_im2col_memory, doc="im2col + one GEMM (the reference)"))
CONV2D.register(Kernel("flat", "numpy", 10, _flat_forward, _flat_backward, FlatCache,
                       decline=_flat_declines, defer=_flat_defers, memory=_flat_memory,
                       doc="one GEMM over the flattened padded batch, by cache-sized chunks"))
ALGORITHMS = ("auto",) + CONV2D.names()


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algorithm="im2col",
                   keep_columns=None, workspace=None):
    """Return ``(y, cache)`` for a grouped, strided, padded, dilated 2-D convolution.

    ``algorithm``: a kernel of :data:`CONV2D` (``"im2col"``, the default here; ``"flat"``; any
    backend's) or ``"auto"`` (see the module docstring); the cache records which one ran
    (:func:`conv2d_algorithm`). ``keep_columns`` (flat kernel only) keeps its whole column matrix
    from forward to backward; ``workspace`` holds a layer's buffers from step to step.

    Shape:
        x: (N, C, H, W), weight: (F, C/groups, kh, kw), bias: (F,) -> y: (N, F, out_h, out_w)
        out_h = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1, likewise out_w
    """
    kernel = CONV2D.select(algorithm, x, weight, bias, stride, padding, dilation, groups)
    if keep_columns is not None:
        if kernel.name != "flat":
            raise ValueError(f"conv2d: keep_columns applies to the flat kernel, not {kernel.name!r}")
        return conv2d_flat_forward(x, weight, bias, stride, padding, dilation, keep_columns, workspace)
    return CONV2D.run(kernel, x, weight, bias, stride, padding, dilation, groups, workspace=workspace)


def conv2d_backward(dy, cache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)`` from the kernel that made ``cache``; ``None`` for what is not asked."""
    return CONV2D.backward(dy, cache, need_dx=need_dx, need_dweight=need_dweight, need_dbias=need_dbias)


def conv2d_algorithm(cache) -> str:
    """Which kernel produced ``cache`` (``"im2col"``, ``"flat"``, ...)."""
    return CONV2D.kernel_of(cache).name


def choose_algorithm(x_shape, weight_shape, stride=1, padding=0, dilation=1, groups=1, dtype="float32") -> str:
    """The kernel ``"auto"`` runs for these shapes; in benchmark mode it times the candidates on
    random data of these shapes (once per shape) like a real call would."""
    if benchmark_enabled():
        rng = np.random.default_rng(0)
        x = rng.standard_normal(tuple(x_shape)).astype(dtype)
        weight = rng.standard_normal(tuple(weight_shape)).astype(dtype)
        return CONV2D.select("auto", x, weight, None, stride, padding, dilation, groups).name
    x, weight = ArraySpec(tuple(x_shape), dtype), ArraySpec(tuple(weight_shape), dtype)
    return CONV2D.plan("auto", x, weight, None, stride, padding, dilation, groups).name
