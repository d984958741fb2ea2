"""Element-wise functions, reductions and products that ONNX graphs use and the classic layer set
lacks: PReLU, hard sigmoid, hard swish, a table of unary functions, division and matrix products
of two computed tensors, element-wise max/min/mean, and ``Reduce*``.

Every layer has its explicit backward, checked against finite differences in the tests, so
imported graphs train, and the rules summary, profile and export read (see :mod:`.layers`).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from ..functional.memory import LayerMemory, numel
from ..nn.graph import MultiInputModule, unbroadcast
from ..nn.module import Parameter
from .layers import FullShapeLayer, _OnnxLayer, batch_bytes, broadcast_full, matmul_grads, matmul_shape, sample_shapes


class PRelu(FullShapeLayer, _OnnxLayer):
    """``y = x`` where ``x >= 0``, ``slope * x`` elsewhere (ONNX ``PRelu``, PyTorch ``PReLU``); the
    slope broadcasts against the input (one per channel, or one for all) and is trainable.

    Shape:
        input (N, C, *) -> output: input broadcast with ``slope``
    """

    def __init__(self, slope, trainable: bool = True):
        super().__init__()
        self.weight = Parameter(np.array(slope, copy=True), requires_grad=trainable)

    def forward(self, x):
        slope = self.weight.data.astype(x.dtype, copy=False)
        negative = x < 0
        self._save((x, negative))
        return array_module(x).where(negative, x * slope, x)

    def backward(self, dy, input_grad: bool = True):
        x, negative = self._restore()
        slope = self.weight.data.astype(dy.dtype, copy=False)
        if self.weight.requires_grad:
            self.weight.accumulate_grad(unbroadcast(dy * x * negative, self.weight.shape))
        if not input_grad:
            return None
        return unbroadcast(array_module(dy).where(negative, dy * slope, dy), x.shape)

    def full_output_shape(self, shape):
        return broadcast_full("PRelu", shape, self.weight.shape)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x and the mask x < 0 are cached; forward makes x * slope, backward dy * x and its
        # masked copy (the slope's gradient) before dy * slope
        n = batch_bytes(output_shape, batch_size, dtype)
        return LayerMemory(keeps_input=True, saved=batch_bytes(output_shape, batch_size, np.bool_), forward_temp=n,
                           backward_temp=2 * n if self.weight.requires_grad else n)

    def onnx_export(self, ctx, x, prefix):
        slope = ctx.constant(ctx.join(prefix, "weight"), self.weight.data, like=x)
        return ctx.node("PRelu", [x, slope], ctx.join(prefix, "PRelu"))

    def extra_repr(self) -> str:
        return f"slope_shape={tuple(self.weight.shape)}"


class HardSigmoid(_OnnxLayer):
    """``y = max(0, min(1, alpha * x + beta))`` (ONNX ``HardSigmoid``; PyTorch's ``Hardsigmoid`` is
    ``alpha = 1/6, beta = 1/2``); the gradient is ``alpha`` strictly inside ``(0, 1)``.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, alpha: float = 0.2, beta: float = 0.5):
        super().__init__()
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x):
        z = x * self.alpha + self.beta
        inside = (z > 0) & (z < 1)
        self._save(inside)
        return array_module(x).clip(z, 0, 1).astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        inside = self._restore()
        return dy * inside * self.alpha if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # the mask 0 < z < 1 is cached; z = alpha x + beta lives beside the output, backward makes dy * mask
        n, mask = batch_bytes(input_shape, batch_size, dtype), batch_bytes(input_shape, batch_size, np.bool_)
        return LayerMemory(saved=mask, forward_temp=n, backward_temp=n)

    def onnx_export(self, ctx, x, prefix):
        return ctx.node("HardSigmoid", [x], ctx.join(prefix, "HardSigmoid"), alpha=self.alpha, beta=self.beta)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


