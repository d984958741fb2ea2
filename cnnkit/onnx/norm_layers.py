"""Instance normalisation (ONNX ``InstanceNormalization``, PyTorch ``InstanceNorm2d(affine=True)``):
each sample's channel is normalised by its own mean and (biased) variance over the spatial axes::

    xhat = (x - mean_nc) / sqrt(var_nc + eps),      y = scale_c * xhat + bias_c

Style-transfer and GAN generators use it; it keeps no running statistics, so training and
inference compute the same thing.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..functional.memory import LayerMemory
from ..nn.module import Parameter
from .layers import _OnnxLayer, batch_bytes


class InstanceNorm(_OnnxLayer):
    """Normalise every ``(sample, channel)`` over its spatial positions, then scale and shift.

    Backward (per sample and channel, ``m`` spatial positions)::

        dxhat = dy * scale
        dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))

    Shape:
        input (N, C, *spatial) -> output, same shape; scale, bias: (C,)
    """

    def __init__(self, scale, bias, eps: float = 1e-5):
        super().__init__()
        self.weight = Parameter(np.array(scale, copy=True))
        self.bias = Parameter(np.array(bias, copy=True))
        if self.weight.shape != self.bias.shape or self.weight.data.ndim != 1:
            raise ValueError(f"InstanceNorm: scale and bias must be vectors of one length, got shapes "
                             f"{self.weight.shape} and {self.bias.shape}")
        self.eps = float(eps)

    def _per_channel(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x):
        if x.ndim < 3 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"InstanceNorm expects (N, {self.weight.shape[0]}, *spatial), got shape {tuple(x.shape)}")
        xp = array_module(x)
        axes = tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        inv_std = 1 / xp.sqrt((centered * centered).mean(axis=axes, keepdims=True) + self.eps)
        xhat = centered * inv_std
        self._save((xhat, inv_std, axes))
        scale = self._per_channel(self.weight.data.astype(x.dtype, copy=False), x.ndim)
        bias = self._per_channel(self.bias.data.astype(x.dtype, copy=False), x.ndim)
        return (xhat * scale + bias).astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        xhat, inv_std, axes = self._restore()
        batch_and_space = (0,) + axes
        if self.weight.requires_grad:
            self.weight.accumulate_grad((dy * xhat).sum(axis=batch_and_space))
        if self.bias.requires_grad:
            self.bias.accumulate_grad(dy.sum(axis=batch_and_space))
        if not input_grad:
            return None
        dxhat = dy * self._per_channel(self.weight.data.astype(dy.dtype, copy=False), dy.ndim)
        mean_dxhat = dxhat.mean(axis=axes, keepdims=True)
        mean_dxhat_xhat = (dxhat * xhat).mean(axis=axes, keepdims=True)
        return inv_std * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # xhat and 1/std per (sample, channel) are cached; forward holds x - mean beside a square
        # or the scaled xhat, backward dxhat beside one product or difference at a time
        n = batch_bytes(input_shape, batch_size, dtype)
        inv_std = batch_bytes(input_shape[:1], batch_size, dtype)
        return LayerMemory(saved=n + inv_std, forward_temp=2 * n, backward_temp=2 * n)

    def onnx_export(self, ctx, x, prefix):
        scale = ctx.constant(ctx.join(prefix, "weight"), self.weight.data, like=x)
        bias = ctx.constant(ctx.join(prefix, "bias"), self.bias.data, like=x)
        return ctx.node("InstanceNormalization", [x, scale, bias], ctx.join(prefix, "InstanceNormalization"),
                        epsilon=self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
