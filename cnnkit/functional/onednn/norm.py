"""Batch normalisation and local response normalisation through oneDNN, forward and backward.

Same arguments and results as the NumPy reference :mod:`cnnkit.functional.norm`
(``batch_norm_forward/backward``, ``local_response_norm_forward/backward``).

Batch normalisation: oneDNN normalises with the batch mean and the *biased* variance and hands
both back; it keeps no running statistics. So the momentum update of ``running_mean`` and
``running_var`` (with the unbiased variance, ``var * m / (m - 1)``) happens here, in place,
exactly as the reference does it. ``weight``/``bias`` of ``None`` (``affine=False``) are given
to oneDNN as ones and zeros, which computes the same thing and the same parameter gradients.
In eval mode oneDNN normalises with the running statistics (``use_global_stats``). The cache keeps
the input ``x``, the mean and variance used (copies: the running buffers change later), the
scale and the forward primitive.

LRN: oneDNN's across-channel window is ``c - (size-1)/2 .. c + (size-1)/2`` with the sum divided by
``size``: PyTorch's formula for odd sizes; even sizes (PyTorch's window is then lopsided) are
declined. The cache keeps the input and oneDNN's workspace.

Outputs keep the memory order of the input (channels-last in, channels-last out).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..memory import LayerMemory
from . import library as L
from . import runtime as R
from .checks import array_reason, first_reason, unavailable
from .layout import converted, empty_channels_last, is_channels_last


def _decline_input(x, ndims=(4,)):
    reason = first_reason(unavailable(), array_reason("input", x, ndims))
    if reason is None and x.size == 0:
        return f"empty input {tuple(x.shape)}"
    return reason


def _channels_last(x) -> bool:
    return x.ndim == 4 and is_channels_last(x) and not x.flags.c_contiguous


def _readable(x):
    return x if (x.flags.c_contiguous or _channels_last(x)) else np.ascontiguousarray(x)


def _strides(shape, channels_last: bool) -> tuple:
    if channels_last:
        n, c, h, w = shape
        return (h * w * c, 1, w * c, c)
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def _new(shape, channels_last: bool):
    return empty_channels_last(shape) if channels_last else np.empty(shape, dtype=np.float32)


def _vector(v, c: int):
    return np.ascontiguousarray(v, dtype=np.float32).reshape(c)


# -- batch normalisation --------------------------------------------------------------------------
def batch_norm_decline(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, relu=False):
    """Why oneDNN will not run this batch normalisation (None when it will): 2-D or 4-D float32;
    a fused ReLU in training mode only (where the batch statistics reveal a NaN for free)."""
    reason = first_reason(_decline_input(x, (2, 4)), *(array_reason(name, v) for name, v in (
        ("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var))))
    if reason is None and not training and (running_mean is None or running_var is None):
        return "eval mode without running statistics"
    if reason is None and relu and not training:
        return "a fused ReLU with running statistics (no free NaN check: the reference's maximum keeps NaN)"
    return reason


def batch_norm_memory(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5,
                      relu=False) -> LayerMemory:
    """The cache references the input itself (oneDNN's backward reads ``x``, not ``x - mean``),
    plus per-channel vectors; backward makes ``dx`` and the per-channel gradients. A fused ReLU
    keeps oneDNN's workspace (its mask, one bit per value; size asked of oneDNN), not the output."""
    rule = LayerMemory(keeps_input=True, saved=4 * x.shape[1] * 4)
    if relu:
        rule.saved += _relu_workspace_bytes(tuple(x.shape))
    return rule


def _relu_workspace_bytes(shape) -> int:
    def build():
        fwd = _BatchNormForward(shape, len(shape) == 4, True, 1e-5, True)
        return fwd.workspace_bytes

    with R.one_thread():
        return R.cached(("batch_norm_relu_workspace", shape), build)


class _BatchNormForward:
    def __init__(self, shape, channels_last: bool, training: bool, eps: float, relu: bool = False):
        self.key = ("batch_norm", shape, channels_last, training, eps, relu)
        self.shape, self.channels_last, self.training, self.eps = shape, channels_last, training, eps
        self.flags = (L.BN_USE_SCALE | L.BN_USE_SHIFT | (0 if training else L.BN_USE_GLOBAL_STATS)
                      | (L.BN_FUSE_NORM_RELU if relu else 0))
        data = R.MemoryDesc.from_strides(shape, _strides(shape, channels_last))
        self.attr = R.Attributes()
        self.pd = R.create_pd("dnnl_batch_normalization_forward_primitive_desc_create", R.engine(),
                              L.FORWARD_TRAINING, data.handle, data.handle, eps, self.flags, self.attr.handle)
        self.data_md = self.pd.md(L.QUERY_SRC_MD)
        self.channel_md = R.MemoryDesc.from_strides((shape[1],), (1,))
        c = self.channel_md.handle
        args = {L.ARG_SRC: self.data_md, L.ARG_DST: self.pd.md(L.QUERY_DST_MD), L.ARG_SCALE: c, L.ARG_SHIFT: c,
                L.ARG_MEAN: c, L.ARG_VARIANCE: c}
        self.workspace_bytes = self.pd.size(L.QUERY_WORKSPACE_MD) if relu else 0
        if self.workspace_bytes:  # the ReLU's mask, which backward applies to dy
            args[L.ARG_WORKSPACE] = self.pd.md(L.QUERY_WORKSPACE_MD)
        self.primitive = R.Primitive(self.pd, args, "batch norm forward")


class _BatchNormBackward:
    """``dx`` with the per-channel sums behind ``dweight`` and ``dbias`` (oneDNN's ``backward``:
    they are computed for ``dx`` anyway, so asking for fewer gradients saves nothing); with the
    forward's fused ReLU, its mask (the workspace) applied to ``dy`` in the same pass."""

    def __init__(self, fwd: _BatchNormForward):
        self.key = ("batch_norm_backward", fwd.key)
        data = R.MemoryDesc.from_strides(fwd.shape, _strides(fwd.shape, fwd.channels_last))
        self.attr = R.Attributes()
        self.pd = R.create_pd("dnnl_batch_normalization_backward_primitive_desc_create", R.engine(),
                              L.BACKWARD, data.handle, data.handle, data.handle, fwd.eps, fwd.flags, fwd.pd.handle,
                              self.attr.handle)
        self.diff_dst_md = self.pd.md(L.QUERY_DIFF_DST_MD)
        c = fwd.channel_md.handle
        args = {L.ARG_SRC: self.pd.md(L.QUERY_SRC_MD), L.ARG_DIFF_DST: self.diff_dst_md,
                L.ARG_DIFF_SRC: self.pd.md(L.QUERY_DIFF_SRC_MD), L.ARG_SCALE: c, L.ARG_MEAN: c, L.ARG_VARIANCE: c,
                L.ARG_DIFF_SCALE: c, L.ARG_DIFF_SHIFT: c}
        if fwd.workspace_bytes:
            args[L.ARG_WORKSPACE] = fwd.pd.md(L.QUERY_WORKSPACE_MD)
        self.primitive = R.Primitive(self.pd, args, "batch norm backward")


class BatchNormOnednnCache(NamedTuple):
    """What backward needs: the input, the statistics it was normalised with, the scale; with a
    fused ReLU, oneDNN's mask (``workspace``) or, after a NaN fallback, the output (``relu_y``)."""

    x: object
    mean: object
    var: object
    scale: object
    forward: _BatchNormForward
    workspace: object = None
    relu_y: object = None


def _forward_primitive(shape, channels_last, training, eps, relu):
    # Batch statistics meet at spin barriers: one thread (see runtime.one_thread). With running
    # statistics the pass is a per-channel affine map without barriers: every thread.
    with R.one_thread() if training else R.all_threads():
        return R.cached(("batch_norm_forward", shape, channels_last, training, eps, relu),
                        lambda: _BatchNormForward(shape, channels_last, training, eps, relu))


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5, relu=False):
    """Return ``(y, cache)``; in training mode update ``running_mean``/``running_var`` in place.

    As ``functional.norm.batch_norm_forward``: training normalises with the batch mean and biased
    variance and updates the running buffers (when given) with ``momentum``, the variance
    unbiased (``m / (m - 1)``, ``m = N*H*W``); eval normalises with the running statistics.
    ``relu`` (training mode) applies ``max(y, 0)`` in the same pass (oneDNN's fused
    normalisation + ReLU) and backward applies its mask. oneDNN's ReLU turns NaN into 0; a NaN
    or inf anywhere in ``x`` shows in the batch statistics, which are checked for free, and then
    the output is recomputed unfused with NumPy's NaN-keeping ``maximum``.

    Shape:
        x: (N, C, H, W) or (N, C); weight, bias, running_mean, running_var: (C,) -> y: same as x
    """
    x = _readable(x)
    n, c = x.shape[:2]
    m = x.size // c
    if training and m < 2:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    training, relu = bool(training), bool(relu) and bool(training)
    channels_last = _channels_last(x)
    fwd = _forward_primitive(x.shape, channels_last, training, float(eps), relu)
    scale = np.ones(c, np.float32) if weight is None else _vector(weight, c)
    shift = np.zeros(c, np.float32) if bias is None else _vector(bias, c)
    if training:
        mean, var = np.empty(c, np.float32), np.empty(c, np.float32)
    else:  # copies: the running buffers may change before backward
        mean, var = np.array(running_mean, np.float32), np.array(running_var, np.float32)
    y = _new(x.shape, channels_last)
    buffers = {L.ARG_SRC: x, L.ARG_DST: y, L.ARG_SCALE: scale, L.ARG_SHIFT: shift, L.ARG_MEAN: mean,
               L.ARG_VARIANCE: var}
    workspace = relu_y = None
    if relu:
        workspace = buffers[L.ARG_WORKSPACE] = R.aligned_bytes(fwd.workspace_bytes)
    with R.one_thread() if training else R.all_threads():
        fwd.primitive.run(buffers)
        if relu and not all(np.isfinite(v).all() for v in (mean, var, scale, shift)):
            # A NaN or inf in x (or the parameters): the fused ReLU zeroed NaNs the reference keeps.
            fwd = _forward_primitive(x.shape, channels_last, training, float(eps), False)
            del buffers[L.ARG_WORKSPACE]
            fwd.primitive.run(buffers)
            np.maximum(y, 0, out=y)
            workspace, relu_y = None, y
    if training:
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += momentum * mean
        if running_var is not None:
            running_var *= 1 - momentum
            running_var += (momentum * m / (m - 1)) * var  # unbiased, as PyTorch
    return y, BatchNormOnednnCache(x, mean, var, scale, fwd, workspace, relu_y)


