"""The one output-size formula, shared by convolution, pooling, summary and ONNX import.

Along one spatial axis of size ``W`` a window of ``F`` taps (``F_eff = D*(F-1)+1`` with
dilation ``D``), stride ``S`` and padding ``P`` on both sides gives::

    out = floor((W - F_eff + 2P) / S) + 1        (ceil instead of floor with ceil_mode)

as in PyTorch. With ``ceil_mode`` the last window must still start inside the input or the left
padding (PyTorch's rule), so ``out`` is reduced by one when it would start in the right padding.

Geometry that silently drops *real* input is an error unless the caller opts out
(``check_geometry=False``): when ``F_eff >= S`` (windows touch or overlap) and the last window ends
before the last real input row/column, those rows are never seen by any output. Dropping only
padding is fine (ResNet's 7x7/2 stem on 224), and so is ``F < S`` (a 1x1 stride-2 shortcut skips
input by design).
"""
from __future__ import annotations

import math
from numbers import Integral


def pair(value, name: str, layer: str) -> tuple[int, int]:
    """Turn an int or a pair of ints into ``(h, w)``; raise ``ValueError`` naming ``value``."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, Integral) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")


def check_positive(values: tuple[int, ...], name: str, layer: str, minimum: int = 1) -> None:
    if any(v < minimum for v in values):
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {values}")


def conv_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    ceil_mode: bool = False,
    *,
    check_geometry: bool = True,
    layer: str = "Conv2d",
    axis: str = "width",
) -> int:
    """Output length along one axis; raises ``ValueError`` for impossible or lossy geometry.

    Shape:
        out = floor_or_ceil((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1
    """
    span = dilation * (kernel - 1) + 1
    padded = size + 2 * padding
    # ceil_mode lets the one window overhang the end by less than a stride, as in PyTorch
    if span > padded and not (ceil_mode and span - padded < stride):
        raise ValueError(
            f"{layer}: kernel {kernel} (dilation {dilation}, spans {span}) is larger than the "
            f"padded input {axis} {size} + 2*{padding} = {padded}; use a smaller kernel or more padding"
        )
    steps = (padded - span) / stride
    out = (math.ceil(steps) if ceil_mode else math.floor(steps)) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    last_covered = (out - 1) * stride + span - 1  # index into the padded input
    last_real = padding + size - 1
    if check_geometry and span >= stride and last_covered < last_real:
        unused = last_real - last_covered
        fixes = []
        better = _padding_fix(size, span, stride, padding)
        if better is not None:
            fixes.append(f"padding={better} so that (W - F + 2P) is a multiple of S")
        if layer.endswith("Pool2d"):
            fixes.append("ceil_mode=True")
        fixes.append("check_geometry=False to drop them on purpose")
        raise ValueError(
            f"{layer}: {axis} {size} with kernel {kernel}, stride {stride}, padding {padding}"
            f"{f', dilation {dilation}' if dilation != 1 else ''} leaves the last {unused} input "
            f"{'column' if axis == 'width' else 'row'}{'s' if unused > 1 else ''} unused: "
            f"(W - F + 2P)/S + 1 = ({size} - {span} + {2 * padding})/{stride} + 1 = {steps + 1:g} "
            f"is not an integer. Fix: {'; or '.join(fixes)}"
        )
    return out


def _padding_fix(size: int, span: int, stride: int, padding: int) -> int | None:
    """The smallest padding >= ``padding`` that makes every window line up with the input."""
    for p in range(padding, padding + stride):
        if (size + 2 * p - span) % stride == 0:
            return p
    return None  # symmetric padding cannot fix it (odd remainder with an even stride)
