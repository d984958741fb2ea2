"""The GEMMs of the flat convolution, run by cache-sized chunks of columns on every core.

A chunk of the column matrix (``C*kh*kw`` rows, a few hundred columns) is gathered from the
phase buffer (:mod:`cnnkit.functional.flat_layout`) into per-thread scratch and multiplied
while it sits in the core's L2 cache; the whole column matrix, ``kh*kw`` times the input, is
never built. ``tap_gemm`` is the forward product, ``tap_weight_gradient`` the weight gradient,
``tap_gemm_and_correlate`` both from one gather (stride-1 backward); chunks that follow
images (``image_chunks``) let each product go straight into its block of the NCHW output.
"""
from __future__ import annotations

from ..backend import array_module
from .flat_layout import FlatGeometry, tap_blocks
from .parallel import num_threads, parallel_chunks, single_threaded_blas
from .workspace import scratch

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


def chunk_length(k: int, itemsize: int, rows: int, length: int) -> int:
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


def _gather_blocks(cols, blocks, kernel, l0: int, l1: int) -> None:
    """Columns ``l0:l1`` into ``cols (C, kh*kw, l1 - l0)`` from :func:`tap_blocks`'s views."""
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
    ``bounds`` (a list of ``(l0, l1)``) replaces the even chunks of :func:`chunk_length`.
    """
    xp = array_module(buffer)
    k = buffer.shape[1] * len(taps)
    if bounds is None:
        chunk = chunk_length(k, buffer.itemsize, rows, length)
        bounds = [(l0, min(length, l0 + chunk)) for l0 in range(0, length, chunk)]
    widest = max(l1 - l0 for l0, l1 in bounds)
    blocks = tap_blocks(buffer, taps, kernel, length)
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


def image_chunks(g: FlatGeometry, target: int) -> list:
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


def grid_window_store(g: FlatGeometry, out, first_row: int, first_col: int, bias=None):
    """A chunk store for :func:`_over_column_chunks` bounds from :func:`image_chunks`: crops a
    chunk's ``(rows, images*Hq*Wq)`` product to the window ``first_row:first_row + out_h``,
    ``first_col:first_col + out_w`` of each image's grid and copies it into its block of ``out
    (N, rows, out_h, out_w)``, adding ``bias`` (per row) first.

    Forward: the window at ``(0, 0)`` is the output; stride-1 backward: the window at the
    padding ``(ph, pw)`` is the input, i.e. ``dx``.
    """
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

    Chunks follow images or row bands (:func:`image_chunks`), so each chunk's product, still
    in the cache, is cropped to the valid corner of its grid positions and copied into its block
    of ``y`` (plus the bias) by the thread that computed it: no ``(F, L)`` grid in memory and
    no separate pass to change its layout (forward 2-12% faster).

    Shape:
        weight_mat (F, C*T), buffer (phases, C, L + tail) -> y (N, F, out_h, out_w)
    """
    f, k = weight_mat.shape
    bounds = image_chunks(g, chunk_length(k, buffer.itemsize, f, g.length))
    return tap_gemm(weight_mat, buffer, g.taps, g.length, grid_window_store(g, y, 0, 0, bias), g.kernel, bounds)


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
    :func:`grid_window_store`), else one writing columns ``l0:l1`` of the array ``out``."""
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
