"""What the operator builders share: attribute reading with the spec's defaults, ONNX's padding
rules (explicit pads, ``SAME_UPPER``/``SAME_LOWER``/``VALID``), and the refusals they raise."""
from __future__ import annotations

import math

import numpy as np

from .registry import UnsupportedOperatorError


def unsupported(what: str):
    raise UnsupportedOperatorError(what)


def text(attrs: dict, key: str, default: str) -> str:
    value = attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def required(attrs: dict, key: str):
    if key not in attrs:
        raise ValueError(f"missing required attribute {key!r}")
    return attrs[key]


def int_list(values, what: str) -> list[int]:
    try:
        return [int(v) for v in np.asarray(values).reshape(-1)]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be integers, got {values!r}") from None


def variable_input(ctx, node, i: int = 0) -> str:
    """The name of input ``i``, which must be a computed tensor (not a constant)."""
    name = ctx.input(node, i)
    if name is None:
        raise ValueError(f"input {i} is missing")
    if ctx.is_const(name):
        unsupported(f"input {i} ({name!r}) is a constant; cnnkit needs a computed tensor there")
    return name


def ownable(ctx, name: str, value: np.ndarray) -> bool:
    """Whether a layer may keep ``value`` (tensor ``name``) as its parameter without a copy: it is
    writable, owns its memory and nothing else reads it."""
    return value.flags.writeable and value.flags.owndata and ctx.consumers.get(name, 0) <= 1


def own(ctx, name: str, value: np.ndarray) -> np.ndarray:
    """``value`` for a layer to keep as its parameter: the array itself when :func:`ownable`, else
    a copy (weights shared by two nodes must not alias)."""
    return value if ownable(ctx, name, value) else np.array(value, copy=True)


class NoInit:
    """A stand-in ``generator`` for layers whose weights the file provides: their constructor's
    random initialisation draws nothing (a VGG classifier would draw 100M numbers only to
    overwrite them). The "draw" is one zero broadcast to ``size``: no weight-sized array is made
    for it (the constructor's cast to the layer's dtype is its only copy)."""

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.broadcast_to(np.float32(0), () if size is None else size)

    normal = uniform


def window(attrs, layer: str, rank: int | None = None):
    """``(kernel, strides, dilations)`` of a pooling node, with the spec's defaults."""
    kernel = tuple(int_list(required(attrs, "kernel_shape"), "kernel_shape"))
    if not kernel or (rank is not None and len(kernel) != rank):
        raise ValueError(f"{layer}: kernel_shape {kernel} does not match the input's {rank} spatial axes")
    strides = tuple(int_list(attrs.get("strides", (1,) * len(kernel)), "strides"))
    dilations = tuple(int_list(attrs.get("dilations", (1,) * len(kernel)), "dilations"))
    if len(strides) != len(kernel) or len(dilations) != len(kernel):
        raise ValueError(f"{layer}: kernel_shape {kernel}, strides {strides} and dilations {dilations} differ in length")
    if any(k < 1 for k in kernel) or any(s < 1 for s in strides) or any(d < 1 for d in dilations):
        raise ValueError(f"{layer}: kernel_shape {kernel}, strides {strides} and dilations {dilations} must be >= 1")
    return kernel, strides, dilations


def spatial_pads(ctx, attrs, kernel, strides, dilations, x_name: str, layer: str) -> list[int]:
    """The pads ``(begin_1, ..., begin_k, end_1, ..., end_k)`` from ``pads`` or ``auto_pad``.

    ``SAME_UPPER``/``SAME_LOWER`` make ``ceil(size / stride)`` outputs, the odd pad at the end
    (upper) or the beginning (lower), as onnxruntime computes them.
    """
    auto_pad = text(attrs, "auto_pad", "NOTSET")
    spatial = ctx.shape(x_name)[2:]
    rank = len(kernel)
    if len(spatial) != rank:
        raise ValueError(f"{layer}: kernel_shape {tuple(kernel)} has {rank} axes but the input "
                         f"{ctx.shape(x_name)} has {len(spatial)} spatial axes")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            out = math.ceil(size / s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad != "NOTSET":
        raise ValueError(f"{layer}: unknown auto_pad {auto_pad!r}")
    pads = int_list(attrs.get("pads", [0] * (2 * rank)), "pads")
    if len(pads) != 2 * rank:
        raise ValueError(f"{layer}: pads {pads} need 2 values per spatial axis ({2 * rank})")
    if any(p < 0 for p in pads):
        unsupported(f"{layer}: negative pads {pads}")
    return pads


def symmetric_split(pads: list[int]):
    """``(symmetric part per axis, the rest as (begin..., end...))`` of ONNX pads."""
    rank = len(pads) // 2
    sym = tuple(min(pads[i], pads[i + rank]) for i in range(rank))
    extra = tuple(pads[i] - sym[i] for i in range(rank)) + tuple(pads[i + rank] - sym[i] for i in range(rank))
    return sym, extra
