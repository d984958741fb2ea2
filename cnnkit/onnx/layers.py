"""Small layers that ONNX graphs need and the classic layer set lacks: reshape, constant-pad, clip,
element-wise arithmetic with a constant operand, matrix product with a constant, global max pooling,
subtraction of two tensors.

They follow the layer contract (forward caches, backward returns the input gradient and accumulates
parameter gradients), so imported models train. A constant operand that came from an ONNX
initializer is a trainable ``Parameter``; one from a ``Constant`` node is a buffer.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..nn.graph import MultiInputModule, unbroadcast
from ..nn.module import Module, Parameter
from ..nn.validation import check_input


def _sample_broadcast(layer: str, sample_shape, constant_shape) -> tuple:
    """One sample's shape after broadcasting with a constant (whose leading axis may be the batch)."""
    full = (1,) + tuple(sample_shape)
    try:
        out = np.broadcast_shapes(full, tuple(constant_shape))
    except ValueError:
        raise ValueError(f"{layer}: input shape (N, {', '.join(map(str, sample_shape))}) does not broadcast "
                         f"with the constant of shape {tuple(constant_shape)}") from None
    if len(out) != len(full) or out[0] != 1:
        raise ValueError(f"{layer}: the constant of shape {tuple(constant_shape)} would change the batch axis")
    return tuple(out[1:])


class _WithConstant(Module):
    """Holds ``constant`` (a Parameter when trainable, else a buffer) under ``attr``."""

    attr = "constant"

    def __init__(self, value, trainable: bool = True):
        super().__init__()
        value = np.asarray(value)
        if trainable:
            setattr(self, self.attr, Parameter(value))
        else:
            self.register_buffer(self.attr, value)

    def _value(self):
        value = getattr(self, self.attr)
        return value.data if isinstance(value, Parameter) else value

    def _param(self):
        value = getattr(self, self.attr)
        return value if isinstance(value, Parameter) else None

    def output_shape(self, input_shape):
        return _sample_broadcast(type(self).__name__, input_shape, self._value().shape)

    def extra_repr(self) -> str:
        return f"shape={tuple(self._value().shape)}"


class AddConstant(_WithConstant):
    """``y = x + bias`` with a broadcast constant (ONNX ``Add``/``Sub`` with one constant operand).

    Shape:
        input (N, *) -> output (N, *) broadcast with ``bias``
    """

    attr = "bias"

    def forward(self, x):
        check_input(x, "AddConstant", x.ndim)
        self._save(x.shape)
        return x + self._value().astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        param = self._param()
        if param is not None and param.requires_grad:
            param.accumulate_grad(unbroadcast(dy, param.shape))
        return unbroadcast(dy, shape) if input_grad else None


class MulConstant(_WithConstant):
    """``y = x * weight`` with a broadcast constant (ONNX ``Mul``/``Div`` with one constant operand).

    Shape:
        input (N, *) -> output (N, *) broadcast with ``weight``
    """

    attr = "weight"

    def forward(self, x):
        check_input(x, "MulConstant", x.ndim)
        self._save(x)
        return x * self._value().astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        x = self._restore()
        param = self._param()
        if param is not None and param.requires_grad:
            param.accumulate_grad(unbroadcast(dy * x, param.shape))
        return unbroadcast(dy * self._value().astype(dy.dtype, copy=False), x.shape) if input_grad else None


