"""Inverted dropout: drop each element with probability ``p`` and scale the survivors by ``1/(1-p)``.

Scaling at training time ("inverted" dropout) keeps the expected activation unchanged, so
inference is the identity and needs no rescaling. The mask comes from an explicit
``np.random.Generator`` (no global RNG): the same generator state gives the same mask. Backward
reuses the mask of the forward pass.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import array_module
from .memory import LayerMemory


class DropoutCache(NamedTuple):
    keep: object  # the boolean mask of kept elements, or None for the identity
    scale: float  # 1 / (1 - p)


def dropout_forward(x, p: float, generator: np.random.Generator, training: bool = True):
    """Return ``(y, cache)`` with ``y = x * keep / (1 - p)``, ``keep ~ Bernoulli(1 - p)``.

    ``p`` is the *drop* probability, as in PyTorch. ``p = 0`` or ``training=False`` is the
    identity (``y`` is ``x`` itself, nothing is drawn). ``p = 1`` drops everything (``y = 0``).
    An element is dropped when its uniform draw ``u`` in ``[0, 1)`` is ``< p``; draws are
    float32 whatever the dtype of ``x``, so a seed gives the same mask for float32 and float64.

    Shape:
        x: any shape -> y: same shape as x; the cache holds a boolean mask of that shape
    """
    if not training or p == 0:
        return x, DropoutCache(None, 1.0)
    xp = array_module(x)
    keep = generator.random(x.shape, dtype=np.float32) >= p
    if xp is not np:
        keep = xp.asarray(keep)
    # p = 1 keeps nothing; the scale then never multiplies a kept element, so call it 0.
    scale = 1.0 / (1.0 - p) if p < 1 else 0.0
    y = x * keep
    y *= scale
    return y, DropoutCache(keep, scale)


def dropout_backward(dy, cache):
    """``dx = dy * keep / (1 - p)`` with the forward's mask (identity when forward was).

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    keep, scale = cache
    if keep is None:
        return dy
    dx = dy * keep
    dx *= scale
    return dx


def dropout_memory(x, p: float, training: bool = True) -> LayerMemory:
    """Training: a boolean keep mask (one byte per element) is kept; the float32 uniform draws are a
    forward temporary. ``p = 0`` or eval: the identity, nothing kept."""
    if not training or p == 0:
        return LayerMemory(aliases_input=True)
    return LayerMemory(saved=x.size, forward_temp=4 * x.size)
