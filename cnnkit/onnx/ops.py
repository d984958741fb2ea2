"""The ONNX operator table of the importer: one builder per ``op_type`` (opsets 7 to 21).

Builders read the node's attributes (with the defaults of the ONNX spec), take weights from
constant inputs and return a cnnkit layer; fold rules evaluate constant sub-graphs (the shape
arithmetic around ``Reshape``). Register more with :func:`~cnnkit.onnx.importer.register_op`.
"""
from __future__ import annotations

import math

import numpy as np

from ..nn.activation import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from ..nn.containers import Sequential
from ..nn.dropout import Dropout
from ..nn.flatten import Flatten
from ..nn.graph import Add, Cat, Mul
from ..nn.linear import Linear
from ..nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from .importer import Alias, Folded, UnsupportedOperatorError, register_fold, register_op
from .layers import AddConstant, Clip, ConstantPad, GlobalMaxPool, MatMulConstant, MulConstant, Reshape, Slice, Sub

# ---- helpers ------------------------------------------------------------------------------------


def _unsupported(what: str):
    raise UnsupportedOperatorError(what)


def _variable_input(ctx, node, i: int = 0) -> str:
    name = ctx.input(node, i)
    if name is None or ctx.is_const(name):
        _unsupported(f"input {i} must be a computed tensor, not a constant")
    return name


def _weight(ctx, node, i: int, what: str):
    name = ctx.input(node, i)
    if name is None:
        return None
    value = ctx.const(name)
    if value is None:
        _unsupported(f"the {what} (input {i}) must be a constant (an initializer), not a computed tensor")
    return value


def _spatial_padding(ctx, node, attrs, kernel, strides, dilations, x_name, layer: str):
    """``(symmetric (ph, pw), extra (top, left, bottom, right))`` from ``pads`` or ``auto_pad``."""
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        h, w = ctx.shape(x_name)[1:3]
        begins, ends = [], []
        for size, k, s, d in zip((h, w), kernel, strides, dilations):
            out = math.ceil(size / s)
            total = max((out - 1) * s + d * (k - 1) + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = begins + ends
    elif auto_pad == "VALID":
        pads = [0, 0, 0, 0]
    elif auto_pad == "NOTSET":
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
    else:
        raise ValueError(f"{layer}: unknown auto_pad {auto_pad!r}")
    if len(pads) != 4:
        _unsupported(f"{layer}: only 2-D (N, C, H, W) inputs are supported, got pads {pads}")
    top, left, bottom, right = pads
    sym = (min(top, bottom), min(left, right))
    extra = (top - sym[0], left - sym[1], bottom - sym[0], right - sym[1])
    return sym, extra


def _with_extra_pad(module, extra, value: float = 0.0):
    """Prefix ``module`` with the asymmetric part of the padding, when there is one."""
    if not any(extra):
        return module
    top, left, bottom, right = extra
    return Sequential(ConstantPad((0, 0, top, left, 0, 0, bottom, right), value), module)


def _window(attrs, layer: str):
    kernel = tuple(attrs["kernel_shape"])
    if len(kernel) != 2:
        _unsupported(f"{layer}: only 2-D windows are supported, got kernel_shape {kernel}")
    strides = tuple(attrs.get("strides", (1, 1)))
    dilations = tuple(attrs.get("dilations", (1, 1)))
    return kernel, strides, dilations


# ---- convolution and dense layers ---------------------------------------------------------------


@register_op("Conv")
def conv(ctx, node, attrs):
    from ..nn.conv import Conv2d

    x = _variable_input(ctx, node)
    weight = _weight(ctx, node, 1, "weight")
    bias = _weight(ctx, node, 2, "bias")
    if weight.ndim != 4:
        _unsupported(f"Conv: only 2-D convolutions are supported, got a weight of shape {weight.shape}")
    groups = int(attrs.get("group", 1))
    kernel = tuple(attrs.get("kernel_shape", weight.shape[2:]))
    strides, dilations = tuple(attrs.get("strides", (1, 1))), tuple(attrs.get("dilations", (1, 1)))
    sym, extra = _spatial_padding(ctx, node, attrs, kernel, strides, dilations, x, "Conv")
    layer = Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, stride=strides, padding=sym,
                   dilation=dilations, groups=groups, bias=bias is not None, check_geometry=False,
                   dtype=weight.dtype)
    layer.weight.data = weight.copy()
    if bias is not None:
        layer.bias.data = bias.astype(weight.dtype).copy()
    return _with_extra_pad(layer, extra), [x]


