"""Element-wise activations and softmax: forward ``(y, cache)`` and backward ``dx``.

Each backward takes the upstream gradient ``dy`` and the cache of its forward and returns ``dx``
(the only gradient these functions have). Nothing here writes into ``x`` or ``dy``: a container
may still hold ``dy`` (``Residual`` adds it to the shortcut) and the previous layer's cache may be
``x`` itself, which is why there is no in-place ReLU.

Caches hold the cheapest thing the derivative can be written in:

* ReLU caches its output ``y`` (``dx = dy * [y > 0]``; ``y`` is alive anyway as the next layer's input);
* LeakyReLU caches the boolean mask ``x > 0`` (one byte per element);
* tanh, sigmoid, softmax cache ``y`` (their derivatives are polynomials in ``y``);
* log-softmax caches ``y = log p`` (``p = exp(y)`` is recomputed in backward).

All functions keep the dtype of ``x`` (float32 stays float32): scalar constants are Python
numbers, which NumPy never lets upcast an array.
"""
from __future__ import annotations

from typing import NamedTuple

from ..backend import array_module
from . import parallel
from .memory import LayerMemory
from .parallel import parallel_chunks
from .registry import Kernel, define_op


class OutputCache(NamedTuple):
    """ReLU, tanh and sigmoid keep their output ``y``."""

    y: object


class LeakyReLUCache(NamedTuple):
    positive: object  # the boolean mask x > 0
    negative_slope: float


class SoftmaxCache(NamedTuple):
    y: object  # softmax: the probabilities; log-softmax: their logarithm
    axis: int


# -- ReLU --------------------------------------------------------------------------------------
def relu_forward(x):
    """``y = max(x, 0)``; return ``(y, cache)``.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.relu`.

    Shape:
        x: any shape -> y: same shape as x
    """
    xp = array_module(x)
    if x.nbytes < parallel.MIN_PARALLEL_BYTES:  # small: one call, no thread bookkeeping
        y = xp.maximum(x, 0)
        return y, OutputCache(y)
    y = xp.empty(x.shape, dtype=x.dtype)  # C order, so that its flat view is a view
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)

    def work(start, stop):
        xp.maximum(flat_x[start:stop], 0, out=flat_y[start:stop])

    parallel_chunks(work, flat_x.size, 2 * x.nbytes, xp)  # both cores: 1.35 -> 0.66 ms on 8 MB
    return y, OutputCache(y)


def relu_backward(dy, cache):
    """``dx = dy * [x > 0]`` (the subgradient at 0 is 0, as in PyTorch).

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.relu_grad`.

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    y = cache.y
    if dy.nbytes < parallel.MIN_PARALLEL_BYTES:
        return dy * (y > 0)
    xp = array_module(dy)
    dx = xp.empty(dy.shape, dtype=dy.dtype)
    flat_dy, flat_y, flat_dx = dy.reshape(-1), y.reshape(-1), dx.reshape(-1)

    def work(start, stop):
        xp.multiply(flat_dy[start:stop], flat_y[start:stop] > 0, out=flat_dx[start:stop])

    parallel_chunks(work, flat_dy.size, 3 * dy.nbytes, xp)  # both cores: 3.4 -> 1.5 ms on 8 MB
    return dx


# -- LeakyReLU ---------------------------------------------------------------------------------
def leaky_relu_forward(x, negative_slope: float = 0.01):
    """``y = x`` where ``x > 0``, else ``negative_slope * x``; return ``(y, cache)``.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.leaky_relu`.

    Shape:
        x: any shape -> y: same shape as x
    """
    xp = array_module(x)
    positive = x > 0
    y = xp.where(positive, x, x * negative_slope)
    return y, LeakyReLUCache(positive, negative_slope)


def leaky_relu_backward(dy, cache):
    """``dx = dy`` where ``x > 0``, else ``negative_slope * dy`` (slope at 0, as in PyTorch).

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    positive, negative_slope = cache
    xp = array_module(dy)
    return xp.where(positive, dy, dy * negative_slope)


# -- hard swish --------------------------------------------------------------------------------
class HardswishCache(NamedTuple):
    x: object


def hardswish_forward(x):
    """``y = x * relu6(x + 3) / 6`` (MobileNetV3's cheap swish); return ``(y, cache)``.

    Shape:
        x: any shape -> y: same shape as x
    """
    xp = array_module(x)
    y = xp.clip(x + 3, 0, 6)
    y *= x
    y /= 6
    return y, HardswishCache(x)


def hardswish_backward(dy, cache):
    """``dx = 0`` for ``x <= -3``, ``dy * (x/3 + 1/2)`` for ``-3 < x < 3``, ``dy`` from 3 on (PyTorch's
    choice at the two kinks).

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    xp = array_module(dy)
    x = cache.x
    slope = xp.where(x <= -3, 0, xp.where(x < 3, x / 3 + 0.5, 1)).astype(dy.dtype, copy=False)
    return dy * slope


def input_memory(x, *args, **kwargs) -> LayerMemory:
    """Hard swish keeps its input ``x`` (the slope is a function of x), nothing new."""
    return LayerMemory(keeps_input=True)


# -- tanh --------------------------------------------------------------------------------------
def tanh_forward(x):
    """``y = tanh(x)``; return ``(y, cache)``.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.tanh`.

    Shape:
        x: any shape -> y: same shape as x
    """
    y = array_module(x).tanh(x)
    return y, OutputCache(y)


def tanh_backward(dy, cache):
    """``dx = dy * (1 - y^2)``.

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    y = cache.y
    return dy * (1 - y * y)


