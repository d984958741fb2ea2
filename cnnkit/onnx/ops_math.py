"""Importer rules for arithmetic, activations, reductions and matrix products (opsets 7 to 22).

A binary op with one constant operand becomes a layer holding the constant (trainable when it
came from an initializer); with two computed operands, a two-input layer. Folding rules evaluate
the same ops on constants, checking the size of a broadcast result before allocating it.
"""
from __future__ import annotations

import numpy as np

from ..nn.activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from ..nn.containers import Sequential
from ..nn.graph import Add, Mul
from ..nn.linear import Linear
from .layers import AddConstant, Clip, MatMulConstant, MulConstant, Reshape, Sub, matmul_shape
from .math_layers import (UNARY, Div, Elementwise, Extremum, ExtremumConstant, HardSigmoid, HardSwish, MatMul, Pow,
                          PRelu, Reduce, divide, reduction_identity)
from .op_helpers import NoInit, int_list, unsupported, variable_input
from .registry import Alias, register_fold, register_op

# ---- folding: the same arithmetic on constants ---------------------------------------------------


def _broadcast_fold(function):
    """A fold rule of an element-wise op whose result size is checked before it is computed."""

    def fold(ctx, attrs, *values):
        values = [np.asarray(v) for v in values if v is not None]
        shape = np.broadcast_shapes(*[v.shape for v in values])
        ctx.check_fold_size(shape, np.result_type(*values))
        with np.errstate(all="ignore"):
            return function(*values)

    return fold


for _op, _fn in {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": divide,
                 "Pow": lambda a, b: np.power(a, b).astype(a.dtype),
                 "Equal": np.equal, "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal,
                 "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or,
                 "Xor": np.logical_xor, "Where": np.where}.items():
    register_fold(_op)(_broadcast_fold(_fn))


@register_fold("Mod")
def _fold_mod(ctx, attrs, a, b):
    """``fmod=1``: C's fmod (sign of the dividend); ``fmod=0``: the sign of the divisor."""
    return _broadcast_fold(np.fmod if attrs.get("fmod", 0) else np.mod)(ctx, attrs, a, b)


@register_fold("Sum")
def _fold_sum(ctx, attrs, *values):
    return _broadcast_fold(lambda *v: sum(v[1:], v[0]))(ctx, attrs, *values)


@register_fold("Max")
def _fold_max(ctx, attrs, *values):
    return _broadcast_fold(lambda *v: np.maximum.reduce(np.broadcast_arrays(*v)))(ctx, attrs, *values)


@register_fold("Min")
def _fold_min(ctx, attrs, *values):
    return _broadcast_fold(lambda *v: np.minimum.reduce(np.broadcast_arrays(*v)))(ctx, attrs, *values)


for _op, _fn in {"Neg": np.negative, "Abs": np.abs, "Not": np.logical_not, "Sqrt": np.sqrt, "Exp": np.exp,
                 "Log": np.log, "Reciprocal": np.reciprocal, "Floor": np.floor, "Ceil": np.ceil,
                 "Relu": lambda v: np.maximum(v, 0), "Sign": np.sign}.items():
    register_fold(_op)((lambda fn: lambda ctx, attrs, v: fn(np.asarray(v)))(_fn))


@register_fold("MatMul")
def _fold_matmul(ctx, attrs, a, b):
    ctx.check_fold_size(matmul_shape("MatMul", a.shape, b.shape), np.result_type(a, b))
    return np.matmul(a, b)


# ---- element-wise arithmetic --------------------------------------------------------------------


def _trainable(ctx, name) -> bool:
    return ctx.is_trainable(name)


