"""Exporters of the cnnkit layers and containers (one function per type; see :mod:`.exporter`)."""
from __future__ import annotations

import math

import numpy as np

from ..functional.pool import adaptive_output_size, adaptive_pool_matrix
from ..functional.shapes import pair
from ..nn.activation import Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from ..nn.containers import Concat, Residual, Sequential
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.flatten import Flatten
from ..nn.graph import Add, Cat, Graph, Mul
from ..nn.linear import Linear
from ..nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from ..nn.pooling import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from .exporter import join, register_exporter
from .layers import AddConstant, Clip, ConstantPad, GlobalMaxPool, MatMulConstant, MulConstant, Reshape, Slice, Sub

# ---- containers ---------------------------------------------------------------------------------


@register_exporter(Sequential)
def sequential(ctx, module, x, prefix):
    for name, child in module.named_children():
        x = ctx.export(child, x, join(prefix, name))
    return x


@register_exporter(Residual)
def residual(ctx, module, x, prefix):
    body = ctx.export(module.body, x, join(prefix, "body"))
    skip = x if module.shortcut is None else ctx.export(module.shortcut, x, join(prefix, "shortcut"))
    return ctx.node("Add", [body, skip], join(prefix, "add"), shape=ctx.shape(body))


@register_exporter(Concat)
def concat(ctx, module, x, prefix):
    outputs = [ctx.export(child, x, join(prefix, name)) for name, child in module.named_children()]
    return ctx.node("Concat", outputs, join(prefix, "concat"), axis=1)


@register_exporter(Graph)
def graph(ctx, module, x, prefix):
    outputs = module._outputs()
    if len(outputs) != 1:
        raise NotImplementedError(f"ONNX export: a Graph with several outputs {outputs} is not supported")
    names = {module.input_name: x}
    for node in module.nodes:
        child = getattr(module, node.name)
        args = [names[t] for t in node.inputs]
        child_prefix = join(prefix, node.name)
        if len(args) == 1:
            names[node.output] = ctx.export(child, args[0], child_prefix)
        else:
            names[node.output] = _export_multi(ctx, child, args, child_prefix)
    return names[outputs[0]]


def _export_multi(ctx, module, args, prefix):
    shape = tuple(module.output_shape(*[ctx.shape(a) for a in args]))
    if isinstance(module, Add):
        op, attrs = ("Sum" if len(args) > 2 else "Add"), {}
    elif isinstance(module, Mul):
        op, attrs = "Mul", {}
    elif isinstance(module, Sub):
        op, attrs = "Sub", {}
    elif isinstance(module, Cat):
        op, attrs = "Concat", {"axis": module.dim}
    else:
        raise NotImplementedError(f"ONNX export: no exporter for the multi-input {type(module).__name__} ({prefix!r})")
    return ctx.node(op, args, prefix or op, shape=shape, **attrs)


# ---- layers -------------------------------------------------------------------------------------


