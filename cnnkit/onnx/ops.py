"""Importer rules for the layers with weights, pooling, normalisation and dropout (opsets 7 to 22).

Builders read the node's attributes (with the defaults of the ONNX spec), take weights from
constant inputs and return a cnnkit layer. Where an ``nn`` layer computes exactly what the node
does it is used (so imported graphs export back, and ``summary`` knows them); ONNX-only
semantics get the layers of :mod:`.pool_layers`, :mod:`.norm_layers` and friends.
Element-wise and shape operators are in :mod:`.ops_math` and :mod:`.ops_shape`.
"""
from __future__ import annotations

import numpy as np

from ..nn.containers import Sequential
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.linear import Linear
from ..nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from ..nn.pooling import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from .layers import AddConstant, ConstantPad, GlobalMaxPool
from .math_layers import MatMul, Reduce
from .norm_layers import InstanceNorm
from .op_helpers import NoInit, int_list, own, ownable, spatial_pads, symmetric_split, unsupported, variable_input, window
from .pool_layers import OnnxAveragePool, OnnxLpPool, OnnxMaxPool
from .registry import register_op
from .tensor_layers import Squeeze, Transpose, Unsqueeze

# ---- convolution and dense layers ---------------------------------------------------------------


def _with_extra_pad(module, extra, value: float = 0.0):
    """Prefix ``module`` with the asymmetric part of 2-D padding, when there is one."""
    if not any(extra):
        return module
    top, left, bottom, right = extra
    return Sequential(ConstantPad((0, 0, top, left, 0, 0, bottom, right), value), module)


@register_op("Conv")
def conv(ctx, node, attrs):
    """A ``Conv2d`` (``check_geometry=False``: the model was defined elsewhere); a 1-D convolution
    runs as a 2-D one over ``(N, C, 1, L)``; asymmetric pads become a ``ConstantPad`` in front."""
    x = variable_input(ctx, node)
    if ctx.input(node, 1) is None:
        raise ValueError("the weight (input 1) is missing")
    shape, w_shape = ctx.shape(x), ctx.shape(node.input[1])  # declared shapes: checked before any data is read
    if len(w_shape) not in (3, 4) or len(shape) != len(w_shape):
        unsupported(f"only 1-D and 2-D convolutions (3-D or 4-D input and weight) are supported, got input {shape} "
                    f"and weight {w_shape}")
    one_d = len(w_shape) == 3
    kernel = tuple(int_list(attrs.get("kernel_shape", w_shape[2:]), "kernel_shape"))
    if kernel != tuple(w_shape[2:]):
        raise ValueError(f"kernel_shape {kernel} contradicts the weight's spatial shape {tuple(w_shape[2:])} "
                         f"(weight {tuple(w_shape)}), as onnxruntime also refuses")
    groups = int(attrs.get("group", 1))
    if groups < 1 or w_shape[0] % groups:
        raise ValueError(f"group={groups} must be >= 1 and divide the {w_shape[0]} output channels")
    if w_shape[1] * groups != shape[1]:
        raise ValueError(f"the weight {tuple(w_shape)} with group={groups} expects {w_shape[1] * groups} "
                         f"input channels, the input {shape} has {shape[1]}")
    if ctx.input(node, 2) is not None and tuple(ctx.shape(node.input[2])) != (w_shape[0],):
        raise ValueError(f"the bias of shape {tuple(ctx.shape(node.input[2]))} does not match the {w_shape[0]} "
                         "output channels")
    weight = ctx.require_const(node, 1, "weight")
    bias = ctx.require_const(node, 2, "bias")
    strides = tuple(int_list(attrs.get("strides", (1,) * len(kernel)), "strides"))
    dilations = tuple(int_list(attrs.get("dilations", (1,) * len(kernel)), "dilations"))
    pads = spatial_pads(ctx, attrs, kernel, strides, dilations, x, "Conv")
    if one_d:
        kernel, strides, dilations = (1,) + kernel, (1,) + strides, (1,) + dilations
        pads = [0, pads[0], 0, pads[1]]
        weight = weight.reshape(weight.shape[:2] + (1,) + weight.shape[2:])
    sym, extra = symmetric_split(pads)
    layer = Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, stride=strides, padding=sym,
                   dilation=dilations, groups=groups, bias=bias is not None, check_geometry=False,
                   dtype=weight.dtype, generator=NoInit())
    if one_d:  # a (out, in, 1, k) view of the file's weight: copied into the layer's own array
        layer.weight.data[...] = weight
    else:
        layer.weight.data = own(ctx, node.input[1], weight)
    if bias is not None:
        layer.bias.data = own(ctx, node.input[2], bias.astype(weight.dtype, copy=False))
    module = _with_extra_pad(layer, extra)
    if one_d:
        module = Sequential(Unsqueeze([2]), module, Squeeze([2]))
    return module, [x]