@register_op("Gemm")
def gemm(ctx, node, attrs):
    """``Y = alpha * A' B' + beta * C`` with ``B`` and ``C`` constant: a ``Linear`` layer."""
    x = _variable_input(ctx, node)
    if attrs.get("transA", 0):
        _unsupported("Gemm with transA=1 is not supported")
    b = _weight(ctx, node, 1, "B matrix")
    weight = b if attrs.get("transB", 0) else b.T          # Linear's (out, in) layout
    weight = weight * attrs.get("alpha", 1.0)
    c = _weight(ctx, node, 2, "C bias")
    layer = Linear(weight.shape[1], weight.shape[0], bias=c is not None, dtype=weight.dtype)
    layer.weight.data = np.ascontiguousarray(weight, dtype=weight.dtype)
    if c is not None:
        c = np.asarray(c * attrs.get("beta", 1.0))
        if c.ndim == 2 and c.shape[0] != 1:
            _unsupported(f"Gemm with a C of shape {c.shape} (a bias per sample)")
        layer.bias.data = np.broadcast_to(c.reshape(-1), (weight.shape[0],)).astype(weight.dtype)
    return layer, [x]


@register_fold("MatMul")
def _fold_matmul(ctx, attrs, a, b):
    return np.matmul(a, b)


@register_op("MatMul")
def matmul(ctx, node, attrs):
    a, b = node.input[0], node.input[1]
    if ctx.is_const(b) and not ctx.is_const(a):
        value = ctx.const(b)
        if value.ndim == 2 and len(ctx.shape(a)) == 1:  # (N, K) @ (K, P): a Linear without bias
            layer = Linear(value.shape[0], value.shape[1], bias=False, dtype=value.dtype)
            layer.weight.data = np.ascontiguousarray(value.T)
            return layer, [a]
        return MatMulConstant(value, ctx.is_trainable(b)), [a]
    if ctx.is_const(a) and not ctx.is_const(b):
        return MatMulConstant(ctx.const(a), ctx.is_trainable(a), constant_on_left=True), [b]
    _unsupported("MatMul of two computed tensors is not supported (one operand must be a constant)")


# ---- element-wise arithmetic --------------------------------------------------------------------


def _binary(ctx, node, *, variable_op, constant_op, inverse_constant=None, name: str):
    a, b = node.input[0], node.input[1]
    if not ctx.is_const(a) and not ctx.is_const(b):
        if variable_op is None:
            _unsupported(f"{name} of two computed tensors is not supported")
        return variable_op(), [a, b]
    if ctx.is_const(b):
        value = ctx.const(b)
        if inverse_constant is not None:
            value = inverse_constant(value)
        return constant_op(value, ctx.is_trainable(b) and inverse_constant is None), [a]
    return None, None  # constant on the left: caller decides


@register_fold("Add")
def _fold_add(ctx, attrs, a, b):
    return a + b


@register_op("Add")
def add(ctx, node, attrs):
    module, inputs = _binary(ctx, node, variable_op=Add, constant_op=AddConstant, name="Add")
    if module is None:  # c + x
        return AddConstant(ctx.const(node.input[0]), ctx.is_trainable(node.input[0])), [node.input[1]]
    return module, inputs


@register_fold("Sub")
def _fold_sub(ctx, attrs, a, b):
    return a - b


@register_op("Sub")
def sub(ctx, node, attrs):
    module, inputs = _binary(ctx, node, variable_op=Sub, constant_op=AddConstant,
                             inverse_constant=np.negative, name="Sub")
    if module is None:  # c - x = c + (-1) x
        c = ctx.const(node.input[0])
        return Sequential(MulConstant(np.array(-1, c.dtype), False), AddConstant(c, False)), [node.input[1]]
    return module, inputs


@register_fold("Mul")
def _fold_mul(ctx, attrs, a, b):
    return a * b


@register_op("Mul")
def mul(ctx, node, attrs):
    module, inputs = _binary(ctx, node, variable_op=Mul, constant_op=MulConstant, name="Mul")
    if module is None:  # c * x
        return MulConstant(ctx.const(node.input[0]), ctx.is_trainable(node.input[0])), [node.input[1]]
    return module, inputs