@register_exporter(Conv2d)
def conv2d(ctx, m, x, prefix):
    inputs = [x, ctx.constant(join(prefix, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(ctx.constant(join(prefix, "bias"), m.bias.data))
    ph, pw = m.padding
    return ctx.node("Conv", inputs, join(prefix, "Conv"), kernel_shape=list(m.kernel_size),
                    strides=list(m.stride), pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)


@register_exporter(Linear)
def linear(ctx, m, x, prefix):
    inputs = [x, ctx.constant(join(prefix, "weight"), m.weight.data)]
    if m.bias is not None:
        inputs.append(ctx.constant(join(prefix, "bias"), m.bias.data))
    return ctx.node("Gemm", inputs, join(prefix, "Gemm"), transB=1)


@register_exporter(BatchNorm1d, BatchNorm2d)
def batch_norm(ctx, m, x, prefix):
    if not m.track_running_stats:
        raise NotImplementedError(
            f"ONNX export: {type(m).__name__} {prefix!r} has no running statistics "
            "(track_running_stats=False), so its inference output depends on the batch"
        )
    c = m.num_features
    scale = m.weight.data if m.weight is not None else np.ones(c)
    bias = m.bias.data if m.bias is not None else np.zeros(c)
    inputs = [x] + [ctx.constant(join(prefix, n), v) for n, v in
                    (("weight", scale), ("bias", bias), ("running_mean", m.running_mean),
                     ("running_var", m.running_var))]
    momentum = 0.9 if m.momentum is None else 1.0 - m.momentum
    return ctx.node("BatchNormalization", inputs, join(prefix, "BatchNormalization"), epsilon=m.eps,
                    momentum=momentum)


@register_exporter(LocalResponseNorm)
def lrn(ctx, m, x, prefix):
    if m.size % 2 == 0:
        raise NotImplementedError(f"ONNX export: LRN {prefix!r} with an even size {m.size} places its window "
                                  "differently in ONNX than in PyTorch/cnnkit")
    return ctx.node("LRN", [x], join(prefix, "LRN"), size=m.size, alpha=m.alpha, beta=m.beta, bias=m.k)


def _simple(op_type: str, **attrs):
    def export(ctx, m, x, prefix):
        return ctx.node(op_type, [x], join(prefix, op_type), **{k: f(m) for k, f in attrs.items()})

    return export


register_exporter(ReLU)(_simple("Relu"))
register_exporter(Tanh)(_simple("Tanh"))
register_exporter(Sigmoid)(_simple("Sigmoid"))
register_exporter(LeakyReLU)(_simple("LeakyRelu", alpha=lambda m: m.negative_slope))
register_exporter(Softmax)(_simple("Softmax", axis=lambda m: m.dim))
register_exporter(LogSoftmax)(_simple("LogSoftmax", axis=lambda m: m.dim))
register_exporter(GlobalMaxPool)(_simple("GlobalMaxPool"))


@register_exporter(Identity, Dropout)
def identity(ctx, m, x, prefix):
    return x  # inference graph: dropout is the identity


@register_exporter(Flatten)
def flatten(ctx, m, x, prefix):
    rank = len(ctx.shape(x)) + 1
    start = m.start_dim + rank if m.start_dim < 0 else m.start_dim
    end = m.end_dim + rank if m.end_dim < 0 else m.end_dim
    if start == 1 and end == rank - 1:
        return ctx.node("Flatten", [x], join(prefix, "Flatten"), axis=1)
    shape = ctx.shape(x)
    target = (0,) * start + (-1,) + tuple(shape[end:])  # shape excludes the batch: index end = axis end+1
    return _reshape(ctx, x, target, prefix)


def _reshape(ctx, x, target, prefix):
    shape = ctx.constant(join(prefix, "shape"), np.array(target, np.int64))
    return ctx.node("Reshape", [x, shape], join(prefix, "Reshape"))


def _pool_attrs(m, layer: str):
    k = pair(m.kernel_size, "kernel_size", layer)
    s = k if m.stride is None else pair(m.stride, "stride", layer)
    p = pair(getattr(m, "padding", 0), "padding", layer)
    attrs = dict(kernel_shape=list(k), strides=list(s), pads=[p[0], p[1], p[0], p[1]])
    return attrs


@register_exporter(MaxPool2d)
def max_pool(ctx, m, x, prefix):
    attrs = _pool_attrs(m, "MaxPool2d")
    dilation = pair(m.dilation, "dilation", "MaxPool2d")
    if ctx.opset >= 10:
        attrs.update(dilations=list(dilation), ceil_mode=int(m.ceil_mode))
    elif m.ceil_mode or dilation != (1, 1):
        raise NotImplementedError(f"ONNX export: MaxPool {prefix!r} with ceil_mode/dilation needs opset >= 10")
    return ctx.node("MaxPool", [x], join(prefix, "MaxPool"), **attrs)


@register_exporter(AvgPool2d)
def avg_pool(ctx, m, x, prefix):
    if m.divisor_override is not None:
        raise NotImplementedError(f"ONNX export: AvgPool2d {prefix!r} with divisor_override has no ONNX equivalent")
    attrs = _pool_attrs(m, "AvgPool2d")
    attrs["count_include_pad"] = int(m.count_include_pad)
    if ctx.opset >= 10:
        attrs["ceil_mode"] = int(m.ceil_mode)
    elif m.ceil_mode:
        raise NotImplementedError(f"ONNX export: AvgPool {prefix!r} with ceil_mode needs opset >= 10")
    return ctx.node("AveragePool", [x], join(prefix, "AveragePool"), **attrs)


@register_exporter(LPPool2d)
def lp_pool(ctx, m, x, prefix):
    if float(m.norm_type) != int(m.norm_type) or math.isinf(m.norm_type):
        raise NotImplementedError(f"ONNX export: LpPool's p is an integer; {prefix!r} has norm_type {m.norm_type}")
    attrs = _pool_attrs(m, "LPPool2d")
    attrs.pop("pads")
    if m.ceil_mode:
        if ctx.opset < 18:
            raise NotImplementedError(f"ONNX export: LpPool {prefix!r} with ceil_mode needs opset >= 18")
        attrs["ceil_mode"] = 1
    return ctx.node("LpPool", [x], join(prefix, "LpPool"), p=int(m.norm_type), **attrs)


@register_exporter(AdaptiveAvgPool2d)
def adaptive_avg_pool(ctx, m, x, prefix):
    c, h, w = ctx.shape(x)
    oh, ow = adaptive_output_size((h, w), m.output_size, "AdaptiveAvgPool2d")
    if (oh, ow) == (1, 1):
        return ctx.node("GlobalAveragePool", [x], join(prefix, "GlobalAveragePool"))
    if h % oh == 0 and w % ow == 0:  # equal bins: a plain average pool
        k = [h // oh, w // ow]
        return ctx.node("AveragePool", [x], join(prefix, "AveragePool"), kernel_shape=k, strides=k)
    # general bins: y = P_h @ x @ P_w^T with the averaging matrices (exact, any sizes)
    p_w = ctx.constant(join(prefix, "pool_w"), adaptive_pool_matrix(w, ow, np.float64).T)
    p_h = ctx.constant(join(prefix, "pool_h"), adaptive_pool_matrix(h, oh, np.float64))
    rows = ctx.node("MatMul", [x, p_w], join(prefix, "MatMul_w"), shape=(c, h, ow))
    return ctx.node("MatMul", [p_h, rows], join(prefix, "MatMul_h"))


# ---- the ONNX-specific layers (so imported graphs export back) ----------------------------------


@register_exporter(AddConstant)
def add_constant(ctx, m, x, prefix):
    return ctx.node("Add", [x, ctx.constant(join(prefix, "bias"), m._value())], join(prefix, "Add"))


@register_exporter(MulConstant)
def mul_constant(ctx, m, x, prefix):
    return ctx.node("Mul", [x, ctx.constant(join(prefix, "weight"), m._value())], join(prefix, "Mul"))


@register_exporter(MatMulConstant)
def matmul_constant(ctx, m, x, prefix):
    w = ctx.constant(join(prefix, "weight"), m._value())
    return ctx.node("MatMul", [w, x] if m.constant_on_left else [x, w], join(prefix, "MatMul"))


@register_exporter(Reshape)
def reshape(ctx, m, x, prefix):
    if m.allowzero:
        raise NotImplementedError("ONNX export of Reshape(allowzero=True) is not supported")
    return _reshape(ctx, x, m.shape, prefix)


@register_exporter(ConstantPad)
def constant_pad(ctx, m, x, prefix):
    pads = ctx.constant(join(prefix, "pads"), np.array(m.pads, np.int64))
    value = ctx.constant(join(prefix, "value"), np.array(m.value))
    return ctx.node("Pad", [x, pads, value], join(prefix, "Pad"), mode="constant")


@register_exporter(Slice)
def slice_(ctx, m, x, prefix):
    inputs = [x] + [ctx.constant(join(prefix, n), np.array(v, np.int64)) for n, v in
                    (("starts", m.starts), ("ends", m.ends), ("axes", m.axes), ("steps", m.steps))]
    return ctx.node("Slice", inputs, join(prefix, "Slice"))


@register_exporter(Clip)
def clip(ctx, m, x, prefix):
    inputs = [x, "", ""]
    if m.min is not None:
        inputs[1] = ctx.constant(join(prefix, "min"), np.array(m.min))
    if m.max is not None:
        inputs[2] = ctx.constant(join(prefix, "max"), np.array(m.max))
    while inputs[-1] == "":
        inputs.pop()
    return ctx.node("Clip", inputs, join(prefix, "Clip"))


from . import export_zoo  # noqa: E402,F401  (exporters of the zoo's custom blocks)