# -- sigmoid -----------------------------------------------------------------------------------
def sigmoid_forward(x):
    """``y = 1 / (1 + exp(-x))`` without overflow; return ``(y, cache)``.

    ``exp`` only ever sees ``-|x|`` (at most 1), so ``x = -1000`` gives 0 instead of an overflow
    warning: for ``x >= 0`` use ``1 / (1 + e)``, for ``x < 0`` use ``e / (1 + e)``, ``e = exp(-|x|)``.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.sigmoid`.

    Shape:
        x: any shape -> y: same shape as x
    """
    xp = array_module(x)
    e = xp.exp(-xp.abs(x))
    y = xp.where(x >= 0, 1, e) / (1 + e)
    return y, OutputCache(y)


def sigmoid_backward(dy, cache):
    """``dx = dy * y * (1 - y)``.

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    y = cache.y
    return dy * y * (1 - y)


# -- softmax and log-softmax -------------------------------------------------------------------
def softmax_forward(x, axis: int = 1):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis``; return ``(y, cache)``.

    Subtracting the maximum changes nothing mathematically and keeps ``exp`` at most 1, so logits
    of 1e4 do not overflow.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.softmax`.

    Shape:
        x: any shape -> y: same shape as x, summing to 1 along ``axis``
    """
    xp = array_module(x)
    if x.size == 0:  # e.g. an empty batch: no maximum to subtract, and PyTorch returns it empty
        return x.copy(), (x.copy(), axis)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return y, SoftmaxCache(y, axis)


def softmax_backward(dy, cache):
    """``dx = y * (dy - sum(dy * y))`` along ``axis`` (the softmax Jacobian ``diag(y) - y y^T``).

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    y, axis = cache
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax_forward(x, axis: int = 1):
    """``y = (x - max) - log(sum(exp(x - max)))`` along ``axis``; return ``(y, cache)``.

    Computed from the shifted logits directly, never as ``log(softmax(x))``, which gives
    ``log(0) = -inf`` once a probability underflows.

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.activation.log_softmax`.

    Shape:
        x: any shape -> y: same shape as x
    """
    xp = array_module(x)
    if x.size == 0:  # as softmax_forward
        return x.copy(), (x.copy(), axis)
    shifted = x - x.max(axis=axis, keepdims=True)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
    return y, SoftmaxCache(y, axis)


def log_softmax_backward(dy, cache):
    """``dx = dy - softmax(x) * sum(dy)`` along ``axis``.

    Shape:
        dy: same shape as y -> dx: same shape as x
    """
    y, axis = cache
    xp = array_module(y)
    return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)


def output_memory(x, *args, **kwargs) -> LayerMemory:
    """ReLU, tanh, sigmoid, softmax and log-softmax keep their output ``y``, nothing new."""
    return LayerMemory(keeps_output=True)


def leaky_relu_memory(x, negative_slope: float = 0.01) -> LayerMemory:
    """The cache is the boolean mask ``x > 0``: one byte per element."""
    return LayerMemory(saved=x.size)


RELU = define_op("relu", reference="numpy")
RELU.register(Kernel("numpy", "numpy", 0, relu_forward, relu_backward, OutputCache, memory=output_memory,
                     doc="maximum(x, 0) by chunks on every core"))