@register_fold("Div")
def _fold_div(ctx, attrs, a, b):
    return a // b if np.issubdtype(np.result_type(a, b), np.integer) else a / b


@register_op("Div")
def div(ctx, node, attrs):
    module, inputs = _binary(ctx, node, variable_op=None, constant_op=MulConstant,
                             inverse_constant=np.reciprocal, name="Div")
    if module is None:
        _unsupported("Div of a constant by a computed tensor is not supported")
    return module, inputs


@register_fold("Sum")
def _fold_sum(ctx, attrs, *values):
    return sum(values[1:], values[0])


@register_op("Sum")
def sum_(ctx, node, attrs):
    inputs = [n for n in node.input if n]
    if any(ctx.is_const(n) for n in inputs):
        _unsupported("Sum with constant operands is not supported (use Add)")
    return (Add(), inputs) if len(inputs) > 1 else Alias(inputs[0])


# ---- activations --------------------------------------------------------------------------------


@register_op("Relu")
def relu(ctx, node, attrs):
    return ReLU()


@register_op("LeakyRelu")
def leaky_relu(ctx, node, attrs):
    return LeakyReLU(float(attrs.get("alpha", 0.01)))


@register_op("Sigmoid")
def sigmoid(ctx, node, attrs):
    return Sigmoid()


@register_op("Tanh")
def tanh(ctx, node, attrs):
    return Tanh()


@register_op("Softmax")
def softmax(ctx, node, attrs):
    """Opset 13+: softmax along ``axis`` (default -1). Before: the input is flattened to 2-D at
    ``axis`` (default 1) and the softmax runs over everything after it."""
    x = _variable_input(ctx, node)
    rank = len(ctx.shape(x)) + 1
    if ctx.opset >= 13:
        return Softmax(dim=int(attrs.get("axis", -1))), [x]
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == rank - 1:
        return Softmax(dim=axis), [x]
    back = (0,) * axis + tuple(ctx.shape(x)[axis - 1:])
    return Sequential(Reshape((0,) * axis + (-1,)), Softmax(dim=axis), Reshape(back)), [x]


@register_op("Clip")
def clip(ctx, node, attrs):
    x = _variable_input(ctx, node)
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
    else:
        lo, hi = _weight(ctx, node, 1, "min"), _weight(ctx, node, 2, "max")
    return Clip(None if lo is None else float(lo), None if hi is None else float(hi)), [x]


@register_fold("Identity")
def _fold_identity(ctx, attrs, x):
    return x


@register_op("Identity")
def identity(ctx, node, attrs):
    return Alias(node.input[0])


@register_op("Dropout")
def dropout(ctx, node, attrs):
    """A real ``Dropout`` layer (identity in eval mode), so that fine-tuning an import drops out."""
    x = _variable_input(ctx, node)
    ratio = attrs.get("ratio", 0.5) if ctx.opset < 12 else _weight(ctx, node, 1, "ratio")
    ratio = 0.5 if ratio is None else float(ratio)
    return Dropout(ratio), [x]


# ---- pooling and normalisation ------------------------------------------------------------------


@register_op("MaxPool")
def max_pool(ctx, node, attrs):
    from ..nn.pooling import MaxPool2d

    x = _variable_input(ctx, node)
    if len(node.output) > 1 and node.output[1]:
        _unsupported("MaxPool's Indices output is not supported")
    kernel, strides, dilations = _window(attrs, "MaxPool")
    sym, extra = _spatial_padding(ctx, node, attrs, kernel, strides, dilations, x, "MaxPool")
    layer = MaxPool2d(kernel, strides, sym, dilations, ceil_mode=bool(attrs.get("ceil_mode", 0)),
                      check_geometry=False)
    return _with_extra_pad(layer, extra, value=-np.inf), [x]


@register_op("AveragePool")
def average_pool(ctx, node, attrs):
    from ..nn.pooling import AvgPool2d

    x = _variable_input(ctx, node)
    kernel, strides, dilations = _window(attrs, "AveragePool")
    if dilations != (1, 1):
        _unsupported(f"AveragePool with dilations {dilations} is not supported")
    include_pad = bool(attrs.get("count_include_pad", 0))  # ONNX's default is 0, PyTorch's True
    sym, extra = _spatial_padding(ctx, node, attrs, kernel, strides, dilations, x, "AveragePool")
    if any(extra) and not include_pad:
        _unsupported(f"AveragePool with asymmetric pads {extra} and count_include_pad=0 is not supported")
    layer = AvgPool2d(kernel, strides, sym, ceil_mode=bool(attrs.get("ceil_mode", 0)),
                      count_include_pad=include_pad, check_geometry=False)
    return _with_extra_pad(layer, extra), [x]


