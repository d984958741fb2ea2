"""Input checks at forward time, so users see a sentence instead of a NumPy broadcasting error;
size checks at construction, so a huge layer is refused before it is allocated."""
from __future__ import annotations

import contextvars
import math
from contextlib import contextmanager

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


# The most values one parameter or buffer may hold: 2**31 - 1 (8 GiB in float32), 20 times the
# largest layer of the classic CNNs (VGG's fc6, 102.8M) and the most a 32-bit BLAS index can
# address. A size beyond it is a typo or a hostile file: refused before anything is allocated.
MAX_PARAMETER_ELEMENTS = 2**31 - 1

_budget: contextvars.ContextVar = contextvars.ContextVar("cnnkit_parameter_budget", default=None)


class _Budget:
    def __init__(self, elements: int, reason: str):
        self.left = elements
        self.reason = reason


def check_parameter_size(layer: str, name: str, shape) -> None:
    """Refuse a parameter/buffer of ``shape`` before it is allocated: larger than
    ``MAX_PARAMETER_ELEMENTS``, or than what is left of an active :func:`parameter_budget`."""
    count = math.prod(int(n) for n in shape)
    if count > MAX_PARAMETER_ELEMENTS:
        raise ValueError(
            f"{layer}: {name} of shape {tuple(shape)} would hold {count:,} values, more than the "
            f"{MAX_PARAMETER_ELEMENTS:,} one array may hold (cnnkit.nn.validation.MAX_PARAMETER_ELEMENTS)"
        )
    budget = _budget.get()
    if budget is not None:
        if count > budget.left:
            raise ValueError(
                f"{layer}: {name} of shape {tuple(shape)} would take the model past the {budget.reason}"
            )
        budget.left -= count


@contextmanager
def parameter_budget(elements: int, reason: str):
    """Inside, layers built refuse to hold more than ``elements`` parameter and buffer values in all.

    Loading a checkpoint builds the model its metadata names; the file's tensors are everything
    that model may hold, so a config that builds more (``num_classes=150000`` beside 10-class
    weights) fails before the oversized layer is allocated. ``reason`` ends the error message,
    e.g. ``"1,234 values of the checkpoint x.safetensors"``.
    """
    token = _budget.set(_Budget(elements, reason))
    try:
        yield
    finally:
        _budget.reset(token)