class HardSwish(_OnnxLayer):
    """``y = x * max(0, min(1, x/6 + 1/2))`` (ONNX ``HardSwish``, PyTorch ``Hardswish``, MobileNetV3).

    ``dy/dx = 0`` below -3, ``x/3 + 1/2`` on ``[-3, 3]`` and ``1`` above, PyTorch's convention at
    the kinks.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def forward(self, x):
        xp = array_module(x)
        self._save(x)
        return x * xp.clip(x / 6 + 0.5, 0, 1).astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        x = self._restore()
        if not input_grad:
            return None
        xp = array_module(dy)
        slope = xp.where(x < -3, 0, xp.where(x <= 3, x / 3 + 0.5, 1))
        return (dy * slope).astype(dy.dtype, copy=False)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x is cached; the clipped gate x/6 + 1/2 lives beside the output; backward makes two
        # masks and the slope x/3 + 1/2 (numpy reuses the temporaries of chained arithmetic)
        n, mask = batch_bytes(input_shape, batch_size, dtype), batch_bytes(input_shape, batch_size, np.bool_)
        return LayerMemory(keeps_input=True, forward_temp=n, backward_temp=n + 2 * mask)

    def onnx_export(self, ctx, x, prefix):
        if ctx.opset >= 14:
            return ctx.node("HardSwish", [x], ctx.join(prefix, "HardSwish"))
        gate = ctx.node("HardSigmoid", [x], ctx.join(prefix, "HardSigmoid"), alpha=1 / 6, beta=0.5)
        return ctx.node("Mul", [x, gate], ctx.join(prefix, "Mul"))


# name -> (forward f(x, attrs), derivative f'(x, y, attrs)), for element-wise functions of one tensor
def _selu(x, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return gamma * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _selu_grad(x, y, a):
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return gamma * np.where(x > 0, 1, alpha * np.exp(np.minimum(x, 0)))


UNARY = {
    "Abs": (lambda x, a: np.abs(x), lambda x, y, a: np.sign(x)),
    "Neg": (lambda x, a: -x, lambda x, y, a: -np.ones_like(x)),
    "Exp": (lambda x, a: np.exp(x), lambda x, y, a: y),
    "Log": (lambda x, a: np.log(x), lambda x, y, a: 1 / x),
    "Sqrt": (lambda x, a: np.sqrt(x), lambda x, y, a: 0.5 / y),
    "Reciprocal": (lambda x, a: 1 / x, lambda x, y, a: -y * y),
    "Elu": (lambda x, a: np.where(x > 0, x, a.get("alpha", 1.0) * np.expm1(np.minimum(x, 0))),
            lambda x, y, a: np.where(x > 0, 1, a.get("alpha", 1.0) * np.exp(np.minimum(x, 0)))),
    "Celu": (lambda x, a: np.maximum(x, 0) + np.minimum(0, a.get("alpha", 1.0) * np.expm1(x / a.get("alpha", 1.0))),
             lambda x, y, a: np.where(x > 0, 1, np.exp(np.minimum(x, 0) / a.get("alpha", 1.0)))),
    "Selu": (_selu, _selu_grad),
    "Softplus": (lambda x, a: np.logaddexp(0, x), lambda x, y, a: 1 / (1 + np.exp(-x))),
    "Softsign": (lambda x, a: x / (1 + np.abs(x)), lambda x, y, a: 1 / (1 + np.abs(x)) ** 2),
    "Sin": (lambda x, a: np.sin(x), lambda x, y, a: np.cos(x)),
    "Cos": (lambda x, a: np.cos(x), lambda x, y, a: -np.sin(x)),
    "Erf": (lambda x, a: _erf(x), lambda x, y, a: 2 / math.sqrt(math.pi) * np.exp(-x * x)),
    "ThresholdedRelu": (lambda x, a: np.where(x > a.get("alpha", 1.0), x, 0),
                        lambda x, y, a: (x > a.get("alpha", 1.0)).astype(x.dtype)),
}


# the ONNX attributes of each function (besides the op name) and the opset that introduced it
UNARY_OPSET = {"Celu": 12, "ThresholdedRelu": 10, "Erf": 9}


def _erf(x):
    from math import erf

    return np.vectorize(erf, otypes=[x.dtype])(x) if x.size else x.copy()


class Elementwise(_OnnxLayer):
    """One element-wise function of :data:`UNARY` (``Exp``, ``Log``, ``Elu``, ``Softplus``...) with
    its derivative: ``dx = dy * f'(x)``.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, op: str, **attrs):
        super().__init__()
        if op not in UNARY:
            raise ValueError(f"Elementwise: unknown function {op!r}; known: {sorted(UNARY)}")
        self.op, self.attrs = op, {k: float(v) for k, v in attrs.items()}

    def forward(self, x):
        forward, _ = UNARY[self.op]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # log(0) = -inf as in onnxruntime
            y = np.asarray(forward(x, self.attrs)).astype(x.dtype, copy=False)
        self._save((x, y))
        return y

    def backward(self, dy, input_grad: bool = True):
        x, y = self._restore()
        if not input_grad:
            return None
        _, derivative = UNARY[self.op]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return (dy * derivative(x, y, self.attrs)).astype(dy.dtype, copy=False)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x and y are cached; f and f' make about one input-sized intermediate each
        n = batch_bytes(input_shape, batch_size, dtype)
        return LayerMemory(keeps_input=True, keeps_output=True, forward_temp=n, backward_temp=n)

    def onnx_export(self, ctx, x, prefix):
        ctx.require_opset(UNARY_OPSET.get(self.op, 1), f"{self.op} ({prefix!r})")
        return ctx.node(self.op, [x], ctx.join(prefix, self.op), **self.attrs)

    def extra_repr(self) -> str:
        return self.op + "".join(f", {k}={v}" for k, v in self.attrs.items())


