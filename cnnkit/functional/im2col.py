"""im2col and col2im: turn convolution into one matrix product and back.

``im2col`` lays every receptive field of the input out as a column, so that a convolution is a
single GEMM of the weight matrix with the columns. It is built from a strided *view* of the
(padded) input, which costs nothing, followed by exactly one copy into the column array.

``col2im`` is its adjoint (used for the input gradient): each column entry is added back to the
input pixel it came from. Overlapping windows add up, so it loops over the ``kh*kw`` kernel
offsets and adds one strided slice per offset; never a loop over batch items or positions, never
``np.add.at``.

Column layout, and why: ``(N, C*kh*kw, out_h*out_w)``, i.e. one ``(K, P)`` matrix per image with
``K = C*kh*kw`` (channel-major, then kernel row, then kernel column: the order of a PyTorch weight
``(out, in, kh, kw)`` flattened, and of ``torch.nn.functional.unfold``) and ``P`` the output
positions in row-major order. With it the batched GEMM ``weight (F, K) @ cols (N, K, P)`` lands
directly in ``(N, F, P)``, which *is* the NCHW output: no transpose of the output, none of the
input gradient (``weight^T @ dy`` comes out in this layout and col2im writes NCHW), and a 1x1
convolution needs no columns at all (``x.reshape(N, C, H*W)`` is already this layout). Measured
(float32, 2 cores, forward + both gradients, 3x3 pad 1) against ``(N*P, K)`` (rows per position)
and ``(K, N*P)`` (one big GEMM): N=128 C=16 32x32: 139 / 286 / 159 ms; N=128 C=64 8x8: 64 / 81 /
45 ms. The ``(K, N*P)`` layout wins when the spatial size is small (one large GEMM beats N small
ones) at the price of transposing the output and the gradients; the speed work may pick per layer.
"""
from __future__ import annotations

from ..backend import array_module
from .shapes import conv_output_size, pair


def conv_geometry(input_hw, kernel, stride=1, padding=0, dilation=1):
    """Normalise the four arguments to pairs and return them with the output size.

    Sizes are never re-derived here: the output size comes from ``conv_output_size`` (with
    ``check_geometry=False``; layers run the geometry check themselves with their own name).

    Returns ``(kernel, stride, padding, dilation, (out_h, out_w))``, each a pair of ints.
    """
    kernel = pair(kernel, "kernel_size", "im2col")
    stride = pair(stride, "stride", "im2col")
    padding = pair(padding, "padding", "im2col")
    dilation = pair(dilation, "dilation", "im2col")
    out = tuple(
        conv_output_size(input_hw[a], kernel[a], stride[a], padding[a], dilation[a],
                         check_geometry=False, layer="im2col", axis=("height", "width")[a])
        for a in (0, 1)
    )
    return kernel, stride, padding, dilation, out


def sliding_windows(x, kernel, stride=1, padding=0, dilation=1):
    """A read-only strided view of every receptive field of ``x`` (no copy but the padding).

    Shape:
        x: (N, C, H, W) -> windows: (N, C, kh, kw, out_h, out_w) with
        windows[n, c, i, j, oy, ox] = x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]
        out = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1 (likewise for the width)
    """
    xp = array_module(x)
    kernel, stride, padding, dilation, (out_h, out_w) = conv_geometry(x.shape[2:], kernel, stride, padding, dilation)
    if padding != (0, 0):
        # The padded copy is 1/(kh*kw) the size of the columns; it keeps the view below simple.
        (ph, pw) = padding
        x = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    sn, sc, sh, sw = x.strides
    n, c = x.shape[:2]
    return xp.lib.stride_tricks.as_strided(
        x,
        shape=(n, c, kernel[0], kernel[1], out_h, out_w),
        strides=(sn, sc, dilation[0] * sh, dilation[1] * sw, stride[0] * sh, stride[1] * sw),
        writeable=False,
    )


def im2col(x, kernel, stride=1, padding=0, dilation=1):
    """Columns of ``x`` for a convolution, with exactly one copy (plus the padding, if any).

    Shape:
        x: (N, C, H, W) -> cols: (N, C*kh*kw, out_h*out_w)
        cols[n, (c*kh + i)*kw + j, oy*out_w + ox] = x_padded[n, c, oy*sh + i*dh, ox*sw + j*dw]
        out = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1 (likewise for the width)
    """
    windows = sliding_windows(x, kernel, stride, padding, dilation)
    n, c, kh, kw, out_h, out_w = windows.shape
    xp = array_module(x)
    cols = xp.empty(windows.shape, dtype=x.dtype)
    cols[...] = windows  # the one copy
    return cols.reshape(n, c * kh * kw, out_h * out_w)


def _valid_outputs(offset: int, pad: int, stride: int, size: int, out: int) -> tuple[int, int, int]:
    """For one kernel tap, the output range ``[lo, hi)`` whose input index lies in the real input.

    Output ``o`` reads input ``o*stride + offset - pad``; taps that land in the padding are
    dropped (their gradient goes nowhere). Returns ``(lo, hi, first_input_index)``.
    """
    start = offset - pad  # input index read by output 0
    lo = (-start + stride - 1) // stride if start < 0 else 0  # first o with o*stride >= -start
    room = size - 1 - start  # the last valid o has o*stride <= room
    hi = min(out, room // stride + 1) if room >= 0 else 0
    return lo, max(hi, lo), start + lo * stride


def col2im(cols, input_shape, kernel, stride=1, padding=0, dilation=1):
    """Add every column entry back into the input pixel it was read from (adjoint of im2col).

    ``cols`` may be the ``(N, C*kh*kw, out_h*out_w)`` array of :func:`im2col` or any array or view
    of shape ``(N, C, kh, kw, out_h, out_w)`` (strides are free). Loops over the ``kh*kw`` kernel
    offsets only; taps that fell into the padding are dropped, so no padded buffer is needed.

    Shape:
        cols: (N, C*kh*kw, out_h*out_w) or (N, C, kh, kw, out_h, out_w) -> x: input_shape (N, C, H, W)
        x[n, c, y, x] = sum over (i, j, oy, ox) with oy*sh + i*dh - ph = y, ox*sw + j*dw - pw = x
                        of cols[n, c, i, j, oy, ox]
    """
    xp = array_module(cols)
    n, c, h, w = input_shape
    kernel, stride, padding, dilation, (out_h, out_w) = conv_geometry((h, w), kernel, stride, padding, dilation)
    (kh, kw), (sh, sw) = kernel, stride
    cols = cols.reshape(n, c, kh, kw, out_h, out_w)
    x = xp.zeros((n, c, h, w), dtype=cols.dtype)
    for i in range(kh):
        y_lo, y_hi, row = _valid_outputs(i * dilation[0], padding[0], sh, h, out_h)
        if y_hi == y_lo:
            continue
        rows = slice(row, row + (y_hi - y_lo - 1) * sh + 1, sh)
        for j in range(kw):
            x_lo, x_hi, col = _valid_outputs(j * dilation[1], padding[1], sw, w, out_w)
            if x_hi == x_lo:
                continue
            columns = slice(col, col + (x_hi - x_lo - 1) * sw + 1, sw)
            x[:, :, rows, columns] += cols[:, :, i, j, y_lo:y_hi, x_lo:x_hi]
    return x
