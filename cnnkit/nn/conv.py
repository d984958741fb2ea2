"""``Conv2d`` and ``LocallyConnected2d``: thin layers over :mod:`cnnkit.functional.conv`.

``Conv2d`` follows PyTorch: the same arguments and defaults, weight ``(out, in/groups, kh, kw)``,
attributes stored as tuples, the default init (kaiming_uniform with a=sqrt(5), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias). Deliberate difference: geometry that
silently drops real input rows/columns (7x7 input, 3x3 kernel, stride 3) raises a ``ValueError``
unless ``check_geometry=False`` (see :mod:`cnnkit.functional.shapes`).
"""
from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from ..backend import DEFAULT_DTYPE
from ..functional.conv import CONV2D
from ..functional.locally_connected import (
    locally_connected2d_backward,
    locally_connected2d_forward,
    locally_connected2d_memory,
)
from ..functional.memory import ArraySpec, LayerMemory, numel
from ..functional.shapes import check_positive, conv_output_size, pair
from ..functional.workspace import Workspace
from .init import default_weight_and_bias
from .module import Module, Parameter
from .validation import check_input, check_parameter_size, check_sample_shape

__all__ = ["Conv2d", "LocallyConnected2d"]  # what cnnkit.nn exports from here


def _positive_int(value, name: str, layer: str) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}")
    return int(value)


def _spatial_output(layer: str, hw, kernel, stride, padding, dilation, check_geometry: bool) -> tuple[int, int]:
    """``(out_h, out_w)`` through the one shared formula (it raises the geometry errors)."""
    return tuple(
        conv_output_size(hw[a], kernel[a], stride[a], padding[a], dilation[a],
                         check_geometry=check_geometry, layer=layer, axis=("height", "width")[a])
        for a in (0, 1)
    )


