"""2-D convolution through oneDNN: forward, input gradient and weight (+ bias) gradient.

Same arguments, results and meaning as the NumPy reference :mod:`cnnkit.functional.conv`
(``conv2d_forward(x, weight, bias, stride, padding, dilation, groups) -> (y, cache)``,
``conv2d_backward(dy, cache, need_dx, need_dweight, need_dbias) -> (dx, dweight, dbias)``);
the reference is the definition, this is a faster way to compute it for float32.

How: oneDNN's direct convolution kernels (``brgconv``/``jit`` for AVX-512), chosen by giving the
primitive descriptors the activation layout (nhwc: channels-last) or ``any`` and the weights as
``any``. Plain ``nchw`` descriptors would make oneDNN fall back to an im2col GEMM, 3x slower. The
weight, kept by the layer in PyTorch's ``(F, C/groups, kh, kw)``, is reordered into the blocked
layout the kernel wants on each forward (it changes every step; it is small), and the weight
gradient is reordered back. Groups (depthwise included) are a 5-D weight ``(G, F/G, C/G, kh, kw)``.
Dilation ``d`` is oneDNN's ``d - 1``. ``relu=True`` applies ``max(y, 0)`` inside the kernel (a
post-op, used by inference fusion).

The cache keeps the input ``x`` (the weight gradient needs it), the weight and the forward
primitive; nothing else. Backward computes only what is asked: with ``need_dx=False`` (the first
layer of a training step) no backward-data primitive runs.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ..im2col import conv_geometry
from ..memory import LayerMemory
from . import library as L
from . import runtime as R
from .checks import all_finite, array_reason, first_reason, has_data, unavailable
from .layout import activation_tag, compute_tag, converted, empty_activation, plain, reorder_into


class ConvGeometry(NamedTuple):
    input_shape: tuple
    weight_shape: tuple
    output_shape: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int
    bias: bool


@functools.lru_cache(maxsize=1024)  # a model asks the same few dozen geometries at every step
def geometry(x_shape, weight_shape, has_bias, stride, padding, dilation, groups) -> ConvGeometry:
    n, c, h, w = x_shape
    f = weight_shape[0]
    kernel, stride, padding, dilation, (oh, ow) = conv_geometry((h, w), weight_shape[2:], stride, padding, dilation)
    return ConvGeometry(tuple(x_shape), tuple(weight_shape), (n, f, oh, ow), stride, padding, dilation,
                        int(groups), bool(has_bias))


def _weight_dims(g: ConvGeometry) -> tuple:
    f, cg, kh, kw = g.weight_shape
    if g.groups == 1:
        return g.weight_shape
    return (g.groups, f // g.groups, cg, kh, kw)


def _dnnl_geometry(g: ConvGeometry):
    """Strides, dilations (oneDNN counts the gaps: d - 1) and left/right padding as dnnl_dims_t."""
    return (R.dims(g.stride), R.dims(d - 1 for d in g.dilation), R.dims(g.padding), R.dims(g.padding))


def _right_padding(g: ConvGeometry):
    """Right/bottom padding that makes oneDNN's size formula give exactly our output size."""
    (h, w), (oh, ow) = g.input_shape[2:], g.output_shape[2:]
    kh, kw = g.weight_shape[2:]
    span_h, span_w = g.dilation[0] * (kh - 1) + 1, g.dilation[1] * (kw - 1) + 1
    return ((oh - 1) * g.stride[0] + span_h - h - g.padding[0], (ow - 1) * g.stride[1] + span_w - w - g.padding[1])


# Below this many multiply-adds a convolution runs on one OpenMP thread (about 0.1 ms of work on
# one core; see runtime.small_calls_on_one_thread).
SMALL_CONV_MACS = 1 << 23


def _macs(x_shape, weight_shape, bias=None, stride=1, padding=0, dilation=1, groups=1, *rest, **options) -> int:
    g = geometry(x_shape, weight_shape, False, stride, padding, dilation, groups)
    f, cg, kh, kw = weight_shape
    n, _, oh, ow = g.output_shape
    return n * f * oh * ow * cg * kh * kw