def _linear(weight, bias, dtype, copy: bool = False):
    """A ``Linear`` holding ``weight`` (out, in) and ``bias`` without drawing a random init. With
    ``copy`` (a transposed or scaled weight), the values are written into the layer's own array
    rather than into a new one beside it."""
    layer = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=dtype, generator=NoInit())
    if copy:
        layer.weight.data[...] = weight
    else:
        layer.weight.data = weight
    if bias is not None:
        layer.bias.data = bias
    return layer


@register_op("Gemm")
def gemm(ctx, node, attrs):
    """``Y = alpha * A' B' + beta * C``: a ``Linear`` layer when ``B`` (and ``C``) are constants,
    preceded by a transpose when ``transA`` (the batch axis is then the contracted one)."""
    a = variable_input(ctx, node)
    if ctx.rank(a) != 2:
        raise ValueError(f"Gemm takes 2-D inputs, A has shape {ctx.shape(a)}")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    trans_a, trans_b = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    if not ctx.is_const(node.input[1]):  # a product of two computed tensors: plain A @ B only
        if not (trans_a or trans_b or alpha != 1 or ctx.input(node, 2) is not None):
            return MatMul(), [a, variable_input(ctx, node, 1)]
    b = ctx.require_const(node, 1, "B matrix")
    if b.ndim != 2:
        raise ValueError(f"Gemm takes a 2-D B, got shape {b.shape}")
    weight = b if trans_b else b.T  # Linear's (out, in) layout
    weight = weight * alpha if alpha != 1 else weight
    # kept as it is when it is B itself and B is the layer's to own, or a fresh product; else
    # (a transposed view, a shared B, another dtype) copied into the layer's own array
    keep = (weight.dtype == ctx.dtype and weight.flags.c_contiguous
            and (ownable(ctx, node.input[1], b) if weight is b else weight.flags.owndata))
    in_features = ctx.shape(a)[0 if trans_a else 1]
    if weight.shape[1] != in_features:
        raise ValueError(f"A {ctx.shape(a)}{' transposed' if trans_a else ''} and B {b.shape}"
                         f"{' transposed' if trans_b else ''} do not multiply")
    c = ctx.require_const(node, 2, "C bias")
    rows = ctx.shape(a)[1 if trans_a else 0]
    bias, per_row = None, None
    if c is not None:
        c = np.asarray(c * beta if beta != 1 else c, dtype=ctx.dtype)
        full = np.broadcast_shapes(c.shape, (rows, weight.shape[0]))  # C broadcasts to (M, N)
        if c.ndim == 2 and c.shape[0] != 1:  # one bias row per sample
            per_row = AddConstant(np.broadcast_to(c, full).copy(), ctx.is_trainable(node.input[2]))
        else:
            bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)).astype(ctx.dtype)
    layer = _linear(weight, bias, ctx.dtype, copy=not keep)
    steps = ([Transpose((1, 0))] if trans_a else []) + [layer] + ([per_row] if per_row is not None else [])
    return (steps[0] if len(steps) == 1 else Sequential(*steps)), [a]


# ---- pooling ------------------------------------------------------------------------------------


def _is_float(ctx, name) -> bool:
    return np.issubdtype(ctx.dtype_of(name), np.floating)


