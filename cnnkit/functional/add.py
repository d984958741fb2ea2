"""The residual sum ``y = a + b``, optionally followed by a ReLU (ResNet's ``relu(body + shortcut)``).

One op so that a backend can fuse the two passes (oneDNN's sum and ReLU post-ops); the NumPy
kernel writes the sum once and applies the ReLU in place on it.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import array_module
from .memory import LayerMemory
from .registry import Kernel, define_op


class AddCache(NamedTuple):
    y: object  # the output when a ReLU followed (its mask routes the gradient), else None


def add_forward(a, b, relu: bool = False):
    """``y = a + b`` (then ``max(y, 0)`` with ``relu``); return ``(y, cache)``.

    Shape:
        a, b: the same shape -> y: that shape
    """
    xp = array_module(a)
    y = xp.add(a, b)
    if relu:
        xp.maximum(y, 0, out=y)  # y is new: nobody else holds it yet
    return y, AddCache(y if relu else None)


def add_backward(dy, cache: AddCache, need_da=True, need_db=True):
    """Return ``(da, db)``: both are ``dy`` (masked by ``y > 0`` after a ReLU); not copied.

    Shape:
        dy: the shape of y -> da, db: the same
    """
    grad = dy if cache.y is None else dy * (cache.y > 0)
    return (grad if need_da else None), (grad if need_db else None)


def add_memory(a, b, relu: bool = False) -> LayerMemory:
    """With a ReLU the output is kept for its mask; backward makes one masked gradient."""
    if not relu:
        return LayerMemory()
    return LayerMemory(keeps_output=True, backward_temp=a.nbytes)


ADD = define_op("add", reference="numpy")
ADD.register(Kernel("numpy", "numpy", 0, add_forward, add_backward, AddCache, memory=add_memory,
                    doc="one NumPy add (and an in-place maximum)"))
