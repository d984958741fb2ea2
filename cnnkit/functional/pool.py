"""Pooling kernels: max (with argmax "switches"), average and LP (power average) pooling.

Every windowed kernel here is a loop over the ``KH*KW`` kernel offsets; each step touches one
strided view of the (padded) input with one output-shaped slice, so the work is vectorised over
batch, channels and output positions. Output sizes come from ``shapes.conv_output_size``, the one
formula shared with convolution.

Conventions follow PyTorch exactly, including the corner cases:

* max pooling pads with ``-inf``, so padding is never chosen; on ties the *first* maximum in window
  scan order (row by row) wins; a NaN in a window wins (the last NaN, as PyTorch's CPU kernel);
  a window whose real values are all ``-inf`` picks its first real element.
* average pooling divides by PyTorch's divisor: the window clipped to ``[-P, size + P)`` with
  ``count_include_pad=True``, clipped to the real input ``[0, size)`` otherwise, or
  ``divisor_override``.
* padding may be at most half the kernel (``padding <= kernel // 2``), PyTorch's rule, so every
  window holds at least one real input element.

ONNX's pooling operators (what ``cnnkit.onnx`` imports) differ in three ways, each available
through an explicit argument and never the default: ``padding_rule="onnx"`` takes four pads
``(top, left, bottom, right)`` that may differ and may reach ``kernel - 1`` (onnxruntime's rule;
the divisor of ``count_include_pad`` then counts the declared bottom/right padding, not the
top/left one twice); average pooling takes a ``dilation``; and LP pooling with
``definition="onnx"`` is ``(sum |x|^p)^(1/p)`` over the window, with zero padding (PyTorch's
``LPPool2d`` raises ``x`` itself to the power ``p`` and rescales ceil-mode windows cut by the
edge).

The window geometry (output sizes, padding rules) lives in :mod:`.pool_geometry`, adaptive
average pooling in :mod:`.adaptive_pool`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..backend import array_module
from .memory import LayerMemory
from .parallel import parallel_chunks
from .pool_geometry import PoolGeometry, first_real_tap, lowest_value, pad_input, pool_geometry, switches_dtype
from .registry import Kernel, define_op
from .workspace import scratch


class MaxPoolCache(NamedTuple):
    switches: object  # (N, C, OH, OW): the kernel offset i*KW + j each output took (uint8 up to 16x16)
    geometry: PoolGeometry


class AvgPoolCache(NamedTuple):
    divisor: object  # (OH, OW): PyTorch's divisor of each output
    geometry: PoolGeometry


class LPPowerCache(NamedTuple):
    """LP pooling with a finite ``p``: the average pooling of ``x^p`` (or ``|x|^p``) and its sums."""

    avg_cache: AvgPoolCache
    power_sum: object  # u: the window sums of x^p, (N, C, OH, OW)
    scale: float  # what the average is multiplied by to give the sum (KH*KW, or 1 for ONNX's divisor 1)


class LPPoolCache(NamedTuple):
    p: float
    x: object
    definition: str  # "pytorch" (x^p) or "onnx" (|x|^p)
    inner: object  # MaxPoolCache (p = +-inf) or LPPowerCache


def _tiles_input(g: PoolGeometry) -> bool:
    """Whether the windows tile the input without overlap or padding (e.g. 2x2/2 on an even size).

    Then every input position lies in at most one window, at one kernel offset, and backward can
    write each offset's gradient straight into its strided view of ``dx``.
    """
    return (g.stride == g.kernel and g.dilation == (1, 1) and g.padding == (0, 0) and g.pad_end == (0, 0))


def _scatter_windows(gradient_of_offset, geometry: PoolGeometry, dtype, xp, out=None):
    """col2im for pooling: add each offset's output-shaped gradient back onto its input view;
    into ``out`` (an array of the input shape, any contents) if given.

    ``gradient_of_offset(k, out)`` returns the gradient that kernel offset ``k`` sends to its
    inputs (an array of the output shape); it may write it into ``out`` (a buffer of that shape,
    possibly a strided view of ``dx``) and return ``out``, which saves a copy.

    Non-overlapping windows (``_tiles_input``): each offset writes straight into its strided view
    of ``dx``, and only positions no window covers (the rows/columns a floor-mode output drops)
    are zeroed: no zero-fill of the whole gradient, no read-modify-write.

    Otherwise overlapping windows add up because each offset is added in its own step, and
    within one offset distinct outputs hit distinct inputs, so ``+=`` is exact. Strided
    read-modify-writes are slow, so the padded gradient is kept as its ``SH*SW`` stride phases
    (rows ``a::SH``, columns ``b::SW``): every offset then adds onto a unit-stride slice of one
    phase, and the phases are interleaved once at the end, straight into the unpadded ``dx``
    (3x3/2 average-pooling backward measured about 30% faster than adding onto strided views,
    on one busy core).
    """
    n, c, h, w = geometry.input_shape
    (ph, pw), (sh, sw), (dh, dw), (oh, ow) = geometry.padding, geometry.stride, geometry.dilation, geometry.output
    def result(zeroed: bool):
        if out is None:
            return (xp.zeros if zeroed else xp.empty)((n, c, h, w), dtype=dtype)
        if zeroed:
            out[...] = 0
        return out

    if _tiles_input(geometry):
        dx = result(zeroed=False)
        for k, rows, cols in geometry.offsets():
            view = dx[:, :, rows, cols]
            gradient = gradient_of_offset(k, view)
            if gradient is not view:
                xp.copyto(view, gradient)
        covered_h, covered_w = oh * sh, ow * sw
        if covered_h < h:
            dx[:, :, covered_h:] = 0
        if covered_w < w:
            dx[:, :, :covered_h, covered_w:] = 0
        return dx
    padded_h, padded_w = geometry.padded_shape[2:]
    phases = {}
    routed = scratch("pool_routed", (n, c, oh, ow), dtype, xp)  # an offset's gradient: written whole each time
    for k, _, _ in geometry.offsets():
        i, j = divmod(k, geometry.kernel[1])
        row0, row_phase = divmod(i * dh, sh)  # tap row i*dh + o*sh is row row0 + o of phase row_phase
        col0, col_phase = divmod(j * dw, sw)
        if (row_phase, col_phase) not in phases:
            phase_shape = (n, c, -(-(padded_h - row_phase) // sh), -(-(padded_w - col_phase) // sw))
            phases[row_phase, col_phase] = xp.zeros(phase_shape, dtype=dtype)
        phases[row_phase, col_phase][:, :, row0:row0 + oh, col0:col0 + ow] += gradient_of_offset(k, routed)
    if (sh, sw) == (1, 1):
        dx_padded = phases[0, 0]
        if out is None and dx_padded.shape == (n, c, h, w):
            return dx_padded
        dx = result(zeroed=False)
        dx[...] = dx_padded[:, :, ph:ph + h, pw:pw + w]
        return dx
    # Interleave the phases straight into the unpadded dx (the padding's gradient is dropped on
    # the way): input row r is padded row r + PH, i.e. row (r + PH) // SH of phase (r + PH) % SH.
    dx = result(zeroed=len(phases) < sh * sw)  # a phase no tap hits stays zero
    for (row_phase, col_phase), phase in phases.items():
        first_row, first_col = (row_phase - ph) % sh, (col_phase - pw) % sw
        rows, cols = len(range(first_row, h, sh)), len(range(first_col, w, sw))
        if rows and cols:
            t0, u0 = (first_row + ph) // sh, (first_col + pw) // sw
            dx[:, :, first_row::sh, first_col::sw] = phase[:, :, t0:t0 + rows, u0:u0 + cols]
    return dx


# Pooling works on blocks of whole (sample, channel) planes of about this many input bytes: a
# block's temporaries stay in the (4 MB) L2 cache across the KH*KW offset passes, and the
# blocks are spread over the cores with ``parallel_chunks``. Measured, max pooling forward /
# backward: 512 KB blocks 2.6 / 1.7 ms on LeNet-5's 128x6x28x28 and 85 / 74 ms on the
# ResNet-18 stem's 16x64x112x112; 2 MB blocks 1.7 / 1.3 and 54 / 53 ms (fewer NumPy calls).
BLOCK_BYTES = 1 << 21


def _over_plane_blocks(xp, planes: int, plane_bytes: int, block_work) -> None:
    """Call ``block_work(start, stop)`` over blocks of the ``N*C`` planes, on every core."""
    block = max(1, BLOCK_BYTES // max(1, plane_bytes))

    def work(start, stop):
        for first in range(start, stop, block):
            block_work(first, min(first + block, stop))

    parallel_chunks(work, planes, nbytes=planes * plane_bytes, xp=xp)


def _planes(a):
    """View ``(N, C, H, W)`` as ``(N*C, 1, H, W)`` (a copy only if ``a`` is not contiguous)."""
    n, c, h, w = a.shape
    return a.reshape(n * c, 1, h, w)


def _block_geometry(g: PoolGeometry, planes: int) -> PoolGeometry:
    """The geometry of a block of ``planes`` planes, viewed as ``(planes, 1, H, W)``."""
    return g._replace(input_shape=(planes, 1) + tuple(g.input_shape[2:]))


def _backward_by_blocks(dy, g: PoolGeometry, block_gradient):
    """Run ``block_gradient(start, stop, block_geometry, out)`` over plane blocks, each writing its
    block of ``dx`` into ``out``."""
    xp = array_module(dy)
    n, c, h, w = g.input_shape
    dx = xp.empty((n * c, 1, h, w), dtype=dy.dtype)

    def block_work(start, stop):
        block_gradient(start, stop, _block_geometry(g, stop - start), dx[start:stop])

    _over_plane_blocks(xp, n * c, h * w * dy.dtype.itemsize, block_work)
    return dx.reshape(n, c, h, w)


# -- max pooling --------------------------------------------------------------------------------

def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       check_geometry=False, layer="max_pool2d", need_switches=True, padding_rule="pytorch"):
    """Max pooling; return ``(y, cache)``. The cache holds the argmax "switches".

    ``need_switches=False`` (inference: nothing will run backward) computes only the maxima,
    a third of the passes, and returns ``cache=None``.

    The switches are stored as the kernel offset ``k = i*KW + j`` of the chosen tap (uint8 for
    kernels up to 16x16): one byte per output instead of eight, and backward needs nothing else.
    ``max_pool2d_indices(cache)`` turns them into PyTorch's flat ``return_indices`` indices.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.max_pool2d`.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW),
        OH = floor_or_ceil((H + 2*PH - DH*(KH-1) - 1) / SH) + 1, likewise OW
    """
    xp = array_module(x)
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                      check_geometry=check_geometry, layer=layer, padding_rule=padding_rule)
    n, c, h, w = x.shape
    kw, (oh, ow) = g.kernel[1], g.output
    # PyTorch's scan: best = -inf and the switch on the window's first real tap, then a tap wins
    # when it is strictly greater (first maximum wins ties) or NaN. Padding (-inf) never wins.
    first_tap = (first_real_tap(oh, g.stride[0], g.padding[0], g.dilation[0])[:, None] * kw
                 + first_real_tap(ow, g.stride[1], g.padding[1], g.dilation[1])[None, :])
    switch_dtype = switches_dtype(g.kernel)
    first_tap = xp.asarray(first_tap.astype(switch_dtype))
    has_nan = need_switches and bool(xp.isnan(x).any())  # one pass here saves a NaN test per offset
    x_planes = _planes(x)
    y = xp.empty((n * c, 1, oh, ow), dtype=x.dtype)
    switches = xp.empty((n * c, 1, oh, ow), dtype=switch_dtype) if need_switches else None

    def block_work(start, stop):
        bg = _block_geometry(g, stop - start)
        x_padded = pad_input(x_planes[start:stop], bg, lowest_value(x.dtype))
        if switches is None:
            y[start:stop] = lowest_value(x.dtype)
            for _, rows, cols in bg.offsets():
                xp.maximum(y[start:stop], x_padded[:, :, rows, cols], out=y[start:stop])  # NaN-propagating
            return
        _max_pool_block(x_padded, bg, y[start:stop], switches[start:stop], first_tap, has_nan, xp)

    _over_plane_blocks(xp, n * c, h * w * x.dtype.itemsize, block_work)
    if switches is None:
        return y.reshape(n, c, oh, ow), None
    return y.reshape(n, c, oh, ow), MaxPoolCache(switches.reshape(n, c, oh, ow), g)


def _max_pool_block(x_padded, g: PoolGeometry, y, switches, first_tap, has_nan, xp) -> None:
    """The offset loop of max pooling on one block of planes, writing ``y`` and ``switches``."""
    switch_dtype = switches.dtype.type
    switches[...] = first_tap
    y.fill(lowest_value(y.dtype))
    # each strided window is copied once; the ops below then run contiguous (thread scratch)
    window = scratch("max_pool_window", y.shape, y.dtype, xp)
    wins = scratch("max_pool_wins", y.shape, bool, xp)
    won = scratch("max_pool_won", y.shape, switches.dtype, xp)
    for k, rows, cols in g.offsets():
        xp.copyto(window, x_padded[:, :, rows, cols])
        xp.greater(window, y, out=wins)
        if has_nan:
            wins |= xp.isnan(window)
        # switches = where(wins, k, switches) without a branchy masked copy: a tap that wins is
        # real, every real tap comes after the window's first real tap in scan order, so a
        # winning k is always larger than the switch it replaces and `maximum` does the update.
        xp.multiply(wins, switch_dtype(k), out=won)
        xp.maximum(switches, won, out=switches)
        xp.maximum(y, window, out=y)  # NaN-propagating, like the scan above


def max_pool2d_backward(dy, cache):
    """Route each output's gradient to the one input its switch chose; return ``dx``.

    Scatter choice: a loop over the ``KH*KW`` kernel offsets, routing ``dy`` masked by
    ``switches == k`` to that offset's input view (``_scatter_windows``): written straight into
    ``dx`` when the windows tile the input (2x2/2), added onto stride phases when they overlap.
    Within one offset no two outputs share an input and overlapping windows meet in different
    offsets, so ``+=`` is exact without ``np.add.at``. Chosen over ``np.bincount`` on flat
    indices, which works in float64 (twice the memory and a cast back) and needs int64 index
    arithmetic. The work runs per cache-sized block of planes on every core.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.max_pool2d_backward`.

    Shape:
        dy: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    switches, g = cache
    xp = array_module(dy)
    dy_planes, switch_planes = _planes(dy), _planes(switches)

    def block_gradient(start, stop, bg, dx_block):
        block_dy, block_switches = dy_planes[start:stop], switch_planes[start:stop]
        chosen = scratch("max_pool_chosen", block_dy.shape, bool, xp)

        def gradient_of_offset(k, out):
            xp.equal(block_switches, k, out=chosen)
            return xp.multiply(block_dy, chosen, out=out)

        _scatter_windows(gradient_of_offset, bg, dy.dtype, xp, out=dx_block)

    return _backward_by_blocks(dy, g, block_gradient)


def max_pool2d_indices(cache):
    """PyTorch's ``return_indices``: per output, the flat index ``ih*W + iw`` of the chosen input.

    Reads the cache's ``switches`` and ``geometry`` (any kernel whose cache has them, e.g. oneDNN's).

    Shape:
        (N, C, OH, OW) int64, each in [0, H*W)
    """
    switches, g = cache.switches, cache.geometry
    xp = array_module(switches)
    (_, kw), (sh, sw), (ph, pw), (dh, dw), (oh, ow) = g.kernel, g.stride, g.padding, g.dilation, g.output
    k = switches.astype(np.int64)
    rows = xp.arange(oh).reshape(oh, 1) * sh - ph + (k // kw) * dh
    cols = xp.arange(ow) * sw - pw + (k % kw) * dw
    return rows * g.input_shape[3] + cols


# -- average pooling ----------------------------------------------------------------------------

def _avg_divisor_1d(out: int, size: int, kernel: int, stride: int, padding: int, count_include_pad: bool,
                    padding_after: int | None = None, dilation: int = 1):
    """Per output position along one axis, PyTorch's window length used in the divisor: the taps
    inside ``[-padding, size + padding_after)`` with ``count_include_pad`` (so not the ceil-mode
    overhang past the padding), else the taps on the real input ``[0, size)``."""
    padding_after = padding if padding_after is None else padding_after
    start = np.arange(out) * stride - padding
    taps = start[:, None] + np.arange(kernel) * dilation
    low, high = (-padding, size + padding_after) if count_include_pad else (0, size)
    return ((taps >= low) & (taps < high)).sum(axis=1)


def avg_divisor(g: PoolGeometry, count_include_pad=True, divisor_override=None):
    """The ``(OH, OW)`` divisor of every output of an average pooling (PyTorch's rule)."""
    if divisor_override is not None:
        return np.full(g.output, float(divisor_override))
    h, w = g.input_shape[2:]
    after = g.padding_after
    rows = _avg_divisor_1d(g.output[0], h, g.kernel[0], g.stride[0], g.padding[0], count_include_pad, after[0],
                           g.dilation[0])
    cols = _avg_divisor_1d(g.output[1], w, g.kernel[1], g.stride[1], g.padding[1], count_include_pad, after[1],
                           g.dilation[1])
    return np.outer(rows, cols)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None, *, check_geometry=False, layer="avg_pool2d", dilation=1,
                       padding_rule="pytorch"):
    """Average pooling: the window sum divided by PyTorch's divisor; return ``(y, cache)``.

    Divisor (per axis, then multiplied): ``start = o*S - P``, ``end = min(start + K, size + P)``;
    ``end - start`` with ``count_include_pad``, else ``min(end, size) - max(start, 0)``; or
    ``divisor_override`` when given. With a ``dilation`` (ONNX) or different pads on the two
    sides (``padding_rule="onnx"``) the divisor counts the window's taps inside the padded (or
    the real) input the same way.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.avg_pool2d`.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = floor_or_ceil((H + 2*PH - DH*(KH-1) - 1) / SH) + 1
    """
    xp = array_module(x)
    if divisor_override is not None and (isinstance(divisor_override, bool) or divisor_override == 0):
        raise ValueError(f"{layer}: divisor_override must be a non-zero number or None, got {divisor_override!r}")
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                      check_geometry=check_geometry, layer=layer, padding_rule=padding_rule)
    x_padded = pad_input(x, g, 0)
    total = None
    for _, rows, cols in g.offsets():
        window = x_padded[:, :, rows, cols]
        if total is None:
            total = window.copy()
        else:
            total += window
    divisor = xp.asarray(avg_divisor(g, count_include_pad, divisor_override).astype(x.dtype))
    total /= divisor
    return total, AvgPoolCache(divisor, g)


def avg_pool2d_backward(dy, cache):
    """Spread each output's gradient evenly (``dy / divisor``) over its window; return ``dx``.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.avg_pool2d_backward`.

    Shape:
        dy: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    divisor, g = cache
    xp = array_module(dy)
    share = _planes(dy / divisor)

    def block_gradient(start, stop, bg, dx_block):
        block_share = share[start:stop]
        _scatter_windows(lambda k, out: block_share, bg, dy.dtype, xp, out=dx_block)

    return _backward_by_blocks(dy, g, block_gradient)


