"""ONNX's pooling operators where they differ from PyTorch's (and so from ``nn.MaxPool2d`` & co.).

The importer uses the ``nn`` layers whenever they compute the same thing (symmetric pads within
PyTorch's ``padding <= kernel // 2``, a float input, no indices output) and these otherwise:

* pads as ONNX writes them, ``(top, left, bottom, right)``, different on the two sides (TF's
  "same" padding) and up to ``kernel - 1``; average pooling with ``count_include_pad=0`` divides
  by the real elements of each window, ``count_include_pad=1`` counts the declared padding;
* ``MaxPool`` of integer tensors, and its ``Indices`` output (flat indices into the whole input,
  row-major, or column-major per plane with ``storage_order=1``);
* ``AveragePool`` with dilations; ``LpPool`` as ONNX defines it, ``(sum |x|^p)^(1/p)``;
* 1-D pooling of ``(N, C, L)`` inputs (run as ``(N, C, 1, L)``).

The kernels are the ones in :mod:`cnnkit.functional.pool`, called with ``padding_rule="onnx"``,
and so are their memory rules; each layer exports as the ONNX operator it was read from.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..functional.memory import ArraySpec, LayerMemory
from ..functional.pool import (
    avg_pool2d_backward,
    avg_pool2d_forward,
    avg_pool2d_memory,
    lp_pool2d_backward,
    lp_pool2d_forward,
    lp_pool2d_memory,
    max_pool2d_backward,
    max_pool2d_forward,
    max_pool2d_indices,
    max_pool2d_memory,
)
from ..functional.pool_geometry import pool_geometry
from ..nn.module import is_grad_enabled
from .layers import _OnnxLayer


class _OnnxPool(_OnnxLayer):
    """Window, strides, ONNX pads and dilations of a 1-D or 2-D pooling; 1-D runs as 2-D."""

    def __init__(self, kernel, strides=None, pads=None, dilations=None, ceil_mode=False):
        super().__init__()
        kernel = tuple(int(k) for k in kernel)
        if len(kernel) not in (1, 2):
            raise ValueError(f"{type(self).__name__}: only 1-D and 2-D pooling is supported, got kernel_shape {kernel}")
        rank = len(kernel)
        strides = tuple(int(s) for s in strides) if strides is not None else (1,) * rank
        dilations = tuple(int(d) for d in dilations) if dilations is not None else (1,) * rank
        pads = tuple(int(p) for p in pads) if pads is not None else (0,) * (2 * rank)
        if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
            raise ValueError(f"{type(self).__name__}: kernel_shape {kernel}, strides {strides}, dilations "
                             f"{dilations} and pads {pads} disagree on the number of spatial axes")
        self.kernel_shape, self.strides, self.pads, self.dilations = kernel, strides, pads, dilations
        self.ceil_mode = bool(ceil_mode)
        if rank == 1:  # (N, C, L) as (N, C, 1, L)
            self._kernel, self._stride, self._dilation = (1,) + kernel, (1,) + strides, (1,) + dilations
            self._pads = (0, pads[0], 0, pads[1])
        else:
            self._kernel, self._stride, self._dilation, self._pads = kernel, strides, dilations, pads
        pool_geometry((1, 1, 10 ** 6, 10 ** 6), self._kernel, self._stride, self._pads, self._dilation,
                      padding_rule="onnx", layer=type(self).__name__)  # validates the arguments

    def _as_2d(self, x):
        rank = len(self.kernel_shape)
        if x.ndim != rank + 2:
            raise ValueError(f"{type(self).__name__} with kernel_shape {self.kernel_shape} expects a "
                             f"{rank + 2}-D input, got shape {tuple(x.shape)}")
        return x[:, :, None, :] if rank == 1 else x

    def _from_2d(self, y):
        return y[:, :, 0, :] if len(self.kernel_shape) == 1 else y

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        rank = len(self.kernel_shape)
        if len(shape) != rank + 1:
            raise ValueError(f"{type(self).__name__} expects one sample (C, {'L' if rank == 1 else 'H, W'}), got {shape}")
        spatial = ((1,) + shape[1:]) if rank == 1 else shape[1:]
        g = pool_geometry((1, shape[0]) + spatial, self._kernel, self._stride, self._pads, self._dilation,
                          self.ceil_mode, padding_rule="onnx", layer=type(self).__name__)
        return (shape[0],) + (g.output[1:] if rank == 1 else g.output)

    def _batch_spec(self, input_shape, batch_size: int, dtype) -> ArraySpec:
        """The 2-D input the kernel sees for a batch of one-sample ``input_shape``."""
        shape = tuple(input_shape)
        spatial = ((1,) + shape[1:]) if len(self.kernel_shape) == 1 else shape[1:]
        return ArraySpec((batch_size, shape[0]) + spatial, dtype)

    def _geometry_kwargs(self) -> dict:
        return dict(kernel_size=self._kernel, stride=self._stride, padding=self._pads, dilation=self._dilation,
                    ceil_mode=self.ceil_mode, padding_rule="onnx")

    def _onnx_attrs(self, ctx, op: str, prefix: str, dilations_opset: int, ceil_opset: int) -> dict:
        """The window attributes as the node had them (1-D stays 1-D), refusing what ``ctx.opset`` lacks."""
        attrs = dict(kernel_shape=list(self.kernel_shape), strides=list(self.strides), pads=list(self.pads))
        if any(d != 1 for d in self.dilations):
            ctx.require_opset(dilations_opset, f"{op} {prefix!r} with dilations {self.dilations}")
            attrs["dilations"] = list(self.dilations)
        if self.ceil_mode:
            ctx.require_opset(ceil_opset, f"{op} {prefix!r} with ceil_mode=1")
            attrs["ceil_mode"] = 1
        return attrs

    def extra_repr(self) -> str:
        return (f"kernel_shape={self.kernel_shape}, strides={self.strides}, pads={self.pads}, "
                f"dilations={self.dilations}, ceil_mode={self.ceil_mode}")


class OnnxMaxPool(_OnnxPool):
    """ONNX ``MaxPool``: ties go to the first maximum, padding never wins; integer inputs work.

    With ``return_indices`` forward returns ``(y, indices)``: int64 flat indices into the whole
    input ``(N, C, *spatial)``, row-major (``storage_order=0``) or with the spatial axes
    column-major (``storage_order=1``), as ONNX defines them. Only ``y`` has a gradient.

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW), OH = floor_or_ceil((H + PT + PB - DH*(KH-1) - 1) / SH) + 1
    """

    extra_output_dtype = np.dtype(np.int64)  # the Indices output

    def __init__(self, kernel, strides=None, pads=None, dilations=None, ceil_mode=False, *,
                 return_indices=False, storage_order=0):
        super().__init__(kernel, strides, pads, dilations, ceil_mode)
        self.return_indices = bool(return_indices)
        self.storage_order = int(storage_order)
        if self.storage_order not in (0, 1):
            raise ValueError(f"OnnxMaxPool: storage_order must be 0 or 1, got {storage_order}")

    def forward(self, x):
        x2 = self._as_2d(x)
        need = is_grad_enabled() or self.return_indices
        y, cache = max_pool2d_forward(x2, self._kernel, self._stride, self._pads, self._dilation, self.ceil_mode,
                                      layer="MaxPool", need_switches=need, padding_rule="onnx")
        self._save((cache, x.shape, x.dtype))
        if not self.return_indices:
            return self._from_2d(y)
        return self._from_2d(y), self._from_2d(self._flat_indices(cache, x2.shape))

    def _flat_indices(self, cache, shape):
        n, c, h, w = shape
        local = max_pool2d_indices(cache)  # ih * W + iw within each (n, c) plane
        if self.storage_order == 1:
            local = (local % w) * h + local // w
        plane = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * (h * w)
        return local + array_module(local).asarray(plane)[:, :, None, None]

    def backward(self, dy, input_grad: bool = True):
        cache, shape, dtype = self._restore()
        if isinstance(dy, tuple):
            dy = dy[0]  # the indices have no gradient
        if not input_grad:
            return None
        if dy is None:
            return np.zeros(shape, dtype=dtype)
        dx = max_pool2d_backward(self._as_2d(dy), cache)
        return self._from_2d(dx)

    def output_shape(self, input_shape):
        shape = super().output_shape(input_shape)
        return (shape, shape) if self.return_indices else shape

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        x = self._batch_spec(input_shape, batch_size, dtype)
        rule = max_pool2d_memory(x, **self._geometry_kwargs())
        if self.return_indices:  # the int64 indices are an output; their planes' offsets a temporary
            out = output_shape[0] if isinstance(output_shape[0], (tuple, list)) else output_shape
            rule.forward_temp += 2 * batch_size * 8 * int(np.prod(out))
        return rule

    def onnx_export(self, ctx, x, prefix):
        attrs = self._onnx_attrs(ctx, "MaxPool", prefix, dilations_opset=10, ceil_opset=10)
        if self.storage_order:
            attrs["storage_order"] = self.storage_order
        name = ctx.join(prefix, "MaxPool")
        if self.return_indices:
            return ctx.node_outputs("MaxPool", [x], name, 2, **attrs)
        return ctx.node("MaxPool", [x], name, **attrs)

    def extra_repr(self) -> str:
        extra = f", return_indices=True, storage_order={self.storage_order}" if self.return_indices else ""
        return super().extra_repr() + extra


class OnnxAveragePool(_OnnxPool):
    """ONNX ``AveragePool``: the window sum divided by the window's real elements
    (``count_include_pad=0``, ONNX's default) or by its taps inside the declared padding
    (``count_include_pad=1``); pads may differ on the two sides; dilations allowed.

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW), OH = floor_or_ceil((H + PT + PB - DH*(KH-1) - 1) / SH) + 1
    """

    def __init__(self, kernel, strides=None, pads=None, dilations=None, ceil_mode=False, count_include_pad=False):
        super().__init__(kernel, strides, pads, dilations, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x):
        y, cache = avg_pool2d_forward(self._as_2d(x), self._kernel, self._stride, self._pads, self.ceil_mode,
                                      self.count_include_pad, layer="AveragePool", dilation=self._dilation,
                                      padding_rule="onnx")
        self._save(cache)
        return self._from_2d(y)

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return self._from_2d(avg_pool2d_backward(self._as_2d(dy), cache)) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return avg_pool2d_memory(self._batch_spec(input_shape, batch_size, dtype),
                                 count_include_pad=self.count_include_pad, **self._geometry_kwargs())

    def onnx_export(self, ctx, x, prefix):
        attrs = self._onnx_attrs(ctx, "AveragePool", prefix, dilations_opset=19, ceil_opset=10)
        attrs["count_include_pad"] = int(self.count_include_pad)
        return ctx.node("AveragePool", [x], ctx.join(prefix, "AveragePool"), **attrs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", count_include_pad={self.count_include_pad}"


class OnnxLpPool(_OnnxPool):
    """ONNX ``LpPool``: ``(sum over the window of |x|^p)^(1/p)`` with zero padding.

    Unlike PyTorch's ``LPPool2d`` it takes ``|x|`` (odd ``p`` and negative inputs are fine), pads,
    dilations, and does not rescale ceil-mode windows cut by the input edge.

    Shape:
        input (N, C, H, W) -> output (N, C, OH, OW), OH = floor_or_ceil((H + PT + PB - DH*(KH-1) - 1) / SH) + 1
    """

    def __init__(self, p, kernel, strides=None, pads=None, dilations=None, ceil_mode=False):
        super().__init__(kernel, strides, pads, dilations, ceil_mode)
        self.p = float(p)
        if not self.p > 0:
            raise ValueError(f"OnnxLpPool: p must be positive, got {p}")

    def forward(self, x):
        y, cache = lp_pool2d_forward(self._as_2d(x), self.p, self._kernel, self._stride, self.ceil_mode,
                                     layer="LpPool", definition="onnx", padding=self._pads, dilation=self._dilation)
        self._save(cache)
        return self._from_2d(y)

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return self._from_2d(lp_pool2d_backward(self._as_2d(dy), cache)) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return lp_pool2d_memory(self._batch_spec(input_shape, batch_size, dtype), self.p, definition="onnx",
                                **self._geometry_kwargs())

    def onnx_export(self, ctx, x, prefix):
        if self.p != int(self.p):
            raise NotImplementedError(f"ONNX export: LpPool {prefix!r} has p={self.p}; ONNX's p is an integer")
        attrs = self._onnx_attrs(ctx, "LpPool", prefix, dilations_opset=18, ceil_opset=18)
        return ctx.node("LpPool", [x], ctx.join(prefix, "LpPool"), p=int(self.p), **attrs)

    def extra_repr(self) -> str:
        return f"p={self.p}, " + super().extra_repr()
