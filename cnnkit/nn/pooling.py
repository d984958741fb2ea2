"""Pooling layers: ``MaxPool2d``, ``AvgPool2d``, ``LPPool2d``, ``AdaptiveAvgPool2d``.

Thin wrappers over ``cnnkit.functional.pool`` with PyTorch's argument names, defaults and
``repr``. Output sizes use the shared ``conv_output_size``, so geometry that silently drops real
input raises a ``ValueError`` with a fix (``ceil_mode=True``, more padding, or
``check_geometry=False`` to drop it on purpose, as models imported from elsewhere may need).
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from ..functional.adaptive_pool import (
    adaptive_avg_pool2d_backward,
    adaptive_avg_pool2d_forward,
    adaptive_avg_pool2d_memory,
    adaptive_output_size,
    adaptive_pool_matrix,
)
from ..functional.memory import ArraySpec, LayerMemory
from ..functional.pool import AVG_POOL2D, MAX_POOL2D, lp_pool2d_backward, lp_pool2d_forward, lp_pool2d_memory, max_pool2d_indices
from ..functional.pool_geometry import pool_arguments
from ..functional.shapes import conv_output_size
from .module import Module, is_grad_enabled
from .validation import check_input, check_sample_shape

__all__ = ["MaxPool2d", "AvgPool2d", "LPPool2d", "AdaptiveAvgPool2d"]  # what cnnkit.nn exports from here


def _batch_spec(input_shape, batch_size, dtype) -> ArraySpec:
    return ArraySpec((batch_size,) + tuple(input_shape), dtype)


class _WindowPool2d(Module):
    """Shared argument handling and shape inference of the windowed pooling layers."""

    def _setup(self, kernel_size, stride, padding, dilation, ceil_mode, check_geometry):
        layer = type(self).__name__
        self._kernel, self._stride, self._padding, _, self._dilation = pool_arguments(
            kernel_size, stride, padding, dilation, layer=layer)
        self.ceil_mode = bool(ceil_mode)
        self.check_geometry = bool(check_geometry)

    def output_shape(self, input_shape):
        height, width = check_sample_shape(type(self).__name__, input_shape)
        channels = input_shape[0]
        sizes = [
            conv_output_size(size, k, s, p, d, self.ceil_mode, check_geometry=self.check_geometry,
                             layer=type(self).__name__, axis=axis)
            for size, k, s, p, d, axis in zip((height, width), self._kernel, self._stride, self._padding,
                                               self._dilation, ("height", "width"))
        ]
        return (channels, *sizes)

    def macs(self, input_shape, output_shape) -> int:
        return 0  # pooling is not counted, as in the papers' tables

    def _geometry_repr(self) -> str:
        return "" if self.check_geometry else ", check_geometry=False"

    def _onnx_attrs(self, with_pads: bool = True) -> dict:
        (ph, pw) = self._padding
        attrs = dict(kernel_shape=list(self._kernel), strides=list(self._stride))
        if with_pads:
            attrs["pads"] = [ph, pw, ph, pw]
        return attrs


class MaxPool2d(_WindowPool2d):
    """Max pooling over ``kernel_size`` windows; backward routes through the argmax "switches".

    Ties go to the first maximum in window scan order and padding is ``-inf``, as in PyTorch, so
    gradients match PyTorch's exactly even on inputs with many equal values. ``return_indices``
    is accepted in PyTorch's position but must stay ``False`` (a layer returns one array); the
    indices of the last forward are available from :meth:`indices`.

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW),
        OH = floor_or_ceil((H + 2*padding - dilation*(kernel-1) - 1) / stride) + 1, likewise OW
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, *,
                 check_geometry=True, algorithm: str = "auto"):
        super().__init__()
        self.algorithm = MAX_POOL2D.check_algorithm(algorithm, "MaxPool2d")
        self.last_algorithm = None
        if return_indices:
            raise ValueError(
                "MaxPool2d: return_indices=True is not supported (forward returns one array); call "
                "layer.indices() after forward for PyTorch's flat indices"
            )
        self._setup(kernel_size, stride, padding, dilation, ceil_mode, check_geometry)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.dilation = dilation
        self.return_indices = False

    def forward(self, x):
        check_input(x, "MaxPool2d", 4)
        y, cache = self._run(MAX_POOL2D, x, self._kernel, self._stride, self._padding, self._dilation,
                             self.ceil_mode, check_geometry=self.check_geometry, layer="MaxPool2d",
                             need_switches=is_grad_enabled())
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return MAX_POOL2D.backward(dy, cache) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return MAX_POOL2D.memory(self.algorithm, _batch_spec(input_shape, batch_size, dtype), self._kernel,
                                 self._stride, self._padding, self._dilation, self.ceil_mode)

    def onnx_export(self, ctx, x, prefix):
        attrs = self._onnx_attrs()
        if ctx.opset >= 10:
            attrs.update(dilations=list(self._dilation), ceil_mode=int(self.ceil_mode))
        elif self.ceil_mode or self._dilation != (1, 1):
            raise NotImplementedError(f"ONNX export: MaxPool {prefix!r} with ceil_mode/dilation needs opset >= 10")
        return ctx.node("MaxPool", [x], ctx.join(prefix, "MaxPool"), **attrs)

    def indices(self):
        """PyTorch's ``return_indices`` for the last forward (flat ``ih*W + iw`` per output, int64).

        Needs the cached forward (not under ``no_grad``, before ``backward`` consumes it); useful
        to visualise which input each output picked (the "switches").
        """
        if self._cache is None:
            raise RuntimeError("MaxPool2d.indices() needs a cached forward pass that backward has not consumed yet")
        return max_pool2d_indices(self._cache)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}{self._geometry_repr()}")