# -- LP (power-average) pooling -----------------------------------------------------------------

def lp_pool2d_forward(x, norm_type, kernel_size, stride=None, ceil_mode=False, *, check_geometry=False,
                      layer="lp_pool2d", definition="pytorch", padding=0, dilation=1):
    """LP pooling ``(sum over window of x^p)^(1/p)``; return ``(y, cache)``.

    ``definition="pytorch"`` (``nn.LPPool2d``) computes it exactly as PyTorch does:
    ``u = avg_pool2d(x^p, K, S, 0, ceil_mode) * KH*KW`` then ``u^(1/p)``. That is the window sum,
    except for ceil-mode windows cut by the input edge, where it is the sum rescaled by
    ``KH*KW / (clipped area)``; kept for exact agreement. ``x`` itself is raised to the power, so
    a negative sum with non-integer ``1/p`` gives NaN, as in PyTorch. ``norm_type = inf`` is max
    pooling of ``|x|``; ``-inf`` the minimum of ``|x|`` (as PyTorch). No padding or dilation.

    ``definition="onnx"`` (ONNX ``LpPool``) is ``(sum over window of |x|^p)^(1/p)``: the plain
    sum (ceil-mode windows are not rescaled), zero ``padding`` in ONNX's form (four pads may
    differ, see ``padding_rule="onnx"``) and a ``dilation``.

    ``u = 0`` gets gradient 0 in both.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.lp_pool2d`.

    Shape:
        x: (N, C, H, W) -> y: (N, C, OH, OW), OH = floor_or_ceil((H + PTOP + PBOTTOM - DH*(KH-1) - 1) / SH) + 1
    """
    xp = array_module(x)
    p = float(norm_type)
    if definition not in ("pytorch", "onnx"):
        raise ValueError(f"{layer}: definition must be 'pytorch' or 'onnx', got {definition!r}")
    if p == 0 or math.isnan(p):
        raise ValueError(f"{layer}: norm_type must be non-zero, got {norm_type!r}")
    onnx = definition == "onnx"
    if not onnx and (padding != 0 or dilation != 1):
        raise ValueError(f"{layer}: padding and dilation need definition='onnx' (PyTorch's LPPool2d has neither)")
    rule = "onnx" if onnx else "pytorch"
    if math.isinf(p):
        sign = 1.0 if p > 0 else -1.0
        y, max_cache = max_pool2d_forward(sign * xp.abs(x), kernel_size, stride, padding, dilation, ceil_mode,
                                          check_geometry=check_geometry, layer=layer, padding_rule=rule)
        return sign * y, LPPoolCache(p, x, definition, max_cache)
    if onnx:  # the window sum of |x|^p: an average with divisor 1 over zero padding
        power, avg_cache = avg_pool2d_forward(xp.abs(x) ** p, kernel_size, stride, padding, ceil_mode, True, 1,
                                              check_geometry=check_geometry, layer=layer, dilation=dilation,
                                              padding_rule="onnx")
        u, scale = power, 1
    else:
        power, avg_cache = avg_pool2d_forward(x ** p, kernel_size, stride, 0, ceil_mode, True,
                                              check_geometry=check_geometry, layer=layer)
        scale = avg_cache.geometry.kernel[0] * avg_cache.geometry.kernel[1]
        u = power * scale
    with np.errstate(invalid="ignore"):  # a negative sum to a fractional power is NaN, as in PyTorch
        y = u ** (1.0 / p)
    return y, LPPoolCache(p, x, definition, LPPowerCache(avg_cache, u, scale))


