"""``Flatten``: merge the axes ``start_dim..end_dim`` into one (a reshape, usually a view)."""
from __future__ import annotations

from ..backend import array_module
from ..functional.memory import LayerMemory
from .module import Module

__all__ = ["Flatten"]  # what cnnkit.nn exports from here


def _resolve_dims(start_dim: int, end_dim: int, ndim: int, shape) -> tuple[int, int]:
    """Turn possibly negative dims into ``0 <= start <= end < ndim`` or raise naming the values."""
    start = start_dim + ndim if start_dim < 0 else start_dim
    end = end_dim + ndim if end_dim < 0 else end_dim
    if not (0 <= start < ndim and 0 <= end < ndim):
        raise ValueError(
            f"Flatten(start_dim={start_dim}, end_dim={end_dim}) is out of range for an input of "
            f"shape {tuple(shape)} (dims must be in {-ndim} to {ndim - 1})"
        )
    if start > end:
        raise ValueError(
            f"Flatten: start_dim={start_dim} comes after end_dim={end_dim} for an input of shape {tuple(shape)}"
        )
    return start, end


def _flattened(shape, start: int, end: int) -> tuple:
    merged = 1
    for size in shape[start:end + 1]:
        merged *= size
    return tuple(shape[:start]) + (merged,) + tuple(shape[end + 1:])


class Flatten(Module):
    """Merge axes ``start_dim`` through ``end_dim`` (default: all but the batch axis).

    Shape:
        input (N, C, H, W) -> output (N, C*H*W) with the defaults;
        in general (d0, ..., d_start, ..., d_end, ...) -> (d0, ..., d_start*...*d_end, ...)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        for name, value in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Flatten: {name} must be an int, got {value!r}")
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x):
        if not isinstance(x, array_module(x).ndarray):
            raise TypeError(f"Flatten expects an array, got {type(x).__name__}")
        shape = tuple(x.shape)
        start, end = _resolve_dims(self.start_dim, self.end_dim, x.ndim, shape)
        self._save(shape)
        return x.reshape(_flattened(shape, start, end))

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        return dy.reshape(shape) if input_grad else None

    def output_shape(self, input_shape):
        """One sample's output shape; the batch axis is implied, so it cannot be flattened here."""
        full = (1,) + tuple(input_shape)  # put the batch axis back so the dims mean what they say
        start, end = _resolve_dims(self.start_dim, self.end_dim, len(full), ("N",) + tuple(input_shape))
        if start == 0:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) merges the batch axis, "
                "so a per-sample output shape does not exist"
            )
        return _flattened(full, start, end)[1:]

    def macs(self, input_shape, output_shape) -> int:
        return 0  # a view

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(aliases_input=True)  # a view of the input; only its shape is cached

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False

    def onnx_export(self, ctx, x, prefix):
        rank = len(ctx.shape(x)) + 1
        start = self.start_dim + rank if self.start_dim < 0 else self.start_dim
        end = self.end_dim + rank if self.end_dim < 0 else self.end_dim
        if start == 1 and end == rank - 1:
            return ctx.node("Flatten", [x], ctx.join(prefix, "Flatten"), axis=1)
        # shape excludes the batch: index `end` is axis end + 1
        target = (0,) * start + (-1,) + tuple(ctx.shape(x)[end:])
        return ctx.reshape(x, target, prefix)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