class Pow(FullShapeLayer, _OnnxLayer):
    """``y = x ** exponent`` with a constant exponent (ONNX ``Pow``); ``dx = exponent * x**(exponent-1)``.

    Shape:
        input (N, *) -> output: input broadcast with ``exponent``
    """

    def __init__(self, exponent):
        super().__init__()
        self.register_buffer("exponent", np.array(exponent, copy=True))

    def forward(self, x):
        e = self.exponent.astype(x.dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else self.exponent
        with np.errstate(invalid="ignore", divide="ignore"):
            y = (x ** e).astype(x.dtype, copy=False)
        self._save(x)
        return y

    def backward(self, dy, input_grad: bool = True):
        x = self._restore()
        if not input_grad:
            return None
        e = self.exponent.astype(dy.dtype, copy=False)
        with np.errstate(invalid="ignore", divide="ignore"):
            return unbroadcast(dy * e * x ** (e - 1), x.shape)

    def full_output_shape(self, shape):
        return broadcast_full("Pow", shape, self.exponent.shape)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x is cached; backward makes dy * e and x ** (e - 1) before their product
        return LayerMemory(keeps_input=True, backward_temp=2 * batch_bytes(output_shape, batch_size, dtype))

    def onnx_export(self, ctx, x, prefix):
        exponent = ctx.constant(ctx.join(prefix, "exponent"), self.exponent, like=x)
        return ctx.node("Pow", [x, exponent], ctx.join(prefix, "Pow"))


def divide(a, b):
    """ONNX's ``Div``: true division of floats, division truncated toward zero of integers (C's)."""
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
        return a / b
    b = np.where(b == 0, 1, b)
    quotient = a // b
    if np.issubdtype(quotient.dtype, np.signedinteger):  # floor -> toward zero where inexact and negative
        quotient = quotient + ((quotient < 0) & (quotient * b != a))
    return quotient.astype(np.result_type(a, b), copy=False)


class Div(FullShapeLayer, MultiInputModule):
    """``y = a / b`` of two computed tensors, with broadcasting (ONNX ``Div``; integers divide
    truncating toward zero).

    Shape:
        inputs broadcast together -> output of the broadcast shape
    """

    def forward(self, a, b):
        self._save((a, b))
        with np.errstate(divide="ignore", invalid="ignore"):
            return divide(a, b)

    def backward(self, dy, input_grad: bool = True):
        a, b = self._restore()
        if not input_grad:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return unbroadcast(dy / b, a.shape), unbroadcast(-dy * a / (b * b), b.shape)

    def full_output_shape(self, a, b):
        return broadcast_full("Div", a, b)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # both inputs are cached; backward makes dy / b, then -dy, -dy * a and b * b for b's gradient
        return LayerMemory(keeps_input=True, backward_temp=3 * batch_bytes(output_shape, batch_size, dtype))

    def onnx_export(self, ctx, inputs, prefix):
        return ctx.node("Div", inputs, prefix or "Div")


class MatMul(FullShapeLayer, MultiInputModule):
    """``y = a @ b`` of two computed tensors with NumPy's matmul rules (ONNX ``MatMul``):
    ``da = dy @ b^T``, ``db = a^T @ dy``, summed over broadcast axes.

    Shape:
        a (..., M, K) @ b (..., K, P) -> (broadcast ..., M, P)
    """

    def forward(self, a, b):
        self._save((a, b))
        return array_module(a).matmul(a, b)

    def backward(self, dy, input_grad: bool = True):
        a, b = self._restore()
        if not input_grad:
            return None
        return matmul_grads(a, b, dy, True, True)

    def full_output_shape(self, a, b):
        return matmul_shape("MatMul", a, b)

    def macs(self, input_shape, output_shape) -> int:
        # each output is a dot product along a's last axis (the first input's shape is enough,
        # which is what profile passes)
        return numel(output_shape) * sample_shapes(input_shape)[0][-1]

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(keeps_input=True)  # both inputs are cached; the gradients are dy @ b^T and a^T @ dy

    def onnx_export(self, ctx, inputs, prefix):
        return ctx.node("MatMul", inputs, prefix or "MatMul")


class Extremum(FullShapeLayer, MultiInputModule):
    """Element-wise ``Max``/``Min``/``Mean`` of several tensors (ONNX's variadic ops), with
    broadcasting. The gradient of max/min goes to the first input holding the extreme value.

    Shape:
        inputs broadcast together -> output of the broadcast shape
    """

    def __init__(self, kind: str):
        super().__init__()
        if kind not in ("max", "min", "mean"):
            raise ValueError(f"Extremum: kind must be 'max', 'min' or 'mean', got {kind!r}")
        self.kind = kind

    def forward(self, *xs):
        xp = array_module(xs[0])
        shape = broadcast_full(f"Extremum({self.kind})", *[x.shape for x in xs])
        stacked = xp.stack([xp.broadcast_to(x, shape) for x in xs])
        if self.kind == "mean":
            self._save(([x.shape for x in xs], None))
            return stacked.mean(axis=0).astype(xs[0].dtype, copy=False)
        winner = stacked.argmax(axis=0) if self.kind == "max" else stacked.argmin(axis=0)
        self._save(([x.shape for x in xs], winner))
        return xp.take_along_axis(stacked, winner[None], axis=0)[0]

    def backward(self, dy, input_grad: bool = True):
        shapes, winner = self._restore()
        if not input_grad:
            return None
        if winner is None:
            return tuple(unbroadcast(dy / len(shapes), s) for s in shapes)
        return tuple(unbroadcast(dy * (winner == i), s) for i, s in enumerate(shapes))

    def full_output_shape(self, *shapes):
        return broadcast_full(f"Extremum({self.kind})", *shapes)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # forward stacks the inputs broadcast to the output; max/min keep the int64 winner
        out = batch_bytes(output_shape, batch_size, dtype)
        stacked = len(sample_shapes(input_shape)) * out
        if self.kind == "mean":
            return LayerMemory(forward_temp=stacked)
        winner, mask = batch_bytes(output_shape, batch_size, np.int64), batch_bytes(output_shape, batch_size, np.bool_)
        return LayerMemory(saved=winner, forward_temp=stacked, backward_temp=mask)

    def onnx_export(self, ctx, inputs, prefix):
        op = self.kind.capitalize()
        return ctx.node(op, inputs, prefix or op)

    def extra_repr(self) -> str:
        return self.kind


class ExtremumConstant(FullShapeLayer, _OnnxLayer):
    """``y = max(x, c)`` or ``min(x, c)`` with a constant ``c`` (ONNX ``Max``/``Min`` with constant
    operands, e.g. TF's ReLU6 as ``Min(Max(x, 0), 6)``); the gradient goes to ``x`` where ``x``
    is the result (ties included).

    Shape:
        input -> input broadcast with ``c``
    """

    def __init__(self, kind: str, value):
        super().__init__()
        if kind not in ("max", "min"):
            raise ValueError(f"ExtremumConstant: kind must be 'max' or 'min', got {kind!r}")
        self.kind = kind
        self.register_buffer("value", np.array(value, copy=True))

    def forward(self, x):
        c = self.value.astype(x.dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else self.value
        chosen = (x >= c) if self.kind == "max" else (x <= c)
        chosen |= np.isnan(x) if np.issubdtype(x.dtype, np.floating) else False
        self._save((x.shape, chosen))
        return array_module(x).where(chosen, x, c).astype(np.result_type(x, c), copy=False)

    def backward(self, dy, input_grad: bool = True):
        shape, chosen = self._restore()
        return unbroadcast(dy * chosen, shape) if input_grad else None

    def full_output_shape(self, shape):
        return broadcast_full(f"ExtremumConstant({self.kind})", shape, self.value.shape)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # the mask is kept (isnan(x), a temporary, is gone before the output is made)
        return LayerMemory(saved=batch_bytes(input_shape, batch_size, np.bool_))

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # max(x, 0) is TF's ReLU (min(max(x, 0), 6) its ReLU6): in place, as ReLU

    def onnx_export(self, ctx, x, prefix):
        op = self.kind.capitalize()
        value = ctx.constant(ctx.join(prefix, "value"), self.value, like=x)
        return ctx.node(op, [x, value], ctx.join(prefix, op))

    def extra_repr(self) -> str:
        return f"{self.kind}, shape={tuple(self.value.shape)}"


def reduction_identity(dtype, largest: bool):
    """What the max (``largest=False``: the smallest value) or min of an empty set is, as ONNX says:
    -inf / inf, the integer limits, False / True."""
    dtype = np.dtype(dtype)
    if dtype == bool:
        return largest
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).max if largest else np.iinfo(dtype).min
    return np.inf if largest else -np.inf


REDUCTIONS = ("mean", "sum", "max", "min", "sum_square", "l1", "l2", "log_sum", "log_sum_exp")
REDUCE_OPS = {"mean": "ReduceMean", "sum": "ReduceSum", "max": "ReduceMax", "min": "ReduceMin",
              "sum_square": "ReduceSumSquare", "l1": "ReduceL1", "l2": "ReduceL2", "log_sum": "ReduceLogSum",
              "log_sum_exp": "ReduceLogSumExp"}
# input-sized temporaries of forward and backward (beyond dx), per kind, read off Reduce's code
_REDUCE_TEMPS = {"mean": (0, 0), "sum": (0, 0), "max": (0, 2), "min": (0, 2), "sum_square": (1, 1), "l1": (1, 1),
                 "l2": (1, 2), "log_sum": (0, 0), "log_sum_exp": (2, 1)}


class Reduce(FullShapeLayer, _OnnxLayer):
    """ONNX ``ReduceMean``/``ReduceSum``/``ReduceMax``/``ReduceMin``/``ReduceSumSquare``/
    ``ReduceL1``/``ReduceL2``/``ReduceLogSum``/``ReduceLogSumExp`` over ``axes`` (``None``: every axis), keeping
    the reduced axes as size 1 when ``keepdims``. A global-average-pooling head (Keras, PyTorch's
    ``x.mean((2, 3))``) is ``Reduce("mean", (2, 3))``.

    Max and min share the gradient equally among tied maxima (as PyTorch's ``amax``).

    Shape:
        input (d0, d1, ...) -> the same with each axis in ``axes`` removed (or 1 with ``keepdims``)
    """

    def __init__(self, kind: str, axes=None, keepdims: bool = True):
        super().__init__()
        if kind not in REDUCTIONS:
            raise ValueError(f"Reduce: kind must be one of {REDUCTIONS}, got {kind!r}")
        self.kind = kind
        self.axes = None if axes is None else tuple(int(a) for a in axes)
        self.keepdims = bool(keepdims)

    def _axes(self, ndim: int) -> tuple:
        if self.axes is None:
            return tuple(range(ndim))
        axes = []
        for a in self.axes:
            if not -ndim <= a < ndim:
                raise ValueError(f"Reduce{self.kind}: axis {a} is out of range for a {ndim}-D input")
            axes.append(a + ndim if a < 0 else a)
        if len(set(axes)) != len(axes):
            raise ValueError(f"Reduce{self.kind}: axes {self.axes} repeat an axis")
        return tuple(sorted(axes))

    def forward(self, x):
        xp = array_module(x)
        axes = self._axes(x.ndim)
        kind = self.kind
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "mean":
                y = x.mean(axis=axes, keepdims=True)
            elif kind == "sum":
                y = x.sum(axis=axes, keepdims=True)
            elif kind == "max":
                y = x.max(axis=axes, keepdims=True, initial=reduction_identity(x.dtype, False)) if not x.size \
                    else x.max(axis=axes, keepdims=True)
            elif kind == "min":
                y = x.min(axis=axes, keepdims=True, initial=reduction_identity(x.dtype, True)) if not x.size \
                    else x.min(axis=axes, keepdims=True)
            elif kind == "sum_square":
                y = (x * x).sum(axis=axes, keepdims=True)
            elif kind == "l1":
                y = xp.abs(x).sum(axis=axes, keepdims=True)
            elif kind == "l2":
                y = xp.sqrt((x * x).sum(axis=axes, keepdims=True))
            elif kind == "log_sum":
                y = xp.log(x.sum(axis=axes, keepdims=True))
            else:  # log_sum_exp, shifted by the maximum so that it does not overflow
                peak = x.max(axis=axes, keepdims=True) if x.size else xp.zeros(self._kept(x.shape, axes), x.dtype)
                peak = xp.where(xp.isfinite(peak), peak, 0)
                y = xp.log(xp.exp(x - peak).sum(axis=axes, keepdims=True)) + peak
        y = y.astype(x.dtype, copy=False)
        self._save((x, y, axes))
        return y if self.keepdims else y.reshape(self._dropped(x.shape, axes))

    @staticmethod
    def _kept(shape, axes):
        return tuple(1 if i in axes else s for i, s in enumerate(shape))

    @staticmethod
    def _dropped(shape, axes):
        return tuple(s for i, s in enumerate(shape) if i not in axes)

    def backward(self, dy, input_grad: bool = True):
        x, y, axes = self._restore()
        if not input_grad:
            return None
        xp = array_module(dy)
        dy = dy.reshape(y.shape)  # the reduced axes back as size 1, so everything broadcasts
        kind = self.kind
        with np.errstate(divide="ignore", invalid="ignore"):
            if kind == "mean":
                count = int(np.prod([x.shape[a] for a in axes]))
                dx = xp.broadcast_to(dy / max(count, 1), x.shape)
            elif kind == "sum":
                dx = xp.broadcast_to(dy, x.shape)
            elif kind in ("max", "min"):
                hit = x == y
                dx = dy * hit / hit.sum(axis=axes, keepdims=True)
            elif kind == "sum_square":
                dx = 2 * x * dy
            elif kind == "l1":
                dx = xp.sign(x) * dy
            elif kind == "l2":
                dx = xp.where(y != 0, x * dy / xp.where(y != 0, y, 1), 0)
            elif kind == "log_sum":
                dx = xp.broadcast_to(dy / xp.exp(y), x.shape)
            else:
                dx = xp.exp(x - y) * dy
        return xp.ascontiguousarray(dx).astype(dy.dtype, copy=False)

    def full_output_shape(self, shape):
        axes = self._axes(len(shape))
        return self._kept(shape, axes) if self.keepdims else self._dropped(shape, axes)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x and the (kept-axes) result are cached; max/min compare x with it in backward
        n = batch_bytes(input_shape, batch_size, dtype)
        forward, backward = _REDUCE_TEMPS[self.kind]
        mask = batch_bytes(input_shape, batch_size, np.bool_) if self.kind in ("max", "min") else 0
        return LayerMemory(keeps_input=True, keeps_output=True, forward_temp=forward * n,
                           backward_temp=backward * n + mask)

    def onnx_export(self, ctx, x, prefix):
        op = REDUCE_OPS[self.kind]
        attrs = {"keepdims": int(self.keepdims)}
        inputs = [x]
        if self.axes is not None:
            if ctx.opset >= (13 if op == "ReduceSum" else 18):
                inputs.append(ctx.constant(ctx.join(prefix, "axes"), np.array(self.axes, np.int64)))
            else:
                attrs["axes"] = list(self.axes)
        return ctx.node(op, inputs, ctx.join(prefix, op), **attrs)

    def extra_repr(self) -> str:
        return f"{self.kind}, axes={self.axes}, keepdims={self.keepdims}"