def batch_norm_backward(dy, cache: BatchNormOnednnCache, need_dx=True, need_dweight=True, need_dbias=True):
    """Return ``(dx, dweight, dbias)``; a gradient not asked for is ``None``.

    oneDNN computes ``dx`` together with the per-channel sums behind ``dweight`` and ``dbias``
    (one primitive; the gradients not asked for are dropped).

    Shape:
        dy: same as x -> dx: same as x; dweight, dbias: (C,)
    """
    x, mean, var, scale, fwd, workspace, relu_y = cache
    if not (need_dx or need_dweight or need_dbias):
        return None, None, None
    if relu_y is not None:  # the NaN fallback of a fused ReLU: its mask here
        dy = dy * (relu_y > 0)
    with R.one_thread():
        bwd = R.cached(("batch_norm_backward", fwd.key), lambda: _BatchNormBackward(fwd))
    diff_dst = converted(dy, bwd.diff_dst_md, (bwd.key, "diff_dst"))
    dx = _new(fwd.shape, fwd.channels_last)  # made even when not asked: oneDNN always writes it
    c = fwd.shape[1]
    dweight, dbias = np.empty(c, np.float32), np.empty(c, np.float32)
    buffers = {L.ARG_SRC: x, L.ARG_DIFF_DST: diff_dst, L.ARG_DIFF_SRC: dx, L.ARG_SCALE: scale, L.ARG_MEAN: mean,
               L.ARG_VARIANCE: var, L.ARG_DIFF_SCALE: dweight, L.ARG_DIFF_SHIFT: dbias}
    if workspace is not None:
        buffers[L.ARG_WORKSPACE] = workspace
    with R.one_thread():
        bwd.primitive.run(buffers)
    return (dx if need_dx else None), (dweight if need_dweight else None), (dbias if need_dbias else None)