@register_op("LpPool")
def lp_pool(ctx, node, attrs):
    from ..nn.pooling import LPPool2d

    x = _variable_input(ctx, node)
    kernel, strides, dilations = _window(attrs, "LpPool")
    if dilations != (1, 1):
        _unsupported(f"LpPool with dilations {dilations} is not supported")
    sym, extra = _spatial_padding(ctx, node, attrs, kernel, strides, dilations, x, "LpPool")
    top, left = sym
    pads = (top + extra[0], left + extra[1], top + extra[2], left + extra[3])  # zeros add nothing to sum |x|^p
    layer = LPPool2d(float(attrs.get("p", 2)), kernel, strides, ceil_mode=bool(attrs.get("ceil_mode", 0)),
                     check_geometry=False)
    return _with_extra_pad(layer, pads), [x]


@register_op("GlobalAveragePool")
def global_average_pool(ctx, node, attrs):
    from ..nn.pooling import AdaptiveAvgPool2d

    return AdaptiveAvgPool2d((1, 1))


@register_op("GlobalMaxPool")
def global_max_pool(ctx, node, attrs):
    return GlobalMaxPool()


@register_op("LRN")
def lrn(ctx, node, attrs):
    size = int(attrs["size"])
    if size % 2 == 0:
        _unsupported(f"LRN with an even size {size} (its window is placed differently from PyTorch's)")
    return LocalResponseNorm(size, float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)),
                             float(attrs.get("bias", 1.0)))


@register_op("BatchNormalization")
def batch_norm(ctx, node, attrs):
    x = _variable_input(ctx, node)
    if attrs.get("training_mode", 0):
        _unsupported("BatchNormalization with training_mode=1 is not supported (export the model in eval mode)")
    scale, bias, mean, var = (_weight(ctx, node, i, what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    rank = len(ctx.shape(x)) + 1
    layer_type = {4: BatchNorm2d, 2: BatchNorm1d, 3: BatchNorm1d}.get(rank)
    if layer_type is None:
        _unsupported(f"BatchNormalization of a {rank}-D input is not supported")
    # ONNX's momentum weighs the old running value; PyTorch's (and cnnkit's) weighs the new batch
    layer = layer_type(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)),
                       momentum=1.0 - float(attrs.get("momentum", 0.9)), dtype=scale.dtype)
    layer.weight.data, layer.bias.data = scale.copy(), bias.astype(scale.dtype)
    layer.running_mean, layer.running_var = mean.astype(scale.dtype), var.astype(scale.dtype)
    return layer, [x]


# ---- shape manipulation -------------------------------------------------------------------------


@register_fold("Flatten")
def _fold_flatten(ctx, attrs, x):
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@register_op("Flatten")
def flatten(ctx, node, attrs):
    x = _variable_input(ctx, node)
    rank = len(ctx.shape(x)) + 1
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 1:
        return Flatten(), [x]
    _unsupported(f"Flatten with axis={axis} merges the batch axis with others (only axis=1 keeps it)")


def _reshape_target(ctx, node, attrs):
    if ctx.opset < 5:
        return np.asarray(attrs["shape"])
    return _weight(ctx, node, 1, "shape")