def lp_pool2d_backward(dy, cache):
    """``dx = p x^(p-1) * window_backward(where(u != 0, u^(1/p - 1) / p, 0))``; return ``dx``
    (``|x|^(p-1) sign(x)`` instead of ``x^(p-1)`` for ``definition="onnx"``).

    ``d(u^(1/p))/du`` is computed as ``u^(1/p - 1) / p``, as PyTorch's autograd does, not as
    ``y / (p u)``: where a window sums to ``inf`` the latter is ``inf/inf = NaN``, the former
    ``0`` (or ``1`` for ``p = 1``).

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.pool.lp_pool2d_backward`.

    Shape:
        dy: (N, C, OH, OW) -> dx: (N, C, H, W)
    """
    p, x, definition, rest = cache
    xp = array_module(dy)
    if math.isinf(p):
        # d|x|/dx = sign(x); the -inf case negates twice (y = -max(-|x|)), so the rule is the same.
        return max_pool2d_backward(dy, rest) * xp.sign(x)
    avg_cache, u, scale = rest
    nonzero = u != 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        du = xp.where(nonzero, dy * xp.where(nonzero, u, 1) ** (1.0 / p - 1) / p, 0)
    d_power = avg_pool2d_backward(du * scale, avg_cache)
    with np.errstate(invalid="ignore", divide="ignore"):  # 0^(p-1) with p < 1 is inf, as in PyTorch
        if definition == "onnx":  # d|x|^p/dx = p |x|^(p-1) sign(x); 0 at x = 0
            return xp.where(x != 0, d_power * (p * xp.abs(x) ** (p - 1)) * xp.sign(x), 0)
        return d_power * (p * x ** (p - 1))


