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
from ..profile import section
from .im2col import conv_geometry
from .parallel import num_threads, parallel_chunks, single_threaded_blas, threaded_matmul
from .workspace import scratch


class FlatGeometry(NamedTuple):
    input_shape: tuple  # (N, C, H, W)
    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    output: tuple  # (out_h, out_w)
    grid: tuple  # (Hq, Wq): one phase image
    phases: tuple  # the (a, b) phases some tap reads, in buffer order
    taps: tuple  # per tap (i, j) in weight order: (phase index, flat offset)
    tail: int  # zeros after the last image, so that every tap slice has length L

    @property
    def length(self) -> int:
        """``L = N * Hq * Wq``: the number of columns (output grid positions)."""
        return self.input_shape[0] * self.grid[0] * self.grid[1]


def flat_geometry(input_shape, kernel, stride=1, padding=0, dilation=1) -> FlatGeometry:
    """The phase grid, the taps' phases and offsets, for ``conv_geometry``'s arguments.

    Shape:
        stride 1: grid Hq = max(out_h, H + ph), likewise Wq (padding shared between neighbours)
        stride > 1: grid Hq = out_h + max_i((i*dh) // sh), likewise Wq
        L = N*Hq*Wq
    """
    n, c, h, w = input_shape
    kernel, stride, padding, dilation, output = conv_geometry((h, w), kernel, stride, padding, dilation)
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, output
    (ph, pw) = padding
    if (sh, sw) == (1, 1):
        # Neighbouring rows and images share their zero padding: a read past the right edge of
        # a row wraps to the left padding of the next row, one past the bottom of an image into
        # the top padding of the next, so one margin of `pw` columns and `ph` rows suffices.
        hq, wq = max(oh, h + ph), max(ow, w + pw)
    else:
        hq = oh + (dh * (kh - 1)) // sh
        wq = ow + (dw * (kw - 1)) // sw
    phases, taps = [], []
    for i in range(kh):
        for j in range(kw):
            phase = ((i * dh) % sh, (j * dw) % sw)
            if phase not in phases:
                phases.append(phase)
            taps.append((phases.index(phase), ((i * dh) // sh) * wq + (j * dw) // sw))
    tail = max(offset for _, offset in taps)
    return FlatGeometry((n, c, h, w), kernel, stride, padding, dilation, output, (hq, wq), tuple(phases),
                        tuple(taps), tail)


def _phase_window(g: FlatGeometry, phase):
    """For phase ``(a, b)``: the grid slices that hold real input and the input slices they hold.

    Grid row ``y`` of phase ``a`` is padded row ``a + sh*y``, i.e. input row ``a + sh*y - ph``.
    Returns ``(grid_rows, grid_cols, input_rows, input_cols)`` or ``None`` if the phase sees
    only padding.
    """
    (a, b), (sh, sw), (ph, pw), (hq, wq) = phase, g.stride, g.padding, g.grid
    h, w = g.input_shape[2:]
    axes = []
    for start_pad, step, pad, size, grid in ((a, sh, ph, h, hq), (b, sw, pw, w, wq)):
        first = max(0, -(-(pad - start_pad) // step))  # first grid index on a real input row
        last = min(grid - 1, (size - 1 + pad - start_pad) // step)
        if last < first:
            return None
        in_first = start_pad + step * first - pad
        axes.append((slice(first, last + 1), slice(in_first, in_first + step * (last - first) + 1, step)))
    return axes[0][0], axes[1][0], axes[0][1], axes[1][1]


def _channel_major(buffer, g: FlatGeometry, channels: int):
    """View ``(channels, L + tail)`` buffer rows as ``(channels, N, Hq, Wq)`` images."""
    return buffer[:, : g.length].reshape(channels, g.input_shape[0], g.grid[0], g.grid[1])


def to_phases(x, g: FlatGeometry, out=None):
    """The phase buffer ``(phases, C, L + tail)``: padded, phase-split, channel-major ``x``.

    ``out`` (any contents, e.g. a shared scratch buffer) receives the result: the input's
    positions are copied and only the padding around them (a thin frame) is zeroed, chunk by
    chunk, never the whole buffer.

    Shape:
        x: (N, C, H, W) -> (len(g.phases), C, N*Hq*Wq + tail)
    """
    xp = array_module(x)
    n, c = x.shape[:2]
    buffer = out if out is not None else xp.empty((len(g.phases), c, g.length + g.tail), dtype=x.dtype)
    x_cn = x.transpose(1, 0, 2, 3)
    windows = [(p, _phase_window(g, phase)) for p, phase in enumerate(g.phases)]

    def fill(c0, c1):
        for p, window in windows:
            buffer[p, c0:c1, g.length:] = 0  # the tail
            images = _channel_major(buffer[p, c0:c1], g, c1 - c0)
            if window is None:
                images[...] = 0
                continue
            grid_rows, grid_cols, rows, cols = window
            images[:, :, :grid_rows.start] = 0  # the padding frame: rows above, below, then the sides
            images[:, :, grid_rows.stop:] = 0
            images[:, :, grid_rows, :grid_cols.start] = 0
            images[:, :, grid_rows, grid_cols.stop:] = 0
            images[:, :, grid_rows, grid_cols] = x_cn[c0:c1, :, rows, cols]

    parallel_chunks(fill, c, buffer.nbytes, xp)
    return buffer


def from_phases(buffer, g: FlatGeometry):
    """Inverse of ``to_phases`` for gradients: interleave the phases back into ``(N, C, H, W)``.

    Input pixels no tap reads (kernel smaller than the stride) get zero.
    """
    xp = array_module(buffer)
    n, c, h, w = g.input_shape
    windows = [(p, _phase_window(g, phase)) for p, phase in enumerate(g.phases)]
    full = _covers_input(g)
    dx = (xp.empty if full else xp.zeros)((n, c, h, w), dtype=buffer.dtype)
    dx_cn = dx.transpose(1, 0, 2, 3)

    def gather(c0, c1):
        for p, window in windows:
            if window is not None:
                grid_rows, grid_cols, rows, cols = window
                dx_cn[c0:c1, :, rows, cols] = _channel_major(buffer[p, c0:c1], g, c1 - c0)[:, :, grid_rows, grid_cols]

    parallel_chunks(gather, c, dx.nbytes * 2, xp)
    return dx


def _covers_input(g: FlatGeometry) -> bool:
    """Whether the phases' windows together hold every input pixel (then ``dx`` needs no zeros)."""
    (sh, sw), (hq, wq), (ph, pw) = g.stride, g.grid, g.padding
    h, w = g.input_shape[2:]
    rows = {a for a, _ in g.phases}
    cols = {b for _, b in g.phases}
    if len(rows) < sh or len(cols) < sw or len(g.phases) < len(rows) * len(cols):
        return False
    # every padded row pad..pad+h-1 must lie inside the grid of its phase
    return (ph + h - 1) // sh < hq and (pw + w - 1) // sw < wq


def gather_columns(buffer, g: FlatGeometry, out=None):
    """im2col on the phase buffer: ``cols[c, t, :] = buffer[phase_t, c, off_t : off_t + L]``.

    Shape:
        buffer (phases, C, L + tail) -> cols (C*kh*kw, L), row order (c, i, j) as the weight
    """
    xp = array_module(buffer)
    c = buffer.shape[1]
    taps, length = g.taps, g.length
    if len(taps) == 1 and taps[0][1] == 0:
        return buffer[0, :, :length]  # 1x1, stride 1, no padding: the input is its own columns
    cols = out if out is not None else xp.empty((c, len(taps), length), dtype=buffer.dtype)
    cols = cols.reshape(c, len(taps), length)

    blocks = _tap_blocks(buffer, taps, g.kernel, length)
    cols4 = cols.reshape(c, g.kernel[0], g.kernel[1], length)

    def copy(c0, c1):
        for row_slice, col_slice, view in blocks:
            cols4[c0:c1, row_slice, col_slice] = view[c0:c1]

    parallel_chunks(copy, c, cols.nbytes, xp)
    return cols.reshape(c * len(taps), length)


def scatter_columns(dcols, g: FlatGeometry, channels: int, out=None):
    """col2im on the phase buffer (adjoint of ``gather_columns``): add each tap's block back.

    ``out`` (any contents) receives the result; it is zeroed here, chunk by chunk.

    Shape:
        dcols (C*kh*kw, L) -> buffer (phases, C, L + tail)
    """
    xp = array_module(dcols)
    taps, length = g.taps, g.length
    if len(taps) == 1 and taps[0][1] == 0:
        return dcols.reshape(1, channels, length)
    blocks = dcols.reshape(channels, len(taps), length)
    shape = (len(g.phases), channels, length + g.tail)
    buffer = out if out is not None else xp.empty(shape, dtype=dcols.dtype)

    def add(c0, c1):
        buffer[:, c0:c1] = 0
        for t, (p, offset) in enumerate(taps):
            buffer[p, c0:c1, offset:offset + length] += blocks[c0:c1, t]

    parallel_chunks(add, channels, dcols.nbytes * 2, xp)
    return buffer


# Columns per chunk: the chunk's columns take about this many bytes, so they are gathered into
# and read by the GEMM while still in the core's L2 cache (4 MB per core here).
CHUNK_BYTES = 1 << 20
# ... but at least this many columns per row of the fixed GEMM operand (the weight), up to
# MAX_MIN_COLUMNS: OpenBLAS packs that operand again for every chunk, which chunks of a few
# hundred columns do not amortise. Measured (forward GEMM, 2 threads): 2x512x28x28 -> 512,
# 90 ms with 256-column chunks, 53 ms with 1024 (one 2-thread GEMM of the whole matrix: 49 ms);
# 16x256x14x14 -> 256, 55 -> 30 ms (26 ms).
COLUMNS_PER_ROW = 8
MIN_COLUMNS, MAX_MIN_COLUMNS = 256, 1024
# Deep layers have few columns (2x512x14x14: 482): they are still cut into one chunk per thread
# down to this many columns each (backward 121 -> 94 ms there).
MIN_THREAD_COLUMNS = 64


def _chunk_length(k: int, itemsize: int, rows: int, length: int) -> int:
    """Columns per chunk for ``rows x k`` times ``k x length``: cache-sized, then evened out.

    The chunk count is rounded up to a multiple of the thread count so that every thread gets
    the same work (two unequal chunks for two threads left one core idle half the time).
    """
    target = max(CHUNK_BYTES // (k * itemsize), min(max(MIN_COLUMNS, COLUMNS_PER_ROW * rows), MAX_MIN_COLUMNS))
    threads = num_threads()
    count = -(-length // target)
    if length >= threads * MIN_THREAD_COLUMNS:  # short rows too: one chunk would leave a core idle
        count = -(-count // threads) * threads
    return max(1, -(-length // count))


def _tap_blocks(buffer, taps, kernel, length: int):
    """The column gather as a few strided copies: ``[(rows, cols, view)]`` with ``view[c, u, v, q]``
    the column ``q`` of tap ``(rows[u], cols[v])`` (``rows``, ``cols`` slices of the kernel).

    The taps of one phase sit on a lattice of the kernel, ``i = i0 + u*di``, ``j = j0 + v*dj``,
    and read offsets ``base + u*si + v*sj``: one strided view of the phase's rows covers them all
    (stride 1: one block for the whole kernel, including the mirrored taps of the direct ``dx``;
    stride 2: four). Gathering a chunk then takes a copy per block instead of a NumPy call per
    tap; each call is microseconds of Python that the threads take turns at under the GIL
    (measured: ResNet-20's 16-channel layer, forward + backward, 48.6 -> 36.1 ms). Taps that do
    not form a lattice get a block each.

    Shape:
        buffer (phases, C, >= length + max offset) -> views (C, len(rows), len(cols), length)
    """
    xp = array_module(buffer)
    kh, kw = kernel if kernel is not None else (1, len(taps))
    by_phase = {}
    for t, (phase, offset) in enumerate(taps):
        by_phase.setdefault(phase, {})[divmod(t, kw)] = offset
    item = buffer.itemsize
    read_only = {"writeable": False} if xp.__name__ == "numpy" else {}
    blocks = []
    for phase, offsets in by_phase.items():
        rows = buffer[phase]
        lattice = _lattice(offsets)
        if lattice is None:  # one block per tap
            blocks += [(slice(i, i + 1), slice(j, j + 1), rows[:, None, None, off:off + length])
                       for (i, j), off in offsets.items()]
            continue
        row_slice, col_slice, base, step_u, step_v = lattice
        shape = (rows.shape[0], len(range(kh)[row_slice]), len(range(kw)[col_slice]), length)
        # The view starts at the block's first tap; negative steps (mirrored taps) read lower
        # offsets of the same rows, never outside the buffer.
        view = xp.lib.stride_tricks.as_strided(rows[:, base:], shape=shape,
                                               strides=(rows.strides[0], step_u * item, step_v * item, item),
                                               **read_only)
        blocks.append((row_slice, col_slice, view))
    return blocks


def _lattice(offsets: dict):
    """``(rows, cols, base, step_u, step_v)`` if the taps ``{(i, j): offset}`` form a lattice, else None."""
    rows, cols = sorted({i for i, _ in offsets}), sorted({j for _, j in offsets})
    di = rows[1] - rows[0] if len(rows) > 1 else 1
    dj = cols[1] - cols[0] if len(cols) > 1 else 1
    if rows != list(range(rows[0], rows[-1] + 1, di)) or cols != list(range(cols[0], cols[-1] + 1, dj)) \
            or len(offsets) != len(rows) * len(cols):
        return None
    base = offsets[rows[0], cols[0]]
    step_u = offsets[rows[0] + di, cols[0]] - base if len(rows) > 1 else 0
    step_v = offsets[rows[0], cols[0] + dj] - base if len(cols) > 1 else 0
    for (i, j), offset in offsets.items():
        if offset != base + (i - rows[0]) // di * step_u + (j - cols[0]) // dj * step_v:
            return None
    return slice(rows[0], rows[-1] + 1, di), slice(cols[0], cols[-1] + 1, dj), base, step_u, step_v


def _gather_blocks(cols, blocks, kernel, l0: int, l1: int) -> None:
    """Columns ``l0:l1`` into ``cols (C, kh*kw, l1 - l0)`` from :func:`_tap_blocks`'s views."""
    kh, kw = kernel if kernel is not None else (1, cols.shape[1])
    cols4 = cols.reshape(cols.shape[0], kh, kw, l1 - l0)
    for row_slice, col_slice, view in blocks:
        cols4[:, row_slice, col_slice] = view[..., l0:l1]


def _over_column_chunks(buffer, taps, kernel, length: int, visit, rows: int = 0, bounds=None) -> list:
    """Gather the columns ``cols[c*T + t, q] = buffer[p_t, c, off_t + q]`` chunk by chunk, on every core.

    Calls ``visit(cols, l0, l1, mine)`` for each chunk of columns ``l0:l1`` (``cols`` is
    ``(C*T, l1 - l0)`` in this thread's scratch), while the chunk sits in the core's cache; the
    chunks spread over the threads (:func:`parallel_chunks`) with BLAS on one thread each, and
    ``mine`` is a dict private to the calling thread (for its buffers and running sums). Returns
    the threads' dicts. The whole column matrix, ``kh*kw`` times the input, is never built.
    ``bounds`` (a list of ``(l0, l1)``) replaces the even chunks of :func:`_chunk_length`.
    """
    xp = array_module(buffer)
    k = buffer.shape[1] * len(taps)
    if bounds is None:
        chunk = _chunk_length(k, buffer.itemsize, rows, length)
        bounds = [(l0, min(length, l0 + chunk)) for l0 in range(0, length, chunk)]
    widest = max(l1 - l0 for l0, l1 in bounds)
    blocks = _tap_blocks(buffer, taps, kernel, length)
    results = []

    def work(first, stop):
        cols_buffer = scratch("flat_chunk_cols", (k * widest,), buffer.dtype, xp)
        mine = {}
        for l0, l1 in bounds[first:stop]:
            cols = cols_buffer[: k * (l1 - l0)].reshape(buffer.shape[1], len(taps), l1 - l0)
            _gather_blocks(cols, blocks, kernel, l0, l1)
            visit(cols.reshape(k, l1 - l0), l0, l1, mine)
        results.append(mine)

    with single_threaded_blas():
        parallel_chunks(work, len(bounds), k * length * buffer.itemsize, xp)
    return results


def _image_chunks(g: FlatGeometry, target: int) -> list:
    """Chunk bounds of about ``target`` grid columns that never cut a grid row, and cut an image
    only when one image is wider than ``target``: whole images ``(l0, l1)``, else row bands of
    one image. Each chunk's product then maps onto a block of the NCHW output.
    """
    n, (hq, wq) = g.input_shape[0], g.grid
    per_image = hq * wq
    if target >= per_image:
        images = max(1, round(target / per_image))
        return [(first * per_image, min(n, first + images) * per_image) for first in range(0, n, images)]
    band = max(1, target // wq)
    return [(image * per_image + y0 * wq, image * per_image + min(hq, y0 + band) * wq)
            for image in range(n) for y0 in range(0, hq, band)]


def _grid_window_store(g: FlatGeometry, out, first_row: int, first_col: int, bias=None):
    """A chunk store for :func:`_over_column_chunks` bounds from :func:`_image_chunks`: crops a
    chunk's ``(rows, images*Hq*Wq)`` product to the window ``first_row:first_row + out_h``,
    ``first_col:first_col + out_w`` of each image's grid and copies it into its block of ``out
    (N, rows, out_h, out_w)``, adding ``bias`` (per row) first.

    Forward: the window at ``(0, 0)`` is the output; stride-1 backward: the window at the
    padding ``(ph, pw)`` is the input, i.e. ``dx``.
    """
    xp = array_module(out)
    (hq, wq), (out_h, out_w) = g.grid, out.shape[2:]
    per_image = hq * wq
    bias_column = None if bias is None else bias.reshape(-1, 1)
    rows_window = slice(first_row, first_row + out_h)
    cols_window = slice(first_col, first_col + out_w)

    def store(product, l0, l1):
        if bias_column is not None:
            product += bias_column
        image, offset = divmod(l0, per_image)
        if l1 - l0 >= per_image:  # whole images
            images = (l1 - l0) // per_image
            block = product.reshape(-1, images, hq, wq)[:, :, rows_window, cols_window]
            out[image:image + images] = block.transpose(1, 0, 2, 3)
            return
        band_first = offset // wq  # a band of grid rows of one image
        band_rows = (l1 - l0) // wq
        lo, hi = max(band_first, first_row), min(band_first + band_rows, first_row + out_h)
        if hi > lo:
            band = product.reshape(-1, band_rows, wq)
            out[image, :, lo - first_row:hi - first_row] = band[:, lo - band_first:hi - band_first, cols_window]

    return store


def tap_gemm_into_output(weight_mat, buffer, g: FlatGeometry, y, bias=None):
    """The forward GEMM by chunks written straight into the ``(N, F, out_h, out_w)`` output ``y``.

    Chunks follow images or row bands (:func:`_image_chunks`), so each chunk's product, still
    in the cache, is cropped to the valid corner of its grid positions and copied into its block
    of ``y`` (plus the bias) by the thread that computed it: no ``(F, L)`` grid in memory and
    no separate pass to change its layout (forward 2-12% faster).

    Shape:
        weight_mat (F, C*T), buffer (phases, C, L + tail) -> y (N, F, out_h, out_w)
    """
    f, k = weight_mat.shape
    bounds = _image_chunks(g, _chunk_length(k, buffer.itemsize, f, g.length))
    return tap_gemm(weight_mat, buffer, g.taps, g.length, _grid_window_store(g, y, 0, 0, bias), g.kernel, bounds)


def _product(weight_mat, cols, l0, l1, mine):
    """``weight_mat @ cols`` into this thread's contiguous chunk buffer (BLAS cannot write a
    column slice of a larger array directly); valid until the thread's next chunk."""
    xp = array_module(cols)
    rows = weight_mat.shape[0]
    if mine.get("product") is None or mine["product"].size < rows * (l1 - l0):
        mine["product"] = scratch("flat_chunk_out", (rows * cols.shape[1],), cols.dtype, xp)
    return xp.matmul(weight_mat, cols, out=mine["product"][: rows * (l1 - l0)].reshape(rows, l1 - l0))


def _as_store(out):
    """``out`` as a chunk store ``store(product, l0, l1)``: itself if it is one (see
    :func:`_grid_window_store`), else one writing columns ``l0:l1`` of the array ``out``."""
    if callable(out):
        return out

    def store(product, l0, l1):
        out[:, l0:l1] = product

    return store


def _accumulate(mine, key, value):
    if key in mine:
        mine[key] += value
    else:
        mine[key] = value


def tap_gemm(weight_mat, buffer, taps, length: int, out, kernel=None, bounds=None):
    """``out[:, :length] = weight_mat @ cols`` with ``cols[c*T + t, q] = buffer[p_t, c, off_t + q]``.

    By cache-sized chunks of columns on every core (:func:`_over_column_chunks`). Against one
    im2col of the whole batch then one big GEMM, this measured 2.5x faster at 16 channels on
    32x32 (the 85 MB of columns of a batch of 128 never reach memory) and needs ~1 MB of
    scratch instead of the columns. ``out`` is an array, or a chunk store (:func:`_as_store`)
    used with its ``bounds``.

    Shape:
        weight_mat (F, C*T), buffer (phases, C, >= length + max offset) -> out (F, >= length)
    """
    store = _as_store(out)

    def visit(cols, l0, l1, mine):
        store(_product(weight_mat, cols, l0, l1, mine), l0, l1)

    _over_column_chunks(buffer, taps, kernel, length, visit, rows=weight_mat.shape[0], bounds=bounds)
    return out


def tap_weight_gradient(buffer, taps, dy_grid, length: int, kernel=None):
    """``dy_grid[:, :length] @ cols^T`` (the weight gradient ``(F, C*T)``), by cached chunks.

    Same columns as :func:`tap_gemm`; each thread sums its chunks' ``(C*T, F)`` products, as
    ``cols @ dY^T`` (see ``conv2d_flat_backward`` on this orientation), then the threads' sums
    are added.
    """
    def visit(cols, l0, l1, mine):
        _accumulate(mine, "sum", array_module(cols).matmul(cols, dy_grid[:, l0:l1].T))

    return sum(mine["sum"] for mine in _over_column_chunks(buffer, taps, kernel, length, visit,
                                                             rows=dy_grid.shape[0])).T


def tap_gemm_and_correlate(weight_mat, buffer, taps, length: int, out, other, kernel=None, bounds=None):
    """:func:`tap_gemm`, and from the same gathered chunks ``cols @ other[:, :length]^T``.

    Stride-1 backward in one pass: with ``buffer`` the margined ``dY`` and the mirrored taps,
    ``out`` receives ``dx`` on the grid and, with ``other`` the input's phase buffer
    ``X (C, L + tail)``, the correlation ``sum_p dY[f, p - off_t] X[c, p]`` is the weight
    gradient ``dW[f, c, t]``: one gather of ``dY``'s columns serves both GEMMs.

    ``out`` and ``bounds`` as for :func:`tap_gemm`.

    Shape:
        weight_mat (C, F*T), buffer (1, F, >= length + max offset), other (C, >= length)
        -> out (C, >= length); returns (F*T, C)
    """
    xp = array_module(buffer)
    store = _as_store(out)

    def visit(cols, l0, l1, mine):
        store(_product(weight_mat, cols, l0, l1, mine), l0, l1)
        _accumulate(mine, "sum", xp.matmul(cols, other[:, l0:l1].T))

    return sum(mine["sum"] for mine in _over_column_chunks(buffer, taps, kernel, length, visit,
                                                         rows=weight_mat.shape[0], bounds=bounds))


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
                out = _grid_window_store(g, dx, *g.padding)
                bounds = _image_chunks(g, _chunk_length(f * len(members), dy.itemsize, c, length))
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