class MatMulConstant(_WithConstant):
    """``y = x @ weight`` (``constant_on_left=False``) or ``y = weight @ x`` with NumPy's matmul
    broadcasting (ONNX ``MatMul`` with one constant operand).

    Shape:
        x (N, ..., M, K) @ weight (K, P) -> (N, ..., M, P); weight (P, M) @ x (N, ..., M, K) -> (N, ..., P, K)
    """

    attr = "weight"

    def __init__(self, value, trainable: bool = True, constant_on_left: bool = False):
        super().__init__(value, trainable)
        if np.ndim(value) != 2:
            raise ValueError(f"MatMulConstant: the constant must be 2-D, got shape {np.shape(value)}")
        self.constant_on_left = bool(constant_on_left)

    def forward(self, x):
        check_input(x, "MatMulConstant", x.ndim)
        w = self._value().astype(x.dtype, copy=False)
        self._save(x)
        return w @ x if self.constant_on_left else x @ w

    def backward(self, dy, input_grad: bool = True):
        x = self._restore()
        w = self._value().astype(dy.dtype, copy=False)
        param = self._param()
        xp = array_module(dy)
        if param is not None and param.requires_grad:
            # dW = sum over every leading (batch) axis of x^T dy (or dy x^T on the left)
            if self.constant_on_left:
                g = xp.matmul(dy, xp.swapaxes(x, -1, -2))
            else:
                g = xp.matmul(xp.swapaxes(x, -1, -2), dy)
            param.accumulate_grad(g.reshape(-1, *w.shape).sum(axis=0))
        if not input_grad:
            return None
        return w.T @ dy if self.constant_on_left else dy @ w.T

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        w = self._value().shape
        if len(shape) == 1:  # (N, K): the sample is a row vector
            if self.constant_on_left or shape[0] != w[0]:
                raise ValueError(f"MatMulConstant: cannot multiply (N, {shape[0]}) by the constant {tuple(w)}")
            return (w[1],)
        if self.constant_on_left:
            if shape[-2] != w[1]:
                raise ValueError(f"MatMulConstant: constant {tuple(w)} @ input (N, {shape}) do not match")
            return shape[:-2] + (w[0], shape[-1])
        if shape[-1] != w[0]:
            raise ValueError(f"MatMulConstant: input (N, {shape}) @ constant {tuple(w)} do not match")
        return shape[:-1] + (w[1],)

    def extra_repr(self) -> str:
        return f"shape={tuple(self._value().shape)}, constant_on_left={self.constant_on_left}"


class Sub(MultiInputModule):
    """``y = a - b`` with broadcasting (ONNX ``Sub`` of two tensors).

    Shape:
        inputs broadcast together -> output of the broadcast shape
    """

    def forward(self, a, b):
        self._save((a.shape, b.shape))
        return a - b

    def backward(self, dy, input_grad: bool = True):
        sa, sb = self._restore()
        return (unbroadcast(dy, sa), -unbroadcast(dy, sb)) if input_grad else None

    def output_shape(self, a, b):
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))