def _pool_setup(ctx, node, attrs, layer: str):
    x = variable_input(ctx, node)
    rank = ctx.rank(x) - 2
    if rank not in (1, 2):
        unsupported(f"only 1-D and 2-D pooling is supported, the input has shape {ctx.shape(x)}")
    kernel, strides, dilations = window(attrs, layer, rank)
    pads = spatial_pads(ctx, attrs, kernel, strides, dilations, x, layer)
    sym, extra = symmetric_split(pads)
    torch_like = (rank == 2 and not any(extra) and all(p <= k // 2 for p, k in zip(sym, kernel))
                  and _is_float(ctx, x))
    return x, kernel, strides, dilations, pads, sym, torch_like


@register_op("MaxPool")
def max_pool(ctx, node, attrs):
    x, kernel, strides, dilations, pads, sym, torch_like = _pool_setup(ctx, node, attrs, "MaxPool")
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    with_indices = len(node.output) > 1 and node.output[1] != ""
    if torch_like and not with_indices:
        return MaxPool2d(kernel, strides, sym, dilations, ceil_mode=ceil_mode, check_geometry=False), [x]
    return OnnxMaxPool(kernel, strides, pads, dilations, ceil_mode, return_indices=with_indices,
                       storage_order=int(attrs.get("storage_order", 0))), [x]


@register_op("AveragePool")
def average_pool(ctx, node, attrs):
    x, kernel, strides, dilations, pads, sym, torch_like = _pool_setup(ctx, node, attrs, "AveragePool")
    include_pad = bool(attrs.get("count_include_pad", 0))  # ONNX's default is 0, PyTorch's True
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if torch_like and dilations == (1, 1):
        return AvgPool2d(kernel, strides, sym, ceil_mode=ceil_mode, count_include_pad=include_pad,
                         check_geometry=False), [x]
    return OnnxAveragePool(kernel, strides, pads, dilations, ceil_mode, include_pad), [x]


@register_op("LpPool")
def lp_pool(ctx, node, attrs):
    x, kernel, strides, dilations, pads, sym, torch_like = _pool_setup(ctx, node, attrs, "LpPool")
    p = float(attrs.get("p", 2))
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    # PyTorch's LPPool2d (exportable, known to summary) agrees with ONNX's |x|^p for even integer
    # p, without padding, dilation or ceil-mode rescaling.
    if torch_like and p == int(p) and int(p) % 2 == 0 and not any(pads) and dilations == (1, 1) and not ceil_mode:
        return LPPool2d(p, kernel, strides, check_geometry=False), [x]
    return OnnxLpPool(p, kernel, strides, pads, dilations, ceil_mode), [x]


@register_op("GlobalAveragePool")
def global_average_pool(ctx, node, attrs):
    x = variable_input(ctx, node)
    if ctx.rank(x) == 4:
        return AdaptiveAvgPool2d((1, 1)), [x]
    if ctx.rank(x) < 3:
        raise ValueError(f"GlobalAveragePool needs (N, C, *spatial), got {ctx.shape(x)}")
    return Reduce("mean", tuple(range(2, ctx.rank(x))), keepdims=True), [x]


@register_op("GlobalMaxPool")
def global_max_pool(ctx, node, attrs):
    return GlobalMaxPool(), [variable_input(ctx, node)]


@register_op("GlobalLpPool")
def global_lp_pool(ctx, node, attrs):
    x = variable_input(ctx, node)
    p = float(attrs.get("p", 2))
    kind = {1.0: "l1", 2.0: "l2"}.get(p)
    if kind is None:
        unsupported(f"GlobalLpPool with p={p} (only p = 1 or 2)")
    return Reduce(kind, tuple(range(2, ctx.rank(x))), keepdims=True), [x]


# ---- normalisation and dropout ------------------------------------------------------------------


@register_op("LRN")
def lrn(ctx, node, attrs):
    x = variable_input(ctx, node)
    size = attrs.get("size")
    if size is None:
        raise ValueError("missing required attribute 'size'")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be a positive int, got {size}")
    if size % 2 == 0:
        unsupported(f"LRN with an even size {size} (ONNX centres the window differently from PyTorch's)")
    if ctx.rank(x) < 3:
        raise ValueError(f"LRN needs (N, C, *spatial), got {ctx.shape(x)}")
    # The kernel visits at most C - 1 channel offsets on each side, so a huge size costs nothing more.
    return LocalResponseNorm(size, float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)),
                             float(attrs.get("bias", 1.0))), [x]


