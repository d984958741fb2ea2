"""The geometry of a windowed pooling: output sizes through the one shared formula
(``shapes.conv_output_size``), PyTorch's padding rule or ONNX's, and the padded input.

Shape:
    input (N, C, H, W) -> output (N, C, OH, OW),
    OH = floor_or_ceil((H + PH_begin + PH_end - DH*(KH-1) - 1) / SH) + 1, likewise OW
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..backend import array_module
from .shapes import check_positive, conv_output_size, pair


class PoolGeometry(NamedTuple):
    """Everything a windowed pooling kernel needs to know about one call, per axis ``(h, w)``."""

    input_shape: tuple  # (N, C, H, W)
    kernel: tuple  # (KH, KW)
    stride: tuple
    padding: tuple
    dilation: tuple
    output: tuple  # (OH, OW)
    pad_end: tuple  # zeros/-inf appended after the input: right padding plus any ceil-mode overhang
    pad_after: tuple = None  # the declared bottom/right padding (None: the same as ``padding``)

    @property
    def padding_after(self) -> tuple:
        return self.padding if self.pad_after is None else self.pad_after

    @property
    def output_shape(self) -> tuple:
        """``(N, C, OH, OW)``."""
        return tuple(self.input_shape[:2]) + tuple(self.output)

    @property
    def padded_shape(self) -> tuple:
        n, c, h, w = self.input_shape
        return (n, c, self.padding[0] + h + self.pad_end[0], self.padding[1] + w + self.pad_end[1])

    def offsets(self):
        """Yield ``(k, rows, cols)``: kernel offset number ``k`` in scan order and its strided view."""
        (kh, kw), (sh, sw), (dh, dw), (oh, ow) = self.kernel, self.stride, self.dilation, self.output
        for i in range(kh):
            rows = slice(i * dh, i * dh + (oh - 1) * sh + 1, sh)
            for j in range(kw):
                yield i * kw + j, rows, slice(j * dw, j * dw + (ow - 1) * sw + 1, sw)


def switches_dtype(kernel: tuple):
    """The dtype of max pooling's switches (per output the offset ``i*KW + j`` of the winning tap):
    one byte up to 256 taps (16x16 kernels), else int32, as oneDNN's workspace holds them too."""
    return np.uint8 if kernel[0] * kernel[1] <= 256 else np.int32