class _Forward:
    """The forward primitive of one geometry, and the reorders around it."""

    def __init__(self, g: ConvGeometry, fused_relu: bool):
        tag = compute_tag()
        self.key = ("conv", g, fused_relu, tag, activation_tag())
        src = R.MemoryDesc.from_tag(g.input_shape, tag)
        weights = R.MemoryDesc.from_tag(_weight_dims(g), L.TAG_ANY)
        bias = R.MemoryDesc.from_tag((g.output_shape[1],), L.TAG_A) if g.bias else None
        dst = R.MemoryDesc.from_tag(g.output_shape, tag)
        strides, dilates, pad_l, _ = _dnnl_geometry(g)
        self.pad_r = R.dims(_right_padding(g))
        self.attr = R.Attributes(("relu",) if fused_relu else ())
        self.pd = R.create_pd(
            "dnnl_convolution_forward_primitive_desc_create", R.engine(), L.FORWARD_TRAINING,
            L.CONVOLUTION_DIRECT, src.handle, weights.handle, bias.handle if bias else None, dst.handle,
            strides, dilates, pad_l, self.pad_r, self.attr.handle)
        self.src_md = self.pd.md(L.QUERY_SRC_MD)
        self.weights_md = self.pd.md(L.QUERY_WEIGHTS_MD)
        self.dst_md = self.pd.md(L.QUERY_DST_MD)
        self.bias_md = R.MemoryDesc.from_tag((g.output_shape[1],), L.TAG_A) if g.bias else None
        args = {L.ARG_SRC: self.src_md, L.ARG_WEIGHTS: self.weights_md, L.ARG_DST: self.dst_md}
        if g.bias:
            args[L.ARG_BIAS] = self.bias_md.handle
        self.primitive = R.Primitive(self.pd, args, "conv forward")
        wanted = R.MemoryDesc.from_tag(g.output_shape, activation_tag())  # referenced until compared
        self.dst_direct = R.md_equal(self.dst_md, wanted.handle)


class Conv2dOnednnCache(NamedTuple):
    """What backward needs: the input (for the weight gradient), the weight, the forward primitive."""

    x: object
    weight: object
    forward: _Forward
    geometry: ConvGeometry