@register_op("BatchNormalization")
def batch_norm(ctx, node, attrs):
    x = variable_input(ctx, node)
    if attrs.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        unsupported("BatchNormalization in training mode (training_mode=1 or running-statistics outputs); "
                    "export the model in eval mode")
    if not attrs.get("spatial", 1):
        unsupported("BatchNormalization with spatial=0 (statistics per position)")
    scale, bias, mean, var = (ctx.require_const(node, i, what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    rank = ctx.rank(x)
    layer_type = {4: BatchNorm2d, 2: BatchNorm1d, 3: BatchNorm1d}.get(rank)
    if layer_type is None:
        unsupported(f"BatchNormalization of a {rank}-D input (only 2-D, 3-D and 4-D)")
    channels = ctx.shape(x)[1]
    for what, value in (("scale", scale), ("bias", bias), ("mean", mean), ("variance", var)):
        if value is None or tuple(value.shape) != (channels,):
            raise ValueError(f"the {what} must have shape ({channels},), got "
                             f"{None if value is None else tuple(value.shape)}")
    # ONNX's momentum weighs the old running value; PyTorch's (and cnnkit's) weighs the new batch
    layer = layer_type(channels, eps=float(attrs.get("epsilon", 1e-5)),
                       momentum=1.0 - float(attrs.get("momentum", 0.9)), dtype=ctx.dtype)
    layer.weight.data, layer.bias.data = own(ctx, node.input[1], scale), own(ctx, node.input[2], bias)
    layer.running_mean, layer.running_var = np.array(mean, copy=True), np.array(var, copy=True)
    return layer, [x]


@register_op("InstanceNormalization")
def instance_norm(ctx, node, attrs):
    x = variable_input(ctx, node)
    scale, bias = ctx.require_const(node, 1, "scale"), ctx.require_const(node, 2, "bias")
    channels = ctx.shape(x)[1] if ctx.rank(x) >= 3 else None
    if channels is None or scale.shape != (channels,) or bias.shape != (channels,):
        raise ValueError(f"InstanceNormalization needs (N, C, *spatial) and (C,) scale and bias, got input "
                         f"{ctx.shape(x)}, scale {scale.shape}, bias {bias.shape}")
    return InstanceNorm(scale, bias, float(attrs.get("epsilon", 1e-5))), [x]


class DropoutWithMask(Dropout):
    """``Dropout`` that also returns its boolean keep-mask (ONNX ``Dropout``'s second output);
    the mask has no gradient.

    Shape:
        input (N, *) -> (output (N, *), mask (N, *))
    """

    extra_output_dtype = np.dtype(bool)

    def forward(self, x):
        y = super().forward(x)
        keep = self._cache[0] if self._cache is not None else None
        if keep is None:
            keep = np.ones(x.shape, dtype=bool) if (not self.training or self.p == 0) else (y != 0) | (x == 0)
        return y, keep

    def backward(self, dys, input_grad: bool = True):
        dy = dys[0] if isinstance(dys, tuple) else dys
        if dy is None:
            self._restore()
            return None
        return super().backward(dy, input_grad)

    def output_shape(self, input_shape):
        return (tuple(input_shape), tuple(input_shape))

    def onnx_export(self, ctx, x, prefix):
        # The inference graph: from opset 12 ONNX's Dropout outside training is the identity with an
        # all-true mask (before, that mask is not defined: onnxruntime's is all false).
        ctx.require_opset(12, f"Dropout {prefix!r} with its mask output")
        ratio = ctx.constant(ctx.join(prefix, "ratio"), np.array(self.p), like=x)
        return ctx.node_outputs("Dropout", [x, ratio], ctx.join(prefix, "Dropout"), 2)


@register_op("Dropout")
def dropout(ctx, node, attrs):
    """A real ``Dropout`` layer (identity in eval mode), so that fine-tuning an import drops out."""
    x = variable_input(ctx, node)
    if ctx.opset < 12:
        ratio = attrs.get("ratio", 0.5)
    else:
        ratio = ctx.require_const(node, 1, "ratio")
        training = ctx.require_const(node, 2, "training_mode")
        if training is not None and bool(np.asarray(training)):
            unsupported("Dropout with training_mode=True at inference (its output is random)")
    ratio = 0.5 if ratio is None else float(np.asarray(ratio))
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if len(node.output) > 1 and node.output[1]:
        return DropoutWithMask(ratio), [x]
    return Dropout(ratio), [x]