class AvgPool2d(_WindowPool2d):
    """Average pooling with PyTorch's divisor rule (``count_include_pad``, ``divisor_override``).

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW),
        OH = floor_or_ceil((H + 2*padding - kernel) / stride) + 1, likewise OW
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, check_geometry=True, algorithm: str = "auto"):
        super().__init__()
        self.algorithm = AVG_POOL2D.check_algorithm(algorithm, "AvgPool2d")
        self.last_algorithm = None
        self._setup(kernel_size, stride, padding, 1, ceil_mode, check_geometry)
        if divisor_override is not None and (
            isinstance(divisor_override, bool) or not isinstance(divisor_override, Real) or divisor_override == 0
        ):
            raise ValueError(f"AvgPool2d: divisor_override must be a non-zero number or None, got {divisor_override!r}")
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, x):
        check_input(x, "AvgPool2d", 4)
        y, cache = self._run(AVG_POOL2D, x, self._kernel, self._stride, self._padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override,
                             check_geometry=self.check_geometry, layer="AvgPool2d")
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return AVG_POOL2D.backward(dy, cache) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return AVG_POOL2D.memory(self.algorithm, _batch_spec(input_shape, batch_size, dtype), self._kernel,
                                 self._stride, self._padding, self.ceil_mode, self.count_include_pad,
                                 self.divisor_override)

    def onnx_export(self, ctx, x, prefix):
        if self.divisor_override is not None:
            raise NotImplementedError(f"ONNX export: AvgPool2d {prefix!r} with divisor_override has no ONNX "
                                      "equivalent")
        attrs = self._onnx_attrs()
        attrs["count_include_pad"] = int(self.count_include_pad)
        if ctx.opset >= 10:
            attrs["ceil_mode"] = int(self.ceil_mode)
        elif self.ceil_mode:
            raise NotImplementedError(f"ONNX export: AvgPool {prefix!r} with ceil_mode needs opset >= 10")
        return ctx.node("AveragePool", [x], ctx.join(prefix, "AveragePool"), **attrs)

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.ceil_mode:
            text += ", ceil_mode=True"
        if not self.count_include_pad:
            text += ", count_include_pad=False"
        if self.divisor_override is not None:
            text += f", divisor_override={self.divisor_override}"
        return text + self._geometry_repr()


class LPPool2d(_WindowPool2d):
    """Power-average pooling ``(sum over window of x^p)^(1/p)`` (p=2: L2 pooling), no padding.

    Computed as PyTorch does: ``(avg_pool2d(x^p) * KH*KW)^(1/p)``; a window whose power sum is 0
    gets gradient 0; ``norm_type=inf`` is max pooling of ``|x|``.

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW), OH = floor_or_ceil((H - KH) / SH) + 1
    """

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False, *, check_geometry=True):
        super().__init__()
        is_number = isinstance(norm_type, Real) and not isinstance(norm_type, bool)
        if not (is_number and (norm_type > 0 or norm_type == -math.inf)):
            raise ValueError(f"LPPool2d: norm_type must be a positive number, inf or -inf, got {norm_type!r}")
        self._setup(kernel_size, stride, 0, 1, ceil_mode, check_geometry)
        self.norm_type = norm_type
        self.kernel_size = kernel_size
        self.stride = stride  # PyTorch keeps None here (and means stride = kernel_size)

    def forward(self, x):
        check_input(x, "LPPool2d", 4)
        y, cache = lp_pool2d_forward(x, self.norm_type, self._kernel, self._stride, self.ceil_mode,
                                     check_geometry=self.check_geometry, layer="LPPool2d")
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return lp_pool2d_backward(dy, cache) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return lp_pool2d_memory(_batch_spec(input_shape, batch_size, dtype), self.norm_type, self._kernel,
                                self._stride, self.ceil_mode)

    def onnx_export(self, ctx, x, prefix):
        if math.isinf(self.norm_type) or float(self.norm_type) != int(self.norm_type):
            raise NotImplementedError(f"ONNX export: LpPool's p is an integer; {prefix!r} has norm_type "
                                      f"{self.norm_type}")
        attrs = self._onnx_attrs(with_pads=False)
        if self.ceil_mode:
            if ctx.opset < 18:
                raise NotImplementedError(f"ONNX export: LpPool {prefix!r} with ceil_mode needs opset >= 18")
            attrs["ceil_mode"] = 1
        return ctx.node("LpPool", [x], ctx.join(prefix, "LpPool"), p=int(self.norm_type), **attrs)

    def extra_repr(self) -> str:
        return (f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"ceil_mode={self.ceil_mode}{self._geometry_repr()}")


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size: bin ``i`` covers ``[floor(i*H/OH), ceil((i+1)*H/OH))``.

    ``output_size`` is an int or a pair; a ``None`` entry keeps that input size.

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW)
    """

    def __init__(self, output_size):
        super().__init__()
        adaptive_output_size((1, 1), output_size, "AdaptiveAvgPool2d")  # validates; sizes need the input
        self.output_size = output_size

    def forward(self, x):
        check_input(x, "AdaptiveAvgPool2d", 4)
        y, cache = adaptive_avg_pool2d_forward(x, self.output_size, layer="AdaptiveAvgPool2d")
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return adaptive_avg_pool2d_backward(dy, cache) if input_grad else None

    def output_shape(self, input_shape):
        height, width = check_sample_shape("AdaptiveAvgPool2d", input_shape)
        return (input_shape[0], *adaptive_output_size((height, width), self.output_size, "AdaptiveAvgPool2d"))

    def macs(self, input_shape, output_shape) -> int:
        return 0  # pooling is not counted, as in the papers' tables

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return adaptive_avg_pool2d_memory(_batch_spec(input_shape, batch_size, dtype), self.output_size)

    def counts_activation(self, input_shape, output_shape) -> bool:
        # torchvision's AdaptiveAvgPool2d(7) in VGG (6 in AlexNet) is the identity at the usual
        # input size; the notes' tables have no such layer, so it counts only when it pools.
        return tuple(input_shape) != tuple(output_shape)

    def onnx_export(self, ctx, x, prefix):
        c, h, w = ctx.shape(x)
        oh, ow = adaptive_output_size((h, w), self.output_size, "AdaptiveAvgPool2d")
        if (oh, ow) == (1, 1):
            return ctx.node("GlobalAveragePool", [x], ctx.join(prefix, "GlobalAveragePool"))
        if h % oh == 0 and w % ow == 0:  # equal bins: a plain average pool
            k = [h // oh, w // ow]
            return ctx.node("AveragePool", [x], ctx.join(prefix, "AveragePool"), kernel_shape=k, strides=k)
        # general bins: y = P_h @ x @ P_w^T with the averaging matrices (exact, any sizes)
        p_w = ctx.constant(ctx.join(prefix, "pool_w"), adaptive_pool_matrix(w, ow, np.float64).T)
        p_h = ctx.constant(ctx.join(prefix, "pool_h"), adaptive_pool_matrix(h, oh, np.float64))
        rows = ctx.node("MatMul", [x, p_w], ctx.join(prefix, "MatMul_w"), shape=(c, h, ow))
        return ctx.node("MatMul", [p_h, rows], ctx.join(prefix, "MatMul_h"))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