def conv2d_decline(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    """Why oneDNN will not run this convolution (None when it will).

    With ``relu`` the inputs must be finite: a NaN output would become 0 in oneDNN's ReLU
    post-op, where PyTorch and the reference keep it (a min and a max of each input, real arrays
    only).
    """
    reason = first_reason(unavailable(), array_reason("input", x, (4,)), array_reason("weight", weight, (4,)),
                          array_reason("bias", bias))
    if reason:
        return reason
    if x.size == 0:
        return f"empty input {tuple(x.shape)}"
    if relu and any(has_data(a) and not all_finite(a) for a in (x, weight, bias) if a is not None):
        return "a fused ReLU on inputs holding NaN or inf (oneDNN's ReLU would turn NaN into 0)"
    return None


def _forward_macs(x, weight, *args, **options) -> int:
    return _macs(tuple(x.shape), tuple(weight.shape), *args, **options)


def _backward_macs(dy, cache, *flags, **options) -> int:
    g = cache.geometry
    return _macs(g.input_shape, g.weight_shape, None, g.stride, g.padding, g.dilation, g.groups)


@R.small_calls_on_one_thread(_forward_macs, SMALL_CONV_MACS)
def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    """Return ``(y, cache)``: oneDNN's convolution, same contract as the reference kernels of
    ``functional.conv`` (``workspace`` is not needed here).

    ``y`` comes back in the activation layout (channels-last by default, see
    :mod:`cnnkit.functional.onednn.layout`); ``relu`` applies ``max(y, 0)`` inside the kernel (a
    post-op: no second pass), the caller masks ``dy`` with ``y > 0`` before backward.

    Shape:
        x: (N, C, H, W), weight: (F, C/groups, kh, kw), bias: (F,) -> y: (N, F, out_h, out_w)
        out_h = floor((H + 2*ph - dh*(kh - 1) - 1) / sh) + 1, likewise out_w
    """
    g = geometry(tuple(x.shape), tuple(weight.shape), bias is not None, stride, padding, dilation, groups)
    fwd = R.cached(("conv_forward", g, bool(relu), compute_tag(), activation_tag()), lambda: _Forward(g, bool(relu)))
    x = plain(x)
    src = converted(x, fwd.src_md, (fwd.key, "src"))
    weights = converted(np.ascontiguousarray(weight), fwd.weights_md, (fwd.key, "weights"), _weight_dims(g))
    buffers = {L.ARG_SRC: src, L.ARG_WEIGHTS: weights}
    if bias is not None:
        buffers[L.ARG_BIAS] = np.ascontiguousarray(bias)
    y = empty_activation(g.output_shape)
    if fwd.dst_direct:
        buffers[L.ARG_DST] = y
        fwd.primitive.run(buffers)
    else:
        out = R.aligned_bytes(R.md_size(fwd.dst_md))
        buffers[L.ARG_DST] = out
        fwd.primitive.run(buffers)
        reorder_into(out, fwd.dst_md, y, (fwd.key, "dst"))
    return y, Conv2dOnednnCache(x, weight, fwd, g)


class _BackwardData:
    def __init__(self, fwd: _Forward, g: ConvGeometry):
        tag = compute_tag()
        self.key = ("conv_bwd_data", fwd.key)
        diff_src = R.MemoryDesc.from_tag(g.input_shape, tag)
        weights = R.MemoryDesc.from_tag(_weight_dims(g), L.TAG_ANY)
        diff_dst = R.MemoryDesc.from_tag(g.output_shape, tag)
        strides, dilates, pad_l, _ = _dnnl_geometry(g)
        self.attr = R.Attributes()
        self.pd = R.create_pd(
            "dnnl_convolution_backward_data_primitive_desc_create", R.engine(), L.CONVOLUTION_DIRECT,
            diff_src.handle, weights.handle, diff_dst.handle, strides, dilates, pad_l, fwd.pad_r,
            fwd.pd.handle, self.attr.handle)
        self.diff_src_md = self.pd.md(L.QUERY_DIFF_SRC_MD)
        self.weights_md = self.pd.md(L.QUERY_WEIGHTS_MD)
        self.diff_dst_md = self.pd.md(L.QUERY_DIFF_DST_MD)
        self.primitive = R.Primitive(self.pd, {L.ARG_DIFF_SRC: self.diff_src_md, L.ARG_WEIGHTS: self.weights_md,
                                               L.ARG_DIFF_DST: self.diff_dst_md}, "conv backward data")
        wanted = R.MemoryDesc.from_tag(g.input_shape, activation_tag())  # referenced until compared
        self.diff_src_direct = R.md_equal(self.diff_src_md, wanted.handle)


class _BackwardWeights:
    def __init__(self, fwd: _Forward, g: ConvGeometry):
        tag = compute_tag()
        self.key = ("conv_bwd_weights", fwd.key)
        src = R.MemoryDesc.from_tag(g.input_shape, tag)
        diff_weights = R.MemoryDesc.from_tag(_weight_dims(g), L.TAG_ANY)
        diff_bias = R.MemoryDesc.from_tag((g.output_shape[1],), L.TAG_A) if g.bias else None
        diff_dst = R.MemoryDesc.from_tag(g.output_shape, tag)
        strides, dilates, pad_l, _ = _dnnl_geometry(g)
        self.attr = R.Attributes()
        self.pd = R.create_pd(
            "dnnl_convolution_backward_weights_primitive_desc_create", R.engine(), L.CONVOLUTION_DIRECT,
            src.handle, diff_weights.handle, diff_bias.handle if diff_bias else None, diff_dst.handle,
            strides, dilates, pad_l, fwd.pad_r, fwd.pd.handle, self.attr.handle)
        self.src_md = self.pd.md(L.QUERY_SRC_MD)
        self.diff_weights_md = self.pd.md(L.QUERY_DIFF_WEIGHTS_MD)
        self.diff_dst_md = self.pd.md(L.QUERY_DIFF_DST_MD)
        self.diff_bias_md = R.MemoryDesc.from_tag((g.output_shape[1],), L.TAG_A) if g.bias else None
        args = {L.ARG_SRC: self.src_md, L.ARG_DIFF_WEIGHTS: self.diff_weights_md, L.ARG_DIFF_DST: self.diff_dst_md}
        if g.bias:
            args[L.ARG_DIFF_BIAS] = self.diff_bias_md.handle
        self.primitive = R.Primitive(self.pd, args, "conv backward weights")
        plain_weights = R.MemoryDesc.from_tag(_weight_dims(g), L.TAG_ABCDE if g.groups > 1 else L.TAG_ABCD)
        self.diff_weights_plain = R.md_equal(self.diff_weights_md, plain_weights.handle)
        self.to_plain = None if self.diff_weights_plain else R.reorder(self.diff_weights_md, plain_weights.handle)


@R.small_calls_on_one_thread(_backward_macs, SMALL_CONV_MACS)
def conv2d_backward(dy, cache: Conv2dOnednnCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None`` and is not computed.

    Shape:
        dy: (N, F, out_h, out_w) -> dx: (N, C, H, W), dweight: (F, C/groups, kh, kw), dbias: (F,)
    """
    x, weight, fwd, g = cache
    dy = plain(dy)
    dx = dweight = dbias = None
    diff_dst = data_md = None
    if need_dx:
        bwd = R.cached(("conv_backward_data", fwd.key), lambda: _BackwardData(fwd, g))
        diff_dst, data_md = converted(dy, bwd.diff_dst_md, (bwd.key, "diff_dst")), bwd.diff_dst_md
        weights = converted(np.ascontiguousarray(weight), bwd.weights_md, (bwd.key, "weights"), _weight_dims(g))
        dx = empty_activation(g.input_shape)
        if bwd.diff_src_direct:
            bwd.primitive.run({L.ARG_DIFF_SRC: dx, L.ARG_WEIGHTS: weights, L.ARG_DIFF_DST: diff_dst})
        else:
            out = R.aligned_bytes(R.md_size(bwd.diff_src_md))
            bwd.primitive.run({L.ARG_DIFF_SRC: out, L.ARG_WEIGHTS: weights, L.ARG_DIFF_DST: diff_dst})
            reorder_into(out, bwd.diff_src_md, dx, (bwd.key, "diff_src"))
        del weights  # before the weight gradient's buffers exist: the backward peak holds two weights, not three
    if need_dweight or (need_dbias and g.bias):
        bwd = R.cached(("conv_backward_weights", fwd.key), lambda: _BackwardWeights(fwd, g))
        src = converted(x, bwd.src_md, (bwd.key, "src"))
        if diff_dst is None or not R.md_equal(bwd.diff_dst_md, data_md):  # else: dy is converted once
            diff_dst = converted(dy, bwd.diff_dst_md, (bwd.key, "diff_dst"))
        dweight = np.empty(g.weight_shape, dtype=np.float32)
        target = dweight if bwd.diff_weights_plain else R.aligned_bytes(R.md_size(bwd.diff_weights_md))
        buffers = {L.ARG_SRC: src, L.ARG_DIFF_WEIGHTS: target, L.ARG_DIFF_DST: diff_dst}
        if g.bias:
            dbias = np.empty(g.output_shape[1], dtype=np.float32)
            buffers[L.ARG_DIFF_BIAS] = dbias
        bwd.primitive.run(buffers)
        if not bwd.diff_weights_plain:
            bwd.to_plain.run({L.ARG_FROM: target, L.ARG_TO: dweight})
        del target
        if not need_dweight:
            dweight = None
        if not need_dbias:
            dbias = None
    if need_dbias and dbias is None:  # a bias gradient for a convolution made without one
        dbias = dy.sum(axis=(0, 2, 3), dtype=np.float32)
    return dx, dweight, dbias


def _scratchpad_bytes(g: ConvGeometry) -> int:
    """The largest scratchpad of the three primitives of ``g`` (their descriptors only: no JIT)."""

    def build():
        tag = compute_tag()
        src = R.MemoryDesc.from_tag(g.input_shape, tag)
        any_weights = R.MemoryDesc.from_tag(_weight_dims(g), L.TAG_ANY)
        bias = R.MemoryDesc.from_tag((g.output_shape[1],), L.TAG_A) if g.bias else None
        dst = R.MemoryDesc.from_tag(g.output_shape, tag)
        strides, dilates, pad_l, _ = _dnnl_geometry(g)
        pad_r = R.dims(_right_padding(g))
        attr = R.Attributes()
        fwd = R.create_pd("dnnl_convolution_forward_primitive_desc_create", R.engine(), L.FORWARD_TRAINING,
                          L.CONVOLUTION_DIRECT, src.handle, any_weights.handle, bias.handle if bias else None,
                          dst.handle, strides, dilates, pad_l, pad_r, attr.handle)
        data = R.create_pd("dnnl_convolution_backward_data_primitive_desc_create", R.engine(),
                           L.CONVOLUTION_DIRECT, src.handle, any_weights.handle, dst.handle, strides, dilates,
                           pad_l, pad_r, fwd.handle, attr.handle)
        weights = R.create_pd("dnnl_convolution_backward_weights_primitive_desc_create", R.engine(),
                              L.CONVOLUTION_DIRECT, src.handle, any_weights.handle, bias.handle if bias else None,
                              dst.handle, strides, dilates, pad_l, pad_r, fwd.handle, attr.handle)
        return max(pd.size(L.QUERY_SCRATCHPAD_MD) for pd in (fwd, data, weights))

    return R.cached(("conv_scratchpad", g, compute_tag()), build)


def conv2d_memory(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, workspace=None, relu=False):
    """What the oneDNN kernel holds (arrays as ArraySpecs): the cache references the input (the
    weight gradient reads it); forward makes the weight in the kernel's layout; backward at most
    two weight-sized buffers at a time (the weight for the backward-data kernel, then the weight
    gradient in the kernel's layout and in PyTorch's, then that and the layer's copy into
    ``.grad``); every primitive uses the shared scratchpad (its size asked of oneDNN). A ``dy``
    that arrives in another layout (from a Flatten) is copied once; not counted."""
    g = geometry(x.shape, weight.shape, bias is not None, stride, padding, dilation, groups)
    weight_bytes = weight.size * 4
    scratch = {"onednn_scratchpad": _scratchpad_bytes(g) + 64}
    return LayerMemory(keeps_input=True, forward_temp=weight_bytes, backward_temp=2 * weight_bytes, scratch=scratch)