class Conv2d(Module):
    """2-D convolution (cross-correlation) over an ``(N, C, H, W)`` input.

    ``padding`` is an int, a pair, or ``"valid"`` (no padding) / ``"same"`` (output size equals
    input size; stride 1 only, as in PyTorch, and only when ``dilation*(kernel-1)`` is even so the
    padding is symmetric). Unlike PyTorch, which keeps the string, ``self.padding`` then holds the
    resolved pair, so summaries and exporters see numbers.

    Shape:
        input (N, C_in, H, W) -> output (N, C_out, out_h, out_w)
        out_h = floor((H + 2*padding[0] - dilation[0]*(kernel_size[0] - 1) - 1) / stride[0]) + 1
        out_w likewise with index 1
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, *, check_geometry: bool = True, dtype=DEFAULT_DTYPE,
                 generator: np.random.Generator | None = None, algorithm: str = "auto"):
        super().__init__()
        # "auto" picks per call among the kernels of cnnkit.functional.conv.CONV2D; "im2col" is
        # the reference kernel, always available. `last_algorithm` tells which one ran.
        self.algorithm = CONV2D.check_algorithm(algorithm, "Conv2d")
        self.last_algorithm = None
        # Set by cnnkit.nn.fuse: a ReLU applied in place on the output this layer just made
        # (one pass over memory the layer owns, instead of a ReLU layer's new array).
        self.fused_relu = False
        self._workspace = Workspace()  # buffers reused from step to step (not in the state dict)
        self.in_channels = _positive_int(in_channels, "in_channels", "Conv2d")
        self.out_channels = _positive_int(out_channels, "out_channels", "Conv2d")
        self.groups = _positive_int(groups, "groups", "Conv2d")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"Conv2d: groups={groups} must divide both in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        self.dilation = pair(dilation, "dilation", "Conv2d")
        check_positive(self.kernel_size, "kernel_size", "Conv2d")
        check_positive(self.stride, "stride", "Conv2d")
        check_positive(self.dilation, "dilation", "Conv2d")
        self.padding = self._resolve_padding(padding)
        self.check_geometry = bool(check_geometry)
        weight_shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        check_parameter_size("Conv2d", "weight", weight_shape)
        if bias:
            check_parameter_size("Conv2d", "bias", (self.out_channels,))
        weight, b = default_weight_and_bias(weight_shape, self.out_channels if bias else 0, dtype, generator)
        self.weight = Parameter(weight)
        self.bias = Parameter(b) if bias else None
        if algorithm != "auto":  # an explicit kernel that cannot run this layer at all: say so now
            span = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
            reason = CONV2D.kernel(algorithm).decline(*self._specs((1, self.in_channels) + span))
            if reason:
                raise ValueError(f"Conv2d: algorithm={algorithm!r} cannot run this layer: {reason}")

    def _resolve_padding(self, padding) -> tuple[int, int]:
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0)
            if padding != "same":
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
            if self.stride != (1, 1):
                raise ValueError(f"Conv2d: padding='same' needs stride 1 (as in PyTorch), got stride={self.stride}")
            spans = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(s % 2 for s in spans):
                raise ValueError(
                    f"Conv2d: padding='same' with kernel_size={self.kernel_size} and dilation={self.dilation} "
                    "needs asymmetric padding, which cnnkit does not support; use an odd kernel or explicit padding"
                )
            return (spans[0] // 2, spans[1] // 2)
        padding = pair(padding, "padding", "Conv2d")
        check_positive(padding, "padding", "Conv2d", minimum=0)
        return padding

    def _output_hw(self, hw) -> tuple[int, int]:
        return _spatial_output("Conv2d", hw, self.kernel_size, self.stride, self.padding, self.dilation,
                               self.check_geometry)

    def _specs(self, x_shape):
        """The kernel arguments for an input of ``x_shape``, arrays as ArraySpecs (no data)."""
        dtype = self.weight.dtype
        bias = None if self.bias is None else ArraySpec(self.bias.shape, dtype)
        return (ArraySpec(tuple(x_shape), dtype), ArraySpec(self.weight.shape, dtype), bias, self.stride,
                self.padding, self.dilation, self.groups)

    def forward(self, x):
        check_input(x, "Conv2d", 4, self.in_channels, self.weight.dtype)
        self._output_hw(x.shape[2:])  # the clear geometry errors, before any array work
        # A fused ReLU runs inside the kernel (oneDNN: a post-op; NumPy: in place on the new output).
        y, cache = self._run(CONV2D, x, self.weight.data, None if self.bias is None else self.bias.data,
                             self.stride, self.padding, self.dilation, self.groups, workspace=self._workspace,
                             relu=self.fused_relu)
        if self.fused_relu:
            cache = (cache, y)
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        if self.fused_relu:
            cache, y = cache
            dy = dy * (y > 0)
        dx, dweight, dbias = CONV2D.backward(
            dy, cache, need_dx=input_grad, need_dweight=self._wants_grad("weight"),
            need_dbias=self._wants_grad("bias"),
        )
        self._accumulate_grads(weight=dweight, bias=dbias)
        return dx

    def output_shape(self, input_shape):
        hw = check_sample_shape("Conv2d", input_shape, self.in_channels)
        return (self.out_channels,) + self._output_hw(hw)

    def macs(self, input_shape, output_shape) -> int:
        kh, kw = self.kernel_size
        return numel(output_shape) * (self.in_channels // self.groups) * kh * kw

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        rule = CONV2D.memory(self.algorithm, *self._specs((batch_size,) + tuple(input_shape)), relu=self.fused_relu)
        if self.fused_relu:  # the output is kept for the ReLU's mask; backward masks dy
            rule.keeps_output = True
            rule.backward_temp += batch_size * numel(output_shape) * np.dtype(dtype).itemsize
        return rule

    def onnx_export(self, ctx, x, prefix):
        inputs = [x, ctx.constant(ctx.join(prefix, "weight"), self.weight.data)]
        if self.bias is not None:
            inputs.append(ctx.constant(ctx.join(prefix, "bias"), self.bias.data))
        ph, pw = self.padding
        y = ctx.node("Conv", inputs, ctx.join(prefix, "Conv"), kernel_shape=list(self.kernel_size),
                     strides=list(self.stride), pads=[ph, pw, ph, pw], dilations=list(self.dilation),
                     group=self.groups)
        if self.fused_relu:  # cnnkit.nn.fuse put the ReLU inside the layer: it is part of its output
            y = ctx.node("Relu", [y], ctx.join(prefix, "Relu"))
        return y

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        if self.fused_relu:
            text += ", fused_relu=True"
        return text


class LocallyConnected2d(Module):
    """A convolution without weight sharing: every output position has its own filters.

    Weight ``(out_h, out_w, out_channels, in_channels, kh, kw)`` (per position, a PyTorch conv
    filter bank), bias ``(out_channels, out_h, out_w)``. The input size is fixed at construction,
    because the number of filters depends on it. Init as Conv2d: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    with ``fan_in = in_channels*kh*kw``.

    Shape:
        input (N, C_in, H, W) with (H, W) = input_size -> output (N, C_out, out_h, out_w)
        out_h = floor((H + 2*padding[0] - kernel_size[0]) / stride[0]) + 1, out_w likewise
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, input_size, stride=1, padding=0,
                 bias: bool = True, *, check_geometry: bool = True, dtype=DEFAULT_DTYPE,
                 generator: np.random.Generator | None = None):
        super().__init__()
        layer = "LocallyConnected2d"
        self.in_channels = _positive_int(in_channels, "in_channels", layer)
        self.out_channels = _positive_int(out_channels, "out_channels", layer)
        self.kernel_size = pair(kernel_size, "kernel_size", layer)
        self.input_size = pair(input_size, "input_size", layer)
        self.stride = pair(stride, "stride", layer)
        self.padding = pair(padding, "padding", layer)
        check_positive(self.kernel_size, "kernel_size", layer)
        check_positive(self.input_size, "input_size", layer)
        check_positive(self.stride, "stride", layer)
        check_positive(self.padding, "padding", layer, minimum=0)
        self.check_geometry = bool(check_geometry)
        self.output_size = _spatial_output(layer, self.input_size, self.kernel_size, self.stride, self.padding,
                                           (1, 1), self.check_geometry)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        rng = generator if generator is not None else np.random.default_rng()
        weight_shape = self.output_size + (self.out_channels, self.in_channels) + self.kernel_size
        check_parameter_size(layer, "weight", weight_shape)
        if bias:
            check_parameter_size(layer, "bias", (self.out_channels,) + self.output_size)
        self.weight = Parameter(rng.uniform(-bound, bound, size=weight_shape).astype(dtype))
        bias_shape = (self.out_channels,) + self.output_size
        self.bias = Parameter(rng.uniform(-bound, bound, size=bias_shape).astype(dtype)) if bias else None

    def forward(self, x):
        check_input(x, "LocallyConnected2d", 4, self.in_channels, self.weight.dtype)
        if tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"LocallyConnected2d was built for {self.input_size[0]}x{self.input_size[1]} inputs "
                f"(input_size={self.input_size}), got {x.shape[2]}x{x.shape[3]} (input shape {tuple(x.shape)})"
            )
        y, cache = locally_connected2d_forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                                               self.stride, self.padding)
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        dx, dweight, dbias = locally_connected2d_backward(
            dy, cache, need_dx=input_grad, need_dweight=self._wants_grad("weight"),
            need_dbias=self._wants_grad("bias"),
        )
        self._accumulate_grads(weight=dweight, bias=dbias)
        return dx

    def output_shape(self, input_shape):
        hw = check_sample_shape("LocallyConnected2d", input_shape, self.in_channels)
        if tuple(hw) != self.input_size:
            raise ValueError(f"LocallyConnected2d was built for input_size={self.input_size}, got {tuple(hw)}")
        return (self.out_channels,) + self.output_size

    def macs(self, input_shape, output_shape) -> int:
        kh, kw = self.kernel_size
        return numel(output_shape) * self.in_channels * kh * kw

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        x = ArraySpec((batch_size,) + tuple(input_shape), dtype)
        return locally_connected2d_memory(x, ArraySpec(self.weight.shape, dtype), None, self.stride, self.padding)

    def onnx_export(self, ctx, x, prefix):
        raise NotImplementedError(f"ONNX export: LocallyConnected2d {prefix!r} has no ONNX operator "
                                  "(a convolution without weight sharing)")

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"input_size={self.input_size}, stride={self.stride}")
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.bias is None:
            text += ", bias=False"
        return text
