"""Activation layers: ``ReLU``, ``LeakyReLU``, ``Tanh``, ``Sigmoid``, ``Softmax``, ``LogSoftmax``,
``Identity``; thin wrappers over :mod:`cnnkit.functional.activation`.

They take inputs of any rank and keep their dtype. ``inplace`` is accepted so PyTorch model code
ports unchanged, but cnnkit never works in place (deliberate difference): the previous layer may
have cached the very array an in-place ReLU would overwrite.
"""
from __future__ import annotations

from numbers import Real

from ..functional import activation as F
from ..functional.memory import ArraySpec, LayerMemory
from .module import Module
from .validation import check_input

__all__ = ["ReLU", "LeakyReLU", "Hardswish", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Identity"]  # what cnnkit.nn exports from here


def check_any_rank(x, layer: str) -> None:
    """Raise a clear error unless ``x`` is a floating-point array (any rank)."""
    check_input(x, layer, getattr(x, "ndim", -1))


class _Elementwise(Module):
    """An activation applied element by element: subclasses name their two kernels."""

    def _forward_kernel(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward_kernel(self, dy, cache):  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, x) -> None:
        check_any_rank(x, type(self).__name__)

    def forward(self, x):
        self._check(x)
        y, cache = self._forward_kernel(x)
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return self._backward_kernel(dy, cache) if input_grad else None

    def macs(self, input_shape, output_shape) -> int:
        return 0  # element-wise: not counted, as in the papers' tables

    # Most activations keep their output (see cnnkit.functional.activation); a layer that keeps
    # something else says so.
    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return F.output_memory(ArraySpec((batch_size,) + tuple(input_shape), dtype))

    _onnx_op = ""

    def _onnx_attrs(self) -> dict:
        return {}

    def onnx_export(self, ctx, x, prefix):
        return ctx.node(self._onnx_op, [x], ctx.join(prefix, self._onnx_op), **self._onnx_attrs())


class ReLU(_Elementwise):
    """``y = max(x, 0)``.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    _onnx_op = "Relu"

    def __init__(self, inplace: bool = False, *, algorithm: str = "auto"):
        super().__init__()
        self.inplace = bool(inplace)  # accepted for PyTorch compatibility; never used
        self.algorithm = F.RELU.check_algorithm(algorithm, "ReLU")
        self.last_algorithm = None

    def _forward_kernel(self, x):
        return self._run(F.RELU, x)

    def _backward_kernel(self, dy, cache):
        return F.RELU.backward(dy, cache)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return F.RELU.memory(self.algorithm, ArraySpec((batch_size,) + tuple(input_shape), dtype))

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # in place, in the notes' convention


class LeakyReLU(_Elementwise):
    """``y = x`` for ``x > 0``, ``negative_slope * x`` otherwise.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, Real):
            raise ValueError(f"LeakyReLU: negative_slope must be a number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)
        self.inplace = bool(inplace)  # accepted for PyTorch compatibility; never used

    def _forward_kernel(self, x):
        return F.leaky_relu_forward(x, self.negative_slope)

    def _backward_kernel(self, dy, cache):
        return F.leaky_relu_backward(dy, cache)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return F.leaky_relu_memory(ArraySpec((batch_size,) + tuple(input_shape), dtype))

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # in place, in the notes' convention

    _onnx_op = "LeakyRelu"

    def _onnx_attrs(self) -> dict:
        return {"alpha": self.negative_slope}

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Hardswish(_Elementwise):
    """``y = x * relu6(x + 3) / 6`` (Howard et al. 2019, MobileNetV3), PyTorch's ``nn.Hardswish``.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = bool(inplace)  # accepted for PyTorch compatibility; never used

    def _forward_kernel(self, x):
        return F.hardswish_forward(x)

    def _backward_kernel(self, dy, cache):
        return F.hardswish_backward(dy, cache)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return F.input_memory(ArraySpec((batch_size,) + tuple(input_shape), dtype))

    def onnx_export(self, ctx, x, prefix):
        if ctx.opset >= 14:
            return ctx.node("HardSwish", [x], ctx.join(prefix, "HardSwish"))
        gate = ctx.node("HardSigmoid", [x], ctx.join(prefix, "HardSigmoid"), alpha=1 / 6, beta=0.5)
        return ctx.node("Mul", [x, gate], ctx.join(prefix, "Mul"))


class Tanh(_Elementwise):
    """``y = tanh(x)``.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    _onnx_op = "Tanh"

    def _forward_kernel(self, x):
        return F.tanh_forward(x)

    def _backward_kernel(self, dy, cache):
        return F.tanh_backward(dy, cache)


class Sigmoid(_Elementwise):
    """``y = 1 / (1 + exp(-x))`` (computed without overflow).

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    _onnx_op = "Sigmoid"

    def _forward_kernel(self, x):
        return F.sigmoid_forward(x)

    def _backward_kernel(self, dy, cache):
        return F.sigmoid_backward(dy, cache)


class _AlongDim(_Elementwise):
    """Softmax-like layers normalising along ``dim`` (default 1, the class/channel axis)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ValueError(f"{type(self).__name__}: dim must be an int, got {dim!r}")
        self.dim = dim

    def _check(self, x) -> None:
        super()._check(x)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(
                f"{type(self).__name__}: dim={self.dim} is out of range for an input of shape "
                f"{tuple(x.shape)} (valid: {-x.ndim} to {x.ndim - 1})"
            )

    def _onnx_attrs(self) -> dict:
        return {"axis": self.dim}

    def onnx_export(self, ctx, x, prefix):
        rank = len(ctx.shape(x)) + 1
        axis = self.dim % rank
        if ctx.opset >= 13 or axis == rank - 1:
            return ctx.node(self._onnx_op, [x], ctx.join(prefix, self._onnx_op), axis=axis)
        # Before opset 13, ONNX's (Log)Softmax normalises over every axis from `axis` on: move
        # this layer's axis last, normalise there, move it back (the swap is its own inverse).
        perm = list(range(rank))
        perm[axis], perm[-1] = perm[-1], perm[axis]
        moved = ctx.node("Transpose", [x], ctx.join(prefix, "Transpose"), perm=perm)
        y = ctx.node(self._onnx_op, [moved], ctx.join(prefix, self._onnx_op), axis=rank - 1)
        return ctx.node("Transpose", [y], ctx.join(prefix, "Transpose_back"), perm=perm)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_AlongDim):
    """``y = exp(x) / sum(exp(x))`` along ``dim`` (max-subtracted, so large logits do not overflow).

    Shape:
        input (N, C, *) -> output (N, C, *), same shape, summing to 1 along ``dim``
    """

    _onnx_op = "Softmax"

    def _forward_kernel(self, x):
        return F.softmax_forward(x, axis=self.dim)

    def _backward_kernel(self, dy, cache):
        return F.softmax_backward(dy, cache)


class LogSoftmax(_AlongDim):
    """``y = log(softmax(x))`` along ``dim``, computed stably (never ``log(0)``).

    Shape:
        input (N, C, *) -> output (N, C, *), same shape
    """

    _onnx_op = "LogSoftmax"

    def _forward_kernel(self, x):
        return F.log_softmax_forward(x, axis=self.dim)

    def _backward_kernel(self, dy, cache):
        return F.log_softmax_backward(dy, cache)


class Identity(Module):
    """``y = x``; accepts and ignores any arguments, as PyTorch's ``nn.Identity``.

    Shape:
        input (N, *) -> output (N, *), the same array
    """

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        # The cache is only the shape: it records that a forward happened, so backward keeps the
        # one-backward-per-forward contract of every other layer.
        self._save(tuple(x.shape))
        return x

    def backward(self, dy, input_grad: bool = True):
        self._restore()
        return dy if input_grad else None

    def macs(self, input_shape, output_shape) -> int:
        return 0  # the identity

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(aliases_input=True)  # the output is the input; only its shape is cached

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False

    def onnx_export(self, ctx, x, prefix):
        return x
