"""The layout of the flat convolution (:mod:`cnnkit.functional.conv_flat`): the phase grid and
the column gather on it.

``flat_geometry`` places a padded, stride-split input on a grid of ``N*Hq*Wq`` positions per
phase; ``to_phases``/``from_phases`` move an ``(N, C, H, W)`` array onto that grid and back;
``gather_columns``/``scatter_columns`` are im2col/col2im on it, where every column block of a
kernel tap is one contiguous slice. See ``conv_flat``'s docstring for the idea and the
figures.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import array_module
from .im2col import conv_geometry
from .parallel import parallel_chunks


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

    blocks = tap_blocks(buffer, taps, g.kernel, length)
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


def tap_blocks(buffer, taps, kernel, length: int):
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