def _fuse_bias(ctx, node, x: str, bias):
    """``MatMul`` followed by ``Add`` of a bias vector (TF/Keras exports, PyTorch at opset 14+)
    becomes one ``Linear`` with a bias, so that ``finetune.replace_head`` sees a classifier."""
    layer = ctx.module_producing(x)
    if (isinstance(layer, Linear) and layer.bias is None and ctx.consumers.get(x, 0) == 1 and np.ndim(bias) <= 2
            and np.size(bias) == layer.out_features and (np.ndim(bias) < 2 or np.shape(bias)[0] == 1)
            and np.issubdtype(np.asarray(bias).dtype, np.floating)):
        from ..nn.module import Parameter

        layer.bias = Parameter(np.array(bias, dtype=layer.weight.dtype).reshape(-1))
        return Alias(x)
    return None


@register_op("Add")
def add(ctx, node, attrs):
    a, b = node.input[0], node.input[1]
    if not ctx.is_const(a) and not ctx.is_const(b):
        return Add(), [a, b]
    x, c = (a, b) if ctx.is_const(b) else (b, a)
    fused = _fuse_bias(ctx, node, x, ctx.const(c))
    return fused or (AddConstant(ctx.const(c), _trainable(ctx, c)), [x])


@register_op("Sub")
def sub(ctx, node, attrs):
    a, b = node.input[0], node.input[1]
    if not ctx.is_const(a) and not ctx.is_const(b):
        return Sub(), [a, b]
    if ctx.is_const(b):  # x - c
        return AddConstant(np.negative(ctx.const(b)), False), [a]
    c = ctx.const(a)  # c - x = c + (-1) x
    return Sequential(MulConstant(np.array(-1, c.dtype), False), AddConstant(c, False)), [b]


@register_op("Mul")
def mul(ctx, node, attrs):
    a, b = node.input[0], node.input[1]
    if not ctx.is_const(a) and not ctx.is_const(b):
        return Mul(), [a, b]
    x, c = (a, b) if ctx.is_const(b) else (b, a)
    return MulConstant(ctx.const(c), _trainable(ctx, c)), [x]


@register_op("Div")
def div(ctx, node, attrs):
    a, b = node.input[0], node.input[1]
    if not ctx.is_const(a) and not ctx.is_const(b):
        return Div(), [a, b]
    if ctx.is_const(b):
        value = np.asarray(ctx.const(b))
        if not np.issubdtype(value.dtype, np.floating):
            unsupported("Div of a computed tensor by an integer constant")
        with np.errstate(divide="ignore"):
            return MulConstant(np.reciprocal(value), False), [a]
    c = ctx.const(a)  # c / x
    return Sequential(Elementwise("Reciprocal"), MulConstant(c, False)), [b]


@register_op("Pow")
def pow_(ctx, node, attrs):
    x = variable_input(ctx, node)
    exponent = ctx.require_const(node, 1, "exponent")
    return Pow(exponent), [x]


@register_op("Sum")
def sum_(ctx, node, attrs):
    inputs = [n for n in node.input if n]
    computed = [n for n in inputs if not ctx.is_const(n)]
    constants = [np.asarray(ctx.const(n)) for n in inputs if ctx.is_const(n)]
    if constants:
        if len(computed) != 1:
            unsupported("Sum of several computed tensors and constants")
        return AddConstant(sum(constants[1:], constants[0]), False), computed
    return (Add(), inputs) if len(inputs) > 1 else Alias(inputs[0])


def _variadic(kind):
    def build(ctx, node, attrs):
        inputs = [n for n in node.input if n]
        computed = [n for n in inputs if not ctx.is_const(n)]
        constants = [np.asarray(ctx.const(n)) for n in inputs if ctx.is_const(n)]
        if constants:
            if kind == "mean" or len(computed) != 1:
                unsupported(f"{node.op_type} with constant operands (only Max/Min of one tensor and constants)")
            reduce = np.maximum if kind == "max" else np.minimum
            value = constants[0]
            for c in constants[1:]:
                value = reduce(value, c)
            return ExtremumConstant(kind, value), computed
        return (Extremum(kind), inputs) if len(inputs) > 1 else Alias(inputs[0])

    return build


register_op("Max")(_variadic("max"))
register_op("Min")(_variadic("min"))
register_op("Mean")(_variadic("mean"))


# ---- activations --------------------------------------------------------------------------------