class Reshape(Module):
    """Reshape each batch to ``shape`` (ONNX ``Reshape``): ``0`` copies the input's size on that
    axis (unless ``allowzero``), ``-1`` is inferred. ``shape`` includes the batch axis.

    Shape:
        input (N, *) -> output ``shape`` with 0 and -1 resolved
    """

    def __init__(self, shape, allowzero: bool = False):
        super().__init__()
        shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
        if sum(s == -1 for s in shape) > 1 or any(s < -1 for s in shape):
            raise ValueError(f"Reshape: shape may hold at most one -1 and no other negative value, got {shape}")
        self.shape = shape
        self.allowzero = bool(allowzero)

    def _target(self, input_shape) -> tuple:
        if self.allowzero:
            return self.shape
        return tuple(input_shape[i] if s == 0 and i < len(input_shape) else s for i, s in enumerate(self.shape))

    def forward(self, x):
        target = self._target(x.shape)
        try:
            y = x.reshape(target)
        except ValueError:
            raise ValueError(f"Reshape: cannot reshape an input of shape {tuple(x.shape)} to {self.shape}") from None
        self._save(x.shape)
        return y

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        return dy.reshape(shape) if input_grad else None

    def output_shape(self, input_shape):
        full = (2,) + tuple(input_shape)  # a batch of 2 tells a real batch axis from a folded one
        target = self._target(full)
        size = int(np.prod(full))
        known = int(np.prod([s for s in target if s != -1]))
        if -1 in target:
            if known == 0 or size % known:
                raise ValueError(f"Reshape: cannot reshape (N, {tuple(input_shape)}) to {self.shape}")
            target = tuple(size // known if s == -1 else s for s in target)
        if int(np.prod(target)) != size or target[0] != 2:
            raise ValueError(f"Reshape: {self.shape} does not keep the batch axis of (N, {tuple(input_shape)})")
        return target[1:]

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class ConstantPad(Module):
    """Pad with a constant (ONNX ``Pad``, mode ``constant``); ``pads`` as ONNX orders them:
    ``(x1_begin, x2_begin, ..., x1_end, x2_end, ...)`` over every axis including the batch.

    Shape:
        axis i grows by ``pads[i] + pads[i + ndim]``
    """

    def __init__(self, pads, value: float = 0.0):
        super().__init__()
        pads = tuple(int(p) for p in pads)
        if len(pads) % 2 or any(p < 0 for p in pads):
            raise ValueError(f"ConstantPad: pads must be 2*ndim non-negative ints, got {pads}")
        self.pads = pads
        self.value = float(value)

    def _widths(self, ndim: int):
        if len(self.pads) != 2 * ndim:
            raise ValueError(f"ConstantPad: pads {self.pads} are for {len(self.pads) // 2}-D inputs, got {ndim}-D")
        half = len(self.pads) // 2
        return [(self.pads[i], self.pads[i + half]) for i in range(half)]

    def forward(self, x):
        widths = self._widths(x.ndim)
        self._save(widths)
        return array_module(x).pad(x, widths, mode="constant", constant_values=self.value)

    def backward(self, dy, input_grad: bool = True):
        widths = self._restore()
        if not input_grad:
            return None
        return dy[tuple(slice(b, dy.shape[i] - e) for i, (b, e) in enumerate(widths))]

    def output_shape(self, input_shape):
        widths = self._widths(len(input_shape) + 1)
        if widths[0] != (0, 0):
            raise ValueError(f"ConstantPad: pads {self.pads} pad the batch axis; no per-sample shape")
        return tuple(s + b + e for s, (b, e) in zip(input_shape, widths[1:]))

    def extra_repr(self) -> str:
        return f"pads={self.pads}, value={self.value}"


class Clip(Module):
    """``y = min(max(x, min), max)`` (ONNX ``Clip``; ReLU6 is ``Clip(0, 6)``); the gradient passes
    where ``min <= x <= max``, as in PyTorch's ``clamp``.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, min: float | None = None, max: float | None = None):
        super().__init__()
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)

    def forward(self, x):
        check_input(x, "Clip", x.ndim)
        xp = array_module(x)
        lo = -np.inf if self.min is None else self.min
        hi = np.inf if self.max is None else self.max
        self._save((x >= lo) & (x <= hi))
        return xp.clip(x, lo, hi).astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        inside = self._restore()
        return dy * inside if input_grad else None

    def extra_repr(self) -> str:
        return f"min={self.min}, max={self.max}"


class GlobalMaxPool(Module):
    """Maximum over all spatial positions, keeping them as size-1 axes (ONNX ``GlobalMaxPool``);
    backward routes each gradient to the first maximum.

    Shape:
        input (N, C, H, W) -> output (N, C, 1, 1)
    """

    def forward(self, x):
        check_input(x, "GlobalMaxPool", 4)
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        index = flat.argmax(axis=2)
        self._save((x.shape, index))
        return array_module(x).take_along_axis(flat, index[..., None], axis=2).reshape(n, c, 1, 1)

    def backward(self, dy, input_grad: bool = True):
        shape, index = self._restore()
        if not input_grad:
            return None
        n, c, h, w = shape
        dx = array_module(dy).zeros((n, c, h * w), dtype=dy.dtype)
        array_module(dy).put_along_axis(dx, index[..., None], dy.reshape(n, c, 1), axis=2)
        return dx.reshape(shape)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"GlobalMaxPool expects one sample (C, H, W), got {tuple(input_shape)}")
        return (input_shape[0], 1, 1)


class Slice(Module):
    """``y = x[starts:ends:steps]`` along ``axes`` (ONNX ``Slice`` of a computed tensor; axes count
    the batch axis, which must not be sliced); backward scatters ``dy`` into zeros.

    Shape:
        along each axis a: len(range(starts, ends, steps)) clipped to the input size
    """

    def __init__(self, starts, ends, axes, steps):
        super().__init__()
        self.starts, self.ends = [int(s) for s in starts], [int(e) for e in ends]
        self.axes, self.steps = [int(a) for a in axes], [int(s) for s in steps]
        if any(s == 0 for s in self.steps):
            raise ValueError(f"Slice: steps must be non-zero, got {self.steps}")

    def _index(self, ndim: int):
        index = [slice(None)] * ndim
        for a, s, e, st in zip(self.axes, self.starts, self.ends, self.steps):
            a = a + ndim if a < 0 else a
            if a == 0:
                raise ValueError("Slice: slicing the batch axis is not supported")
            index[a] = slice(s, e, st)
        return tuple(index)

    def forward(self, x):
        index = self._index(x.ndim)
        self._save((x.shape, index))
        return x[index]

    def backward(self, dy, input_grad: bool = True):
        shape, index = self._restore()
        if not input_grad:
            return None
        dx = array_module(dy).zeros(shape, dtype=dy.dtype)
        dx[index] = dy
        return dx

    def output_shape(self, input_shape):
        return np.empty((1,) + tuple(input_shape), dtype=np.bool_)[self._index(len(input_shape) + 1)].shape[1:]

    def extra_repr(self) -> str:
        return f"starts={self.starts}, ends={self.ends}, axes={self.axes}, steps={self.steps}"
