"""Input checks at forward time, so users see a sentence instead of a NumPy broadcasting error."""
from __future__ import annotations

import numpy as np

from ..backend import array_module


def check_input(x, layer: str, ndim: int, channels: int | None = None, dtype=None, channel_axis: int = 1):
    """Raise a clear error unless ``x`` is a floating array of rank ``ndim`` with ``channels``.

    ``dtype``, when given, is the layer's parameter dtype, which the input must match (as in
    PyTorch): mixing float32 weights with float64 inputs would silently upcast every step.
    """
    xp = array_module(x)
    if not isinstance(x, xp.ndarray):
        raise TypeError(f"{layer} expects an array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"{layer} expects a floating-point input, got dtype {x.dtype}; convert it first, "
            "e.g. x.astype(np.float32) / 255"
        )
    if x.ndim != ndim:
        layout = {4: "(N, C, H, W)", 2: "(N, features)", 3: "(N, C, L)"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{layer} expects a {ndim}-D input {layout}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[channel_axis] != channels:
        what = "input channels" if ndim == 4 else "input features"
        raise ValueError(f"{layer} expects {channels} {what}, got {x.shape[channel_axis]} (input shape {tuple(x.shape)})")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{layer} has {np.dtype(dtype)} parameters but got a {x.dtype} input; cast the input "
            f"(x.astype(np.{np.dtype(dtype).name})) or the model (model.to(np.{x.dtype.name}))"
        )


def check_sample_shape(layer: str, input_shape, channels: int | None = None) -> tuple[int, int]:
    """``(H, W)`` of one sample's ``(C, H, W)`` shape; a clear error for another rank or channel count."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"{layer}.output_shape expects one sample's shape (C, H, W), got {shape}")
    if channels is not None and shape[0] != channels:
        raise ValueError(f"{layer} expects {channels} input channels, got {shape[0]} (input shape {shape})")
    return shape[1], shape[2]