@register_op("Relu")
def relu(ctx, node, attrs):
    return ReLU(), [variable_input(ctx, node)]


@register_op("LeakyRelu")
def leaky_relu(ctx, node, attrs):
    return LeakyReLU(float(attrs.get("alpha", 0.01))), [variable_input(ctx, node)]


@register_op("PRelu")
def prelu(ctx, node, attrs):
    x = variable_input(ctx, node)
    slope = np.asarray(ctx.require_const(node, 1, "slope"))
    shape = ctx.shape(x)
    if slope.ndim == 1 and len(shape) > 2 and slope.size == shape[1] and slope.size > 1:
        # one slope per channel (PyTorch's PReLU(C), old exporters): broadcast along axis 1
        slope = slope.reshape((-1,) + (1,) * (len(shape) - 2))
    return PRelu(slope, trainable=_trainable(ctx, node.input[1])), [x]


@register_op("Sigmoid")
def sigmoid(ctx, node, attrs):
    return Sigmoid(), [variable_input(ctx, node)]


@register_op("Tanh")
def tanh(ctx, node, attrs):
    return Tanh(), [variable_input(ctx, node)]


@register_op("HardSigmoid")
def hard_sigmoid(ctx, node, attrs):
    return HardSigmoid(float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))), [variable_input(ctx, node)]


@register_op("HardSwish")
def hard_swish(ctx, node, attrs):
    return HardSwish(), [variable_input(ctx, node)]


def _unary(op: str, keys=()):
    def build(ctx, node, attrs):
        return Elementwise(op, **{k: attrs[k] for k in keys if k in attrs}), [variable_input(ctx, node)]

    return build


_UNARY_ATTRS = {"Elu": ("alpha",), "Celu": ("alpha",), "Selu": ("alpha", "gamma"), "ThresholdedRelu": ("alpha",)}
for _op in UNARY:
    register_op(_op)(_unary(_op, _UNARY_ATTRS.get(_op, ())))


def _softmax(layer_type):
    def build(ctx, node, attrs):
        """Opset 13+: along ``axis`` (default -1). Before: the input is flattened to 2-D at
        ``axis`` (default 1) and the softmax runs over everything after it."""
        x = variable_input(ctx, node)
        shape = ctx.shape(x)
        rank = len(shape)
        if ctx.opset >= 13:
            axis = int(attrs.get("axis", -1))
            if not -rank <= axis < rank:
                raise ValueError(f"axis {axis} is out of range for a {rank}-D input")
            return layer_type(dim=axis), [x]
        axis = int(attrs.get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            raise ValueError(f"axis {axis} is out of range for a {rank}-D input")
        if axis == rank - 1:
            return layer_type(dim=axis), [x]
        flat = Reshape((0,) * axis + (-1,))
        back = Reshape((0,) * axis + tuple(shape[axis:]))
        return Sequential(flat, layer_type(dim=axis), back), [x]

    return build


register_op("Softmax")(_softmax(Softmax))
register_op("LogSoftmax")(_softmax(LogSoftmax))


@register_op("Clip")
def clip(ctx, node, attrs):
    x = variable_input(ctx, node)
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo, hi = ctx.require_const(node, 1, "min"), ctx.require_const(node, 2, "max")
    for what, value in (("min", lo), ("max", hi)):
        if value is not None and np.size(value) != 1:
            raise ValueError(f"{what} must be a scalar, got shape {np.shape(value)}")
    return Clip(None if lo is None else float(np.asarray(lo).reshape(())),
                None if hi is None else float(np.asarray(hi).reshape(()))), [x]


# ---- reductions ---------------------------------------------------------------------------------

_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceSumSquare": "sum_square", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceLogSum": "log_sum",
           "ReduceLogSumExp": "log_sum_exp"}