# -- the ops and their memory rules ---------------------------------------------------------------

def _scatter_bytes(g: PoolGeometry, itemsize: int) -> int:
    """Backward adds each kernel offset's gradient onto the stride phases of a padded input-sized
    buffer, then interleaves them into dx (a second buffer when strided or padded)."""
    n, c, h, w = g.input_shape
    (ph, pw), (sh, sw) = g.padding, g.stride
    padded = n * c * (h + 2 * ph + sh) * (w + 2 * pw + sw) * itemsize
    return padded if (sh, sw) != (1, 1) or (ph, pw) != (0, 0) else 0


def max_pool2d_memory(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *, padding_rule="pytorch",
                      **options):
    """The switches (one byte per output up to 16x16 kernels), kept for backward; forward also
    makes the padded input, a window copy and two masks; backward scatters like average pooling."""
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, padding_rule=padding_rule)
    out = math.prod(g.output_shape)
    switch = np.dtype(switches_dtype(g.kernel)).itemsize
    n, c, h, w = g.input_shape
    (ph, pw), (ah, aw) = g.padding, g.padding_after
    padded = n * c * (h + ph + ah) * (w + pw + aw) * x.itemsize if (ph or pw or ah or aw) else 0
    return LayerMemory(saved=out * switch, forward_temp=padded + out * (x.itemsize + 2),
                       backward_temp=_scatter_bytes(g, x.itemsize) + out * (x.itemsize + 1))