def check_pool_padding(kernel: tuple, padding: tuple, layer: str, padding_rule: str = "pytorch") -> None:
    """PyTorch's rule ``padding <= kernel // 2`` (so no window lies entirely in the padding), or
    with ``padding_rule="onnx"`` onnxruntime's ``padding < kernel`` (``padding`` may then hold the
    four pads ``(top, left, bottom, right)``)."""
    if padding_rule not in ("pytorch", "onnx"):
        raise ValueError(f"{layer}: padding_rule must be 'pytorch' or 'onnx', got {padding_rule!r}")
    if any(p < 0 for p in padding):
        raise ValueError(f"{layer}: padding must be >= 0, got {padding}")
    if padding_rule == "onnx":
        kernels = tuple(kernel) * (len(padding) // len(kernel))
        if any(p >= k for p, k in zip(padding, kernels)):
            raise ValueError(f"{layer}: pads {padding} must be smaller than the kernel {kernel} (as onnxruntime requires)")
        return
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(
            f"{layer}: padding {padding} must be at most half the kernel size {kernel} "
            f"(padding <= kernel // 2 = {tuple(k // 2 for k in kernel)}), as in PyTorch"
        )


def first_real_tap(out: int, stride: int, padding: int, dilation: int) -> np.ndarray:
    """Per output position along one axis, the first kernel tap that lands on the real input (not
    the padding): ``ceil(max(padding - o*stride, 0) / dilation)``."""
    start = np.arange(out) * stride - padding  # window start in input coordinates
    return -(np.minimum(start, 0) // dilation)


def _check_windows_see_input(out: int, size: int, k: int, s: int, p: int, d: int, layer: str, axis: str) -> None:
    """Raise if a window's taps (padded positions ``o*s + j*d``) all miss the input ``[p, p + size)``.

    Such a window's maximum is -inf and PyTorch's switch for it points outside the window (its
    backward writes out of bounds), so no result could be right.
    """
    first = first_real_tap(out, s, p, d)  # first tap at or after the input's start
    blind = (first >= k) | (np.arange(out) * s + first * d >= p + size)
    if blind.any():
        o = int(np.argmax(blind))
        raise ValueError(
            f"{layer}: along the {axis}, window {o} (kernel {k}, dilation {d}, stride {s}, padding {p}) "
            f"sees only padding of the input {axis} {size}; use less padding or dilation"
        )


def _pads(padding, padding_rule: str, layer: str) -> tuple[tuple, tuple]:
    """``(begin, after)`` pads per axis: a pair or int pads both sides alike; with
    ``padding_rule="onnx"`` four values ``(top, left, bottom, right)`` may differ."""
    if padding_rule == "onnx" and isinstance(padding, (tuple, list)) and len(padding) == 4:
        values = tuple(padding)
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            raise ValueError(f"{layer}: pads must be ints, got {padding!r}")
        return (int(values[0]), int(values[1])), (int(values[2]), int(values[3]))
    begin = pair(padding, "padding", layer)
    return begin, begin


def _asymmetric_output_size(size, kernel, stride, begin, after, dilation, ceil_mode, layer, axis) -> int:
    """``conv_output_size`` with different padding on the two sides (ONNX pads):
    ``floor_or_ceil((size + begin + after - span) / stride) + 1``; in ceil mode a last window
    that would start in the trailing padding is dropped, as onnxruntime and PyTorch do."""
    span = dilation * (kernel - 1) + 1
    padded = size + begin + after
    if span > padded:
        raise ValueError(f"{layer}: kernel {kernel} (dilation {dilation}, spans {span}) is larger than the padded "
                         f"input {axis} {size} + {begin} + {after} = {padded}")
    steps = (padded - span) / stride
    out = (math.ceil(steps) if ceil_mode else math.floor(steps)) + 1
    if ceil_mode and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def pool_arguments(kernel_size, stride=None, padding=0, dilation=1, *, layer="pool2d", padding_rule="pytorch"):
    """Validate a windowed pooling's arguments; return ``(kernel, stride, begin, after, dilation)``,
    each a pair ``(h, w)``: ``begin``/``after`` the top/left and bottom/right pads (the same but
    with ONNX's four pads). ``stride=None`` means ``stride = kernel_size`` (PyTorch's default)."""
    kernel = pair(kernel_size, "kernel_size", layer)
    stride = kernel if stride is None else pair(stride, "stride", layer)
    begin, after = _pads(padding, padding_rule, layer)
    dilation = pair(dilation, "dilation", layer)
    check_positive(kernel, "kernel_size", layer)
    check_positive(stride, "stride", layer)
    check_positive(dilation, "dilation", layer)
    check_pool_padding(kernel, begin + after if begin != after else begin, layer, padding_rule)
    return kernel, stride, begin, after, dilation


def pool_geometry(input_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                  check_geometry=False, layer="pool2d", padding_rule="pytorch") -> PoolGeometry:
    """Validate the arguments and compute the output size and padding of a windowed pooling.

    ``stride=None`` means ``stride = kernel_size`` (PyTorch's default). With
    ``check_geometry=True`` geometry that silently drops real input raises (see ``shapes``).
    ``padding_rule="onnx"`` accepts ONNX's pads: four values ``(top, left, bottom, right)``,
    each smaller than the kernel (see :func:`check_pool_padding`).

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW) with
        OH = floor_or_ceil((H + PTOP + PBOTTOM - DH*(KH-1) - 1) / SH) + 1, likewise OW
    """
    kernel, stride, begin, after, dilation = pool_arguments(kernel_size, stride, padding, dilation, layer=layer,
                                                            padding_rule=padding_rule)
    if len(input_shape) != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(input_shape)}")
    output, pad_end = [], []
    for axis, name in enumerate(("height", "width")):
        size, k, s, p, d = input_shape[2 + axis], kernel[axis], stride[axis], begin[axis], dilation[axis]
        if begin[axis] == after[axis]:
            out = conv_output_size(size, k, s, p, d, ceil_mode, check_geometry=check_geometry, layer=layer, axis=name)
        else:
            out = _asymmetric_output_size(size, k, s, p, after[axis], d, ceil_mode, layer, name)
        if d > 1:  # dilated taps can step over the few real values and see only padding
            _check_windows_see_input(out, size, k, s, p, d, layer, name)
        # The last window ends at (out-1)*s + span in padded coordinates; the padded array must
        # reach it (ceil mode can run past the right padding) but need not go further.
        reach = (out - 1) * s + d * (k - 1) + 1
        output.append(out)
        pad_end.append(max(reach - p - size, 0))
    return PoolGeometry(tuple(input_shape), kernel, stride, begin, dilation, tuple(output), tuple(pad_end),
                        None if after == begin else after)


def lowest_value(dtype):
    """What max pooling pads with: ``-inf``, or the smallest integer of an integer type (ONNX's
    MaxPool takes int8/uint8 tensors)."""
    return np.iinfo(dtype).min if np.issubdtype(dtype, np.integer) else -np.inf


def pad_input(x, geometry: PoolGeometry, fill):
    """``x`` surrounded by ``fill`` as the windows need it (``x`` itself when nothing is needed)."""
    (ph, pw), (eh, ew) = geometry.padding, geometry.pad_end
    if ph == pw == eh == ew == 0:
        return x
    xp = array_module(x)
    n, c, h, w = x.shape
    padded = xp.full(geometry.padded_shape, fill, dtype=x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return padded