# -- local response normalisation -----------------------------------------------------------------
def local_response_norm_decline(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Why oneDNN will not run this LRN (None when it will)."""
    reason = _decline_input(x)
    if reason:
        return reason
    if size % 2 == 0:
        return f"even size {size}: PyTorch's window is lopsided, oneDNN's is centred"
    if size == 1:
        return "size 1: oneDNN 3.2's LRN backward crashes on it"
    return None


class _LrnForward:
    def __init__(self, shape, channels_last, size, alpha, beta, k):
        self.key = ("lrn", shape, channels_last, size, alpha, beta, k)
        self.shape, self.channels_last, self.params = shape, channels_last, (size, alpha, beta, k)
        data = R.MemoryDesc.from_strides(shape, _strides(shape, channels_last))
        self.attr = R.Attributes()
        self.pd = R.create_pd("dnnl_lrn_forward_primitive_desc_create", R.engine(), L.FORWARD_TRAINING,
                              L.LRN_ACROSS_CHANNELS, data.handle, data.handle, size, alpha, beta, k, self.attr.handle)
        self.workspace_md = self.pd.md(L.QUERY_WORKSPACE_MD) if self.pd.size(L.QUERY_WORKSPACE_MD) else None
        args = {L.ARG_SRC: self.pd.md(L.QUERY_SRC_MD), L.ARG_DST: self.pd.md(L.QUERY_DST_MD)}
        if self.workspace_md:
            args[L.ARG_WORKSPACE] = self.workspace_md
        self.primitive = R.Primitive(self.pd, args, "lrn forward")


class _LrnBackward:
    def __init__(self, fwd: _LrnForward):
        self.key = ("lrn_backward", fwd.key)
        data = R.MemoryDesc.from_strides(fwd.shape, _strides(fwd.shape, fwd.channels_last))
        self.attr = R.Attributes()
        size, alpha, beta, k = fwd.params
        self.pd = R.create_pd("dnnl_lrn_backward_primitive_desc_create", R.engine(), L.LRN_ACROSS_CHANNELS,
                              data.handle, data.handle, data.handle, size, alpha, beta, k, fwd.pd.handle,
                              self.attr.handle)
        self.diff_dst_md = self.pd.md(L.QUERY_DIFF_DST_MD)
        args = {L.ARG_SRC: self.pd.md(L.QUERY_SRC_MD), L.ARG_DIFF_DST: self.diff_dst_md,
                L.ARG_DIFF_SRC: self.pd.md(L.QUERY_DIFF_SRC_MD)}
        if fwd.workspace_md:
            args[L.ARG_WORKSPACE] = fwd.workspace_md
        self.primitive = R.Primitive(self.pd, args, "lrn backward")


class LrnOnednnCache(NamedTuple):
    x: object
    workspace: object
    forward: _LrnForward


@R.small_calls_on_one_thread(lambda x, *a, **k: 2 * x.nbytes)
def local_response_norm_forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Return ``(y, cache)`` with PyTorch's ``local_response_norm`` (odd ``size``).

    Shape:
        x: (N, C, H, W) -> y: same as x
    """
    x = _readable(x)
    channels_last = _channels_last(x)
    params = (int(size), float(alpha), float(beta), float(k))
    fwd = R.cached(("lrn_forward", x.shape, channels_last, params),
                   lambda: _LrnForward(x.shape, channels_last, *params))
    y = _new(x.shape, channels_last)
    buffers = {L.ARG_SRC: x, L.ARG_DST: y}
    workspace = None
    if fwd.workspace_md:
        workspace = buffers[L.ARG_WORKSPACE] = R.aligned_bytes(R.md_size(fwd.workspace_md))
    fwd.primitive.run(buffers)
    return y, LrnOnednnCache(x, workspace, fwd)


@R.small_calls_on_one_thread(lambda dy, cache, need_dx=True: 3 * dy.nbytes)
def local_response_norm_backward(dy, cache: LrnOnednnCache, need_dx=True):
    """Return ``dx`` (``None`` when ``need_dx`` is False); LRN has no parameters.

    Shape:
        dy: same as x -> dx: same as x
    """
    if not need_dx:
        return None
    x, workspace, fwd = cache
    bwd = R.cached(("lrn_backward", fwd.key), lambda: _LrnBackward(fwd))
    dx = _new(fwd.shape, fwd.channels_last)
    buffers = {L.ARG_SRC: x, L.ARG_DIFF_DST: converted(dy, bwd.diff_dst_md, (bwd.key, "diff_dst")), L.ARG_DIFF_SRC: dx}
    if workspace is not None:
        buffers[L.ARG_WORKSPACE] = workspace
    bwd.primitive.run(buffers)
    return dx


def _lrn_workspace_bytes(shape, params) -> int:
    def build():
        data = R.MemoryDesc.from_strides(shape, _strides(shape, True))
        attr = R.Attributes()
        pd = R.create_pd("dnnl_lrn_forward_primitive_desc_create", R.engine(), L.FORWARD_TRAINING,
                         L.LRN_ACROSS_CHANNELS, data.handle, data.handle, *params, attr.handle)
        return pd.size(L.QUERY_WORKSPACE_MD)

    return R.cached(("lrn_workspace", shape, params), build)


def local_response_norm_memory(x, size, alpha=1e-4, beta=0.75, k=1.0) -> LayerMemory:
    """The cache references the input and keeps oneDNN's workspace (its size asked of oneDNN)."""
    params = (int(size), float(alpha), float(beta), float(k))
    return LayerMemory(keeps_input=True, saved=_lrn_workspace_bytes(tuple(x.shape), params))