def avg_pool2d_memory(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                      divisor_override=None, *, dilation=1, padding_rule="pytorch", **options):
    """Only the divisor and the geometry are kept; forward sums the windows of the padded input
    (a copy when there is padding or a ceil-mode overhang); backward scatters ``dy / divisor``."""
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, padding_rule=padding_rule)
    out = math.prod(g.output_shape)
    padded = int(math.prod(g.padded_shape)) * x.itemsize if g.padded_shape != tuple(g.input_shape) else 0
    return LayerMemory(forward_temp=padded, backward_temp=_scatter_bytes(g, x.itemsize) + out * x.itemsize)


def lp_pool2d_memory(x, norm_type, kernel_size, stride=None, ceil_mode=False, *, definition="pytorch", padding=0,
                     dilation=1, padding_rule="pytorch", **options):
    """The input (referenced), the power sums and the output (finite p), or the switches (p = inf).
    ``definition="onnx"`` (ONNX's ``LpPool``, with ``padding``, ``dilation`` and ``padding_rule``)
    keeps the window sums themselves (not a rescaled copy), and its backward works on ``|x|``."""
    if math.isinf(float(norm_type)):
        rule = max_pool2d_memory(x, kernel_size, stride, padding, dilation, ceil_mode, padding_rule=padding_rule)
        return LayerMemory(keeps_input=True, saved=rule.saved, forward_temp=rule.forward_temp + x.nbytes,
                           backward_temp=rule.backward_temp + x.nbytes)
    g = pool_geometry(x.shape, kernel_size, stride, padding, dilation, ceil_mode, padding_rule=padding_rule)
    out = math.prod(g.output_shape) * x.itemsize
    if definition == "onnx":
        return LayerMemory(keeps_input=True, saved=out, forward_temp=x.nbytes + out,
                           backward_temp=x.nbytes + 3 * out + _scatter_bytes(g, x.itemsize))
    return LayerMemory(keeps_input=True, saved=2 * out, forward_temp=x.nbytes + out,
                       backward_temp=2 * x.nbytes + 3 * out + _scatter_bytes(g, x.itemsize))


MAX_POOL2D = define_op("max_pool2d", reference="numpy")
MAX_POOL2D.register(Kernel("numpy", "numpy", 0, max_pool2d_forward, max_pool2d_backward, MaxPoolCache,
                           memory=max_pool2d_memory, doc="a loop over the kernel offsets, with switches"))
AVG_POOL2D = define_op("avg_pool2d", reference="numpy")
AVG_POOL2D.register(Kernel("numpy", "numpy", 0, avg_pool2d_forward, avg_pool2d_backward, AvgPoolCache,
                           memory=avg_pool2d_memory, doc="a loop over the kernel offsets"))