@register_fold("Reshape")
def _fold_reshape(ctx, attrs, x, shape):
    shape = [x.shape[i] if s == 0 and not attrs.get("allowzero", 0) else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@register_op("Reshape")
def reshape(ctx, node, attrs):
    x = _variable_input(ctx, node)
    return Reshape(_reshape_target(ctx, node, attrs), allowzero=bool(attrs.get("allowzero", 0))), [x]


@register_fold("Concat")
def _fold_concat(ctx, attrs, *values):
    return np.concatenate([np.asarray(v) for v in values], axis=int(attrs["axis"]))


@register_op("Concat")
def concat(ctx, node, attrs):
    inputs = [n for n in node.input if n]
    if any(ctx.is_const(n) for n in inputs):
        _unsupported("Concat of computed tensors with constants is not supported")
    return Cat(int(attrs["axis"])), inputs


def _pads_and_value(ctx, node, attrs):
    if ctx.opset < 11:
        return list(attrs["pads"]), float(attrs.get("value", 0.0)), attrs.get("mode", b"constant")
    pads = list(_weight(ctx, node, 1, "pads"))
    value = _weight(ctx, node, 2, "constant_value")
    axes = _weight(ctx, node, 3, "axes")
    if axes is not None:
        rank = len(ctx.shape(node.input[0])) + 1
        full = [0] * (2 * rank)
        for k, axis in enumerate(axes):
            axis = int(axis) + rank if axis < 0 else int(axis)
            full[axis], full[axis + rank] = pads[k], pads[k + len(axes)]
        pads = full
    return pads, 0.0 if value is None else float(value), attrs.get("mode", b"constant")


@register_op("Pad")
def pad(ctx, node, attrs):
    x = _variable_input(ctx, node)
    pads, value, mode = _pads_and_value(ctx, node, attrs)
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode != "constant":
        _unsupported(f"Pad mode {mode!r} (only 'constant' is supported)")
    if any(p < 0 for p in pads):
        _unsupported(f"Pad with negative pads (cropping) {pads}")
    return ConstantPad(pads, value), [x]


# ---- constants and the shape arithmetic exporters emit ------------------------------------------


@register_op("Constant")
def constant(ctx, node, attrs):
    from onnx import numpy_helper

    if "value" in attrs:
        return Folded(numpy_helper.to_array(attrs["value"]))
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return Folded(np.asarray(attrs[key], dtype))
    _unsupported(f"Constant with attributes {sorted(attrs)}")


@register_op("ConstantOfShape")
def constant_of_shape(ctx, node, attrs):
    _unsupported("ConstantOfShape needs a constant shape input")


@register_fold("ConstantOfShape")
def _fold_constant_of_shape(ctx, attrs, shape):
    from onnx import numpy_helper

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    return np.full(tuple(int(s) for s in shape), value.reshape(-1)[0], dtype=value.dtype)


@register_op("Shape")
def shape(ctx, node, attrs):
    """One sample's static shape, with the batch axis as 0 (``Reshape``'s "copy this axis")."""
    full = np.array((0,) + tuple(ctx.shape(node.input[0])), dtype=np.int64)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return Folded(full[start:None if end is None else int(end)])


@register_fold("Gather")
def _fold_gather(ctx, attrs, data, indices):
    return np.take(data, indices, axis=int(attrs.get("axis", 0)))


def _axes(ctx, attrs, axes_input):
    if ctx.opset >= 13:
        return None if axes_input is None else [int(a) for a in np.asarray(axes_input).reshape(-1)]
    return None if "axes" not in attrs else list(attrs["axes"])


@register_fold("Unsqueeze")
def _fold_unsqueeze(ctx, attrs, data, axes=None):
    axes = _axes(ctx, attrs, axes)
    rank = data.ndim + len(axes)
    for a in sorted(a + rank if a < 0 else a for a in axes):
        data = np.expand_dims(data, a)
    return data


@register_fold("Squeeze")
def _fold_squeeze(ctx, attrs, data, axes=None):
    axes = _axes(ctx, attrs, axes)
    return np.squeeze(data) if axes is None else np.squeeze(data, axis=tuple(axes))


@register_fold("Cast")
def _fold_cast(ctx, attrs, data):
    from onnx import helper

    return data.astype(helper.tensor_dtype_to_np_dtype(int(attrs["to"])))


@register_fold("Slice")
def _fold_slice(ctx, attrs, data, starts=None, ends=None, axes=None, steps=None):
    if ctx.opset < 10:
        starts, ends, axes = attrs["starts"], attrs["ends"], attrs.get("axes")
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    index = [slice(None)] * data.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        index[int(a)] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


@register_op("Slice")
def slice_(ctx, node, attrs):
    x = _variable_input(ctx, node)
    if ctx.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _weight(ctx, node, 1, "starts"), _weight(ctx, node, 2, "ends")
        axes, steps = _weight(ctx, node, 3, "axes"), _weight(ctx, node, 4, "steps")
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    return Slice(starts, ends, axes, steps), [x]