def _reduce_axes(ctx, node, attrs):
    """The axes (``None``: all) from the attribute (older opsets) or the second input
    (ReduceSum from opset 13, the others from 18)."""
    axes_as_input = ctx.opset >= (13 if node.op_type == "ReduceSum" else 18)
    if axes_as_input:
        axes = ctx.require_const(node, 1, "axes")
        axes = None if axes is None else int_list(axes, "axes")
    else:
        axes = int_list(attrs["axes"], "axes") if "axes" in attrs else None
    if axes is not None and not axes:
        axes = None
        if attrs.get("noop_with_empty_axes", 0):
            return "noop"
    return axes


def _reduce(kind):
    def build(ctx, node, attrs):
        x = variable_input(ctx, node)
        axes = _reduce_axes(ctx, node, attrs)
        if axes == "noop":
            return Alias(x)
        return Reduce(kind, axes, keepdims=bool(attrs.get("keepdims", 1))), [x]

    return build


def _fold_reduce(kind):
    def extreme(function, largest):
        def reduce(v, axis=None, keepdims=True):
            if v.size == 0:  # the reduction of an empty set: its identity (-inf / inf, False / True)
                return function(v, axis=axis, keepdims=keepdims, initial=reduction_identity(v.dtype, largest))
            return function(v, axis=axis, keepdims=keepdims)
        return reduce

    functions = {"mean": np.mean, "sum": np.sum, "max": extreme(np.max, False), "min": extreme(np.min, True),
                 "sum_square": lambda v, **k: np.sum(v * v, **k), "l1": lambda v, **k: np.sum(np.abs(v), **k),
                 "l2": lambda v, **k: np.sqrt(np.sum(v * v, **k)), "log_sum": lambda v, **k: np.log(np.sum(v, **k)),
                 "log_sum_exp": lambda v, **k: np.log(np.sum(np.exp(v), **k))}

    def fold(ctx, attrs, x, axes=None):
        if ctx.opset >= (13 if op_name == "ReduceSum" else 18):
            axes = None if axes is None or not np.size(axes) else tuple(int_list(axes, "axes"))
        else:
            axes = tuple(attrs["axes"]) if "axes" in attrs else None
        if axes is None and attrs.get("noop_with_empty_axes", 0):
            return x
        return np.asarray(functions[kind](np.asarray(x), axis=axes, keepdims=bool(attrs.get("keepdims", 1))))

    op_name = next(op for op, k in _REDUCE.items() if k == kind)
    return fold


for _op, _kind in _REDUCE.items():
    register_op(_op)(_reduce(_kind))
    register_fold(_op)(_fold_reduce(_kind))


@register_fold("ReduceProd")
def _fold_reduce_prod(ctx, attrs, x, axes=None):
    if ctx.opset >= 18:
        axes = None if axes is None or not np.size(axes) else tuple(int_list(axes, "axes"))
    else:
        axes = tuple(attrs["axes"]) if "axes" in attrs else None
    return np.prod(np.asarray(x), axis=axes, keepdims=bool(attrs.get("keepdims", 1)))


# ---- matrix products ----------------------------------------------------------------------------


@register_op("MatMul")
def matmul(ctx, node, attrs):
    a, b = node.input[0], node.input[1]
    if ctx.is_const(b) and not ctx.is_const(a):
        value = ctx.const(b)
        if value.ndim == 2 and ctx.rank(a) == 2 and np.issubdtype(value.dtype, np.floating):
            # (N, K) @ (K, P): a Linear without bias (an Add of a bias vector may fuse into it)
            if ctx.shape(a)[1] != value.shape[0]:
                raise ValueError(f"shapes {ctx.shape(a)} @ {value.shape} do not match")
            layer = Linear(value.shape[0], value.shape[1], bias=False, dtype=ctx.dtype, generator=NoInit())
            layer.weight.data[...] = value.T  # into the layer's own array: no second copy beside it
            return layer, [a]
        return MatMulConstant(value, _trainable(ctx, b)), [a]
    if ctx.is_const(a) and not ctx.is_const(b):
        return MatMulConstant(ctx.const(a), _trainable(ctx, a), constant_on_left=True), [b]
    return MatMul(), [a, b]

