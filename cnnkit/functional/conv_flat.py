"""Convolution as one GEMM over the *flattened* padded input: im2col where every row is one slice.

The classic im2col copies ``kh*kw`` strided windows per image; each copied row is only
``out_w`` values long, so the copy is dominated by loop overhead. This kernel lays the padded
input out channel-major over the whole batch, ``X (C, N*Hq*Wq)`` (one row per channel, images one
after another). Then, for a stride-1 convolution, output position ``q = (n*Hq + oy)*Wq + ox`` reads
tap ``(i, j)`` at ``q + i*Wq + j``: the whole column block of tap ``(i, j)`` is the *contiguous*
slice ``X[:, off : off + L]``, ``off = i*Wq + j`` (``L = N*Hq*Wq``). im2col becomes ``C*kh*kw``
long memcpy's and the convolution one GEMM::

    Y (F, L) = W (F, C*kh*kw) @ cols (C*kh*kw, L)

computed on the padded grid; the ``out_h x out_w`` corner of each ``Hq x Wq`` image is the output
(the other positions read across the row/image seams and are dropped). Neighbouring rows and
images share their zero padding: a tap reading past the right edge of a row lands in the left
padding of the next row, so ``Wq = W + pw`` (not ``W + 2*pw``) and ``Hq = H + ph``.

Stride ``s > 1`` is split into ``s*s`` *phases*: phase ``(a, b)`` holds padded rows
``a, a+s, a+2s, ...`` and columns ``b, b+s, ...``. Tap ``(i, j)`` of a strided convolution reads
phase ``(i % s, j % s)`` at offset ``(i // s)*Wq + (j // s)`` with stride 1, so the same
contiguous-slice im2col serves every stride and dilation (tap ``i`` then sits at ``i*d``).

The GEMM runs by cache-sized chunks of columns (:func:`tap_gemm`): each chunk is gathered and
multiplied while it sits in L2, the chunks spread over the cores, so the ``kh*kw`` times larger
column matrix is never written to memory. The cache keeps the input itself; backward rebuilds
the phase buffer.

Backward mirrors it. Phase by phase, ``dx`` is itself a flat convolution of ``dY`` (padded
with ``tail`` zeros on both sides) with that phase's taps mirrored, and the phases are then
interleaved into ``dx``: no column matrix, no col2im adds. ``dW = dY @ cols^T`` (zeros in ``dY``
mask the dropped positions) comes out of the same pass: written as ``sum_p dY[f, p - off_t]
X[c, p]``, it multiplies the very columns of ``dY`` just gathered for ``dx`` by the input's phase
buffer (:func:`tap_gemm_and_correlate`).

Cost: the GEMM also computes the dropped seam positions, ``Hq*Wq / (out_h*out_w)`` times the
useful work (3x3, stride 1, padding 1: 1.06x at 32x32, 1.13x at 16x16, 1.27x at 8x8; with
separate padding per image it was 1.13x, 1.27x and 1.56x), so the layer picks
this kernel only where the cheaper copy wins (see ``cnnkit.functional.conv``). ``groups`` must
be 1.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import array_module
from .flat_gemm import chunk_length, grid_window_store, image_chunks, tap_gemm, tap_gemm_and_correlate, \
    tap_gemm_into_output, tap_weight_gradient
from .flat_layout import FlatGeometry, flat_geometry, from_phases, gather_columns, scatter_columns, to_phases
from .instrument import section
from .memory import LayerMemory
from .parallel import MIN_PARALLEL_BYTES, num_threads, parallel_chunks, threaded_matmul
from .workspace import scratch


class FlatCache(NamedTuple):
    x: object  # the input itself: the phase buffer is rebuilt from it in backward
    cols: object  # (C*kh*kw, L), or None when not kept (rebuilt from `x` in backward)
    weight: object
    geometry: FlatGeometry


def _phase_buffer(x, g: FlatGeometry):
    """``to_phases(x)`` into the shared scratch buffer."""
    xp = array_module(x)
    shape = (len(g.phases), x.shape[1], g.length + g.tail)
    return to_phases(x, g, out=scratch("flat_phases", shape, x.dtype, xp))


def conv2d_flat_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, keep_columns=False, workspace=None):
    """Convolution (``groups=1``) as a GEMM over the flattened phase buffer; ``(y, cache)``.

    The GEMM runs by cache-sized chunks of columns written straight into ``y``
    (:func:`tap_gemm_into_output`). The cache holds the input ``x`` itself, not a padded copy:
    the layer before (a ReLU, a residual sum) keeps that array anyway, so the convolution adds
    nothing to a training step's memory; backward rebuilds the phase buffer (one copy) and
    gathers the column chunks again. ``keep_columns=True`` builds and keeps the whole column
    matrix instead (``kh*kw`` times the input's size, one GEMM split by rows over the threads);
    ``workspace`` (a :class:`~cnnkit.functional.workspace.Workspace` owned by the calling layer)
    then holds them from step to step. Transient buffers come from the shared scratch pool.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.conv.conv2d_naive`.

    Shape:
        x: (N, C, H, W), weight: (F, C, kh, kw), bias: (F,) -> y: (N, F, out_h, out_w)
        out_h = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1, likewise out_w
    """
    xp = array_module(x)
    f, c = weight.shape[:2]
    g = flat_geometry(x.shape, weight.shape[2:], stride, padding, dilation)
    (oh, ow), (hq, wq), n = g.output, g.grid, x.shape[0]
    k = c * g.kernel[0] * g.kernel[1]
    y = xp.empty((n, f, oh, ow), dtype=x.dtype)
    if not keep_columns:
        with section("im2col"):
            phases = _phase_buffer(x, g)
        with section("gemm"):
            tap_gemm_into_output(weight.reshape(f, k), phases, g, y, bias)
        return y, FlatCache(x, None, weight, g)
    with section("im2col"):
        phases = _phase_buffer(x, g)
        cols_out = xp.empty((k, g.length), x.dtype) if workspace is None else \
            workspace.get("cols", (k, g.length), x.dtype, xp)
        cols = gather_columns(phases, g, out=cols_out)
        if cols is not cols_out:  # 1x1: the columns are a view of the scratch phases
            cols_out[...] = cols
    with section("gemm"):
        y_grid = threaded_matmul(weight.reshape(f, k), cols_out, out=scratch("flat_y", (f, g.length), x.dtype, xp))
    with section("transpose"):
        y_valid = y_grid.reshape(f, n, hq, wq)[:, :, :oh, :ow].transpose(1, 0, 2, 3)

        def copy_out(n0, n1):  # the layout copy, then the bias on contiguous rows (a broadcast add
            y[n0:n1] = y_valid[n0:n1]  # from the transposed view was 2x slower than the copy)
            if bias is not None:
                y_rows = y[n0:n1].reshape(n1 - n0, f, oh * ow)
                y_rows += bias.reshape(1, f, 1)

        parallel_chunks(copy_out, n, y.nbytes * 2, xp)
    return y, FlatCache(x, cols_out, weight, g)


def _channel_sums(xp, dy):
    """``dy.sum(axis=(0, 2, 3))`` in one pass (see ``functional.norm``)."""
    return xp.einsum("nfhw->f", dy)


# Below this many input channels, dx goes through dcols and col2im (see conv2d_flat_backward).
DIRECT_DX_MIN_CHANNELS = 8


def _phase_kernel(g: FlatGeometry, members):
    """The ``(rows, cols)`` lattice the kernel taps ``members`` (one phase's, in order) fill, else None."""
    kw = g.kernel[1]
    rows = {t // kw for t in members}
    cols = {t % kw for t in members}
    return (len(rows), len(cols)) if len(rows) * len(cols) == len(members) else None


def conv2d_flat_backward(dy, cache: FlatCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)`` of ``conv2d_flat_forward``; ``None`` for what is not asked.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.conv.conv2d_naive_backward`.

    Shape:
        dy: (N, F, out_h, out_w) -> dx: (N, C, H, W), dweight: (F, C, kh, kw), dbias: (F,)
        dY = dy on the grid (zeros elsewhere); dweight = dY @ cols^T; dx = col2im(W^T @ dY),
        computed per phase p as dphase_p = W_p^T-mirrored flat convolution of dY
    """
    xp = array_module(dy)
    weight, g = cache.weight, cache.geometry
    f, c = weight.shape[:2]
    n, (oh, ow), (hq, wq) = dy.shape[0], g.output, g.grid
    # dx, phase by phase, is a flat convolution of dY (padded by `tail` zeros on both sides) with
    # the phase's taps mirrored, chunked like forward: no column matrix, no col2im adds.
    margin = g.tail if need_dx and c >= DIRECT_DX_MIN_CHANNELS else 0
    with section("transpose"):
        # Zeros on the dropped seam positions mask the garbage columns there (the buffer is
        # shared scratch: the seams and margins are zeroed here, a thin frame beside the
        # valid corner).
        dy_padded = scratch("flat_dy", (f, g.length + 2 * margin), dy.dtype, xp)
        dy_padded[:, :margin] = 0
        dy_padded[:, margin + g.length:] = 0
        dy_grid = dy_padded[:, margin:margin + g.length]
        grid = dy_grid.reshape(f, n, hq, wq)
        dy_cn = dy.transpose(1, 0, 2, 3)

        def copy_in(f0, f1):
            grid[f0:f1, :, oh:] = 0
            grid[f0:f1, :, :oh, ow:] = 0
            grid[f0:f1, :, :oh, :ow] = dy_cn[f0:f1]

        parallel_chunks(copy_in, f, dy.nbytes * 2, xp)
    dbias = _channel_sums(xp, dy) if need_dbias else None
    dweight = None
    # With few input channels the direct dx is a GEMM of only C rows, which OpenBLAS runs at a
    # crawl: then dcols = W^T @ dY (C*kh*kw rows) and col2im adds instead.
    direct_dx = need_dx and c >= DIRECT_DX_MIN_CHANNELS
    # Without kept columns, dW comes out of the direct dx pass, from the same gathered columns
    # of dY (tap_gemm_and_correlate), instead of a second gather of the input's columns.
    together = direct_dx and need_dweight and cache.cols is None
    if need_dweight and not together:
        if cache.cols is not None:
            with section("gemm"):
                # (cols @ dY^T)^T, not dY @ cols^T: the same product, but OpenBLAS runs this
                # orientation of the long-inner-dimension GEMM up to 9x faster (measured at
                # F=16, K=144, L=148k: 36 ms against 334 ms).
                dweight = threaded_matmul(cache.cols, dy_grid.T).T.reshape(weight.shape)
        else:
            with section("im2col"):
                phases = _phase_buffer(cache.x, g)
            with section("gemm"):
                dweight = tap_weight_gradient(phases, g.taps, dy_grid, g.length, g.kernel).reshape(weight.shape)
    dx = None
    if need_dx and not direct_dx:
        with section("gemm"):
            dcols = threaded_matmul(weight.reshape(f, -1).T, dy_grid,
                                    out=scratch("flat_cols", (c * len(g.taps), g.length), dy.dtype, xp))
        with section("col2im"):
            buffer = scatter_columns(dcols, g, c, out=scratch("flat_dphases", (len(g.phases), c, g.length + g.tail),
                                                               dy.dtype, xp))
            dx = from_phases(buffer, g)
    elif need_dx:
        ntaps = len(g.taps)
        weight_taps = weight.reshape(f, c, ntaps)
        # Stride 1 (one phase): image-aligned chunks go straight into dx, the input window of
        # each grid image; no phase buffer of dx, no from_phases pass. Otherwise per phase into
        # the phases of dx, interleaved at the end.
        into_dx = g.stride == (1, 1)
        if into_dx:
            dx, length = xp.empty(g.input_shape, dtype=dy.dtype), g.length  # the tail holds no input
        else:
            dphases = scratch("flat_dphases", (len(g.phases), c, g.length + g.tail), dy.dtype, xp)
            length = g.length + g.tail
        if together:
            with section("im2col"):
                phases = _phase_buffer(cache.x, g)
            dweight_taps = xp.empty((f, c, ntaps), dtype=weight.dtype)
        for p in range(len(g.phases)):
            members = [t for t, (phase, _) in enumerate(g.taps) if phase == p]
            # dphase_p[c, q] = sum_{f, t in p} W[f, c, t] * dY[f, q - off_t]: rows (f, t) of the
            # mirrored weight read dY_padded at margin - off_t + q.
            mirrored = xp.ascontiguousarray(weight_taps[:, :, members].transpose(1, 0, 2).reshape(c, -1))
            taps = tuple((0, margin - g.taps[t][1]) for t in members)
            kernel = _phase_kernel(g, members)
            if into_dx:
                out = grid_window_store(g, dx, *g.padding)
                bounds = image_chunks(g, chunk_length(f * len(members), dy.itemsize, c, length))
            else:
                out, bounds = dphases[p], None
            with section("gemm"):
                if together:
                    rows = tap_gemm_and_correlate(mirrored, dy_padded[None], taps, length, out, phases[p],
                                                  kernel, bounds)  # rows (f, t)
                    dweight_taps[:, :, members] = rows.reshape(f, len(members), c).transpose(0, 2, 1)
                else:
                    tap_gemm(mirrored, dy_padded[None], taps, length, out, kernel, bounds)
        if together:
            dweight = dweight_taps.reshape(weight.shape)
        if not into_dx:
            with section("col2im"):
                dx = from_phases(dphases, g)
    return dx, dweight, dbias


def conv2d_flat_memory(x, weight, stride=1, padding=0, dilation=1, keep_columns_max_bytes=0) -> LayerMemory:
    """What the flat kernel holds (``x``, ``weight`` as ArraySpecs): the cache is the input itself
    (plus the columns when they are small enough to keep). Shared scratch buffers: the phase
    buffer, dy on the grid with margins of ``tail`` zeros, per thread one chunk of columns and
    of output (the columns are never built whole; with kept columns also the output grid), and
    for dx the phases of dx (strided layers) or dcols and the phases (fewer than
    ``DIRECT_DX_MIN_CHANNELS`` channels); stride-1 dx is written straight from the GEMM chunks."""
    itemsize = x.itemsize
    g = flat_geometry(tuple(x.shape), tuple(weight.shape[2:]), stride, padding, dilation)
    f, c = weight.shape[:2]
    k = c * g.kernel[0] * g.kernel[1]
    phases = len(g.phases) * c * (g.length + g.tail) * itemsize
    cols = k * g.length * itemsize
    kept = cols if cols <= keep_columns_max_bytes else 0

    # forward: (F, K) @ chunks of the input's columns; backward: (C, F*T) @ chunks of dY's. Each
    # thread that takes part holds one chunk; small jobs run on the calling thread alone.
    def widest(k_rows, rows, length, image_aligned):
        chunk = chunk_length(k_rows, itemsize, rows, length)
        bounds = image_chunks(g, chunk) if image_aligned else [(0, min(chunk, length))]
        threads = num_threads() if k_rows * length * itemsize >= MIN_PARALLEL_BYTES and len(bounds) > 1 else 1
        return max(b - a for a, b in bounds), threads

    forward_chunk, forward_threads = widest(k, f, g.length, True)
    backward_chunk, backward_threads = widest(f * len(g.taps), c, g.length + g.tail, tuple(g.stride) == (1, 1))
    chunk_cols = max(forward_threads * k * forward_chunk, backward_threads * f * len(g.taps) * backward_chunk)
    chunk_out = max(forward_threads * f * forward_chunk, backward_threads * c * backward_chunk)
    scratch_bytes = {"flat_phases": phases, "flat_dy": f * (g.length + 2 * g.tail) * itemsize,
                     "flat_chunk_cols": chunk_cols * itemsize, "flat_chunk_out": chunk_out * itemsize}
    if kept:  # the whole-column path writes the output grid (F, L) before its layout copy
        scratch_bytes["flat_y"] = f * g.length * itemsize
    if c < DIRECT_DX_MIN_CHANNELS:  # dx through dcols (C*kh*kw, L) and col2im into phases
        scratch_bytes["flat_cols"] = cols
        scratch_bytes["flat_dphases"] = phases
    elif tuple(g.stride) != (1, 1):  # dx phase by phase, then interleaved
        scratch_bytes["flat_dphases"] = phases
    return LayerMemory(keeps_input=True, saved=kept, backward_temp=2 * weight.size * itemsize, scratch=scratch_bytes)
