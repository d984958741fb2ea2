"""Small layers that ONNX graphs need and the classic layer set lacks: reshape, constant-pad, clip,
element-wise arithmetic with a constant operand, matrix product with a constant, global max pooling,
subtraction of two tensors, slicing.

They follow the layer contract (forward caches, backward returns the input gradient and accumulates
parameter gradients), so imported models train. A constant operand that came from an ONNX
initializer is a trainable ``Parameter``; one from a ``Constant`` node is a buffer.

Like every cnnkit layer they carry the rules the tools read (see :mod:`cnnkit.nn.module`):
``macs`` (0 but for matrix products), ``step_memory`` (what forward keeps and allocates, read off
the code below), ``counts_activation`` where the output is a view or an activation that runs in
place in the notes' convention (ReLU6), and ``onnx_export``, which emits the operator the
importer read, so an imported graph exports back. For a layer with several inputs the rules get
a tuple of one sample's shapes (:func:`sample_shapes`), for one with several outputs a tuple of
output shapes.

ONNX operators work on whole tensors, batch axis included (a ``Reshape`` target names it, a
``Transpose`` may move it). Layers written that way derive from :class:`FullShapeLayer`: they
answer ``full_output_shape(*full_shapes)``, and their per-sample ``output_shape`` (what
``summary`` and ``Graph.output_shape`` use) works whenever the layer keeps the batch axis where
it is.
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..functional.memory import LayerMemory, numel
from ..nn.graph import MultiInputModule, unbroadcast
from ..nn.module import Module, Parameter

# A batch size that no real dimension is likely to equal: per-sample shapes are answered by
# asking the full-shape rule about a batch of this many and checking the batch axis survives.
PROBE_BATCH = 7919


class FullShapeLayer:
    """Mixin: ``output_shape`` (one sample) from ``full_output_shape`` (whole tensors)."""

    def full_output_shape(self, *shapes):  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, *samples):
        try:
            out = tuple(self.full_output_shape(*[(PROBE_BATCH,) + tuple(s) for s in samples]))
        except ValueError as exc:
            self.full_output_shape(*[(1,) + tuple(s) for s in samples])  # a wrong sample shape: its own error
            raise ValueError(f"{type(self).__name__} ({self.extra_repr()}) works only at the batch size it was built "
                             f"for (a constant or a target shape holds it), so it has no per-sample output shape "
                             f"(at a batch of {PROBE_BATCH}: {exc})") from None
        if not out or out[0] != PROBE_BATCH:
            raise ValueError(f"{type(self).__name__} ({self.extra_repr()}) moves or merges the batch axis; it "
                             "has no per-sample output shape and runs only at the batch size it was built for")
        return out[1:]


class _OnnxLayer(Module):
    """Base of the one-input layers ONNX import adds: none does the multiply-adds the papers count
    (the matrix products override ``macs``)."""

    def macs(self, input_shape, output_shape) -> int:
        return 0


class _View(_OnnxLayer):
    """A layer whose output is a view of its input, reshaped to ``full_output_shape``: only the
    input's shape is cached, and backward reshapes the gradient back to it."""

    def forward(self, x):
        target = self.full_output_shape(x.shape)  # a bad shape raises before anything is cached
        self._save(x.shape)
        return x.reshape(target)

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        return dy.reshape(shape) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(aliases_input=True)

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # a view, as Flatten


def batch_bytes(shape, batch_size: int, dtype) -> int:
    """Bytes of a batch of ``batch_size`` samples of one-sample ``shape`` in ``dtype``."""
    return int(batch_size) * numel(shape) * np.dtype(dtype).itemsize


def sample_shapes(input_shape) -> list[tuple]:
    """The input shapes a rule was given: one shape, or a tuple of shapes for several inputs."""
    if input_shape and all(isinstance(s, (tuple, list)) for s in input_shape):
        return [tuple(s) for s in input_shape]
    return [tuple(input_shape)]


def broadcast_full(layer: str, *shapes) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ValueError(f"{layer}: shapes {[tuple(s) for s in shapes]} do not broadcast together") from None


class _WithConstant(FullShapeLayer, _OnnxLayer):
    """Holds ``constant`` (a Parameter when trainable, else a buffer) under ``attr``."""

    attr = "constant"

    def __init__(self, value, trainable: bool = True):
        super().__init__()
        value = np.array(value, copy=True)  # our own, writable copy: an optimizer updates it in place
        if trainable and np.issubdtype(value.dtype, np.floating):
            setattr(self, self.attr, Parameter(value))
        else:
            self.register_buffer(self.attr, value)

    def _value(self):
        value = getattr(self, self.attr)
        return value.data if isinstance(value, Parameter) else value

    def _param(self):
        value = getattr(self, self.attr)
        return value if isinstance(value, Parameter) and value.requires_grad else None

    def _cast(self, x):
        value = self._value()
        return value.astype(x.dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else value

    def _binary_export(self, ctx, x, prefix, op: str, constant_first: bool = False):
        """``op(x, constant)`` (or ``op(constant, x)``), the constant under its state-dict name."""
        c = ctx.constant(ctx.join(prefix, self.attr), self._value(), like=x)
        return ctx.node(op, [c, x] if constant_first else [x, c], ctx.join(prefix, op))

    def full_output_shape(self, shape):
        return broadcast_full(type(self).__name__, shape, self._value().shape)

    def extra_repr(self) -> str:
        return f"shape={tuple(self._value().shape)}"


class AddConstant(_WithConstant):
    """``y = x + bias`` with a broadcast constant (ONNX ``Add``/``Sub`` with one constant operand).

    Shape:
        input (N, *) -> output: input broadcast with ``bias``
    """

    attr = "bias"

    def forward(self, x):
        self._save(x.shape)
        return x + self._cast(x)

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        param = self._param()
        if param is not None:
            param.accumulate_grad(unbroadcast(dy, param.shape))
        return unbroadcast(dy, shape) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the input shape is cached; the bias gradient is a sum of dy

    def onnx_export(self, ctx, x, prefix):
        return self._binary_export(ctx, x, prefix, "Add")


class MulConstant(_WithConstant):
    """``y = x * weight`` with a broadcast constant (ONNX ``Mul``/``Div`` with one constant operand).

    Shape:
        input (N, *) -> output: input broadcast with ``weight``
    """

    attr = "weight"

    def forward(self, x):
        self._save(x)
        return x * self._cast(x)

    def backward(self, dy, input_grad: bool = True):
        x = self._restore()
        param = self._param()
        if param is not None:
            param.accumulate_grad(unbroadcast(dy * x, param.shape))
        return unbroadcast(dy * self._cast(dy), x.shape) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x is cached (the weight's gradient); backward makes dy * x before summing it
        product = batch_bytes(output_shape, batch_size, dtype) if self._param() is not None else 0
        return LayerMemory(keeps_input=True, backward_temp=product)

    def onnx_export(self, ctx, x, prefix):
        return self._binary_export(ctx, x, prefix, "Mul")


def matmul_shape(layer: str, a, b) -> tuple:
    """NumPy's ``matmul`` shape rule (1-D operands promoted, leading axes broadcast)."""
    a, b = tuple(a), tuple(b)
    if not a or not b:
        raise ValueError(f"{layer}: matmul needs operands of rank >= 1, got {a} and {b}")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ValueError(f"{layer}: shapes {a} @ {b} do not match ({a2[-1]} != {b2[-2]})")
    lead = broadcast_full(layer, a2[:-2], b2[:-2])
    out = lead + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def matmul_grads(a, b, dy, need_a: bool, need_b: bool):
    """Gradients of ``y = a @ b`` (NumPy semantics, any ranks) w.r.t. ``a`` and ``b``."""
    xp = array_module(dy)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    dy2 = dy
    if a.ndim == 1:
        dy2 = xp.expand_dims(dy2, -2)
    if b.ndim == 1:
        dy2 = xp.expand_dims(dy2, -1)
    da = db = None
    if need_a:
        da = unbroadcast(xp.matmul(dy2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
    if need_b:
        db = unbroadcast(xp.matmul(xp.swapaxes(a2, -1, -2), dy2), b2.shape).reshape(b.shape)
    return da, db


class MatMulConstant(_WithConstant):
    """``y = x @ weight`` (``constant_on_left=False``) or ``y = weight @ x`` with NumPy's matmul
    broadcasting (ONNX ``MatMul`` with one constant operand).

    Shape:
        x (N, ..., M, K) @ weight (K, P) -> (N, ..., M, P); weight (P, M) @ x (N, ..., M, K) -> (N, ..., P, K)
    """

    attr = "weight"

    def __init__(self, value, trainable: bool = True, constant_on_left: bool = False):
        super().__init__(value, trainable)
        if np.ndim(value) < 1:
            raise ValueError(f"MatMulConstant: the constant must have rank >= 1, got shape {np.shape(value)}")
        self.constant_on_left = bool(constant_on_left)

    def forward(self, x):
        w = self._cast(x)
        self._save(x)
        return array_module(x).matmul(w, x) if self.constant_on_left else array_module(x).matmul(x, w)

    def backward(self, dy, input_grad: bool = True):
        x = self._restore()
        w = self._cast(dy)
        param = self._param()
        if self.constant_on_left:
            dw, dx = matmul_grads(w, x, dy, param is not None, input_grad)
        else:
            dx, dw = matmul_grads(x, w, dy, input_grad, param is not None)
        if param is not None:
            param.accumulate_grad(dw)
        return dx if input_grad else None

    def full_output_shape(self, shape):
        w = self._value().shape
        return matmul_shape("MatMulConstant", w, shape) if self.constant_on_left else matmul_shape("MatMulConstant", shape, w)

    def _contracted(self) -> int:
        w = self._value().shape
        return w[-1] if self.constant_on_left else (w[0] if len(w) == 1 else w[-2])

    def macs(self, input_shape, output_shape) -> int:
        return numel(output_shape) * self._contracted()  # each output is a dot product of that length

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # x is cached; the weight's gradient is one product per matrix of the batch, (..., K, P),
        # summed over the batched axes afterwards
        temp = 0
        if self._param() is not None:
            w = self._value().shape
            matrices = numel(output_shape[:-2]) if len(output_shape) >= 2 else 1
            temp = batch_size * matrices * numel(w[-2:]) * np.dtype(dtype).itemsize
        return LayerMemory(keeps_input=True, backward_temp=temp)

    def onnx_export(self, ctx, x, prefix):
        return self._binary_export(ctx, x, prefix, "MatMul", constant_first=self.constant_on_left)

    def extra_repr(self) -> str:
        return f"shape={tuple(self._value().shape)}, constant_on_left={self.constant_on_left}"


class Sub(FullShapeLayer, MultiInputModule):
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

    def full_output_shape(self, a, b):
        return broadcast_full("Sub", a, b)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the input shapes are cached

    def onnx_export(self, ctx, inputs, prefix):
        return ctx.node("Sub", inputs, prefix or "Sub")


def resolve_reshape(layer: str, input_shape, target, allowzero: bool) -> tuple:
    """ONNX's ``Reshape`` target for ``input_shape``: ``0`` copies the input's size on that axis
    (unless ``allowzero``), one ``-1`` is inferred."""
    input_shape = tuple(int(s) for s in input_shape)
    target = tuple(input_shape[i] if s == 0 and not allowzero and i < len(input_shape) else int(s)
                   for i, s in enumerate(target))
    size = int(np.prod(input_shape, dtype=np.int64))
    if -1 in target:
        known = int(np.prod([s for s in target if s != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise ValueError(f"{layer}: cannot reshape {input_shape} ({size} values) to {target}")
        target = tuple(size // known if s == -1 else s for s in target)
    if int(np.prod(target, dtype=np.int64)) != size:
        raise ValueError(f"{layer}: cannot reshape {input_shape} ({size} values) to {target}")
    return target


class Reshape(FullShapeLayer, _View):
    """Reshape to ``shape`` (ONNX ``Reshape``): ``0`` copies the input's size on that axis (unless
    ``allowzero``), ``-1`` is inferred. ``shape`` includes the batch axis; a leading ``0`` keeps
    it, so ``Reshape((0, -1))`` flattens each sample at any batch size.

    Shape:
        input (N, *) -> output ``shape`` with 0 and -1 resolved
    """

    def __init__(self, shape, allowzero: bool = False):
        super().__init__()
        shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
        if sum(s == -1 for s in shape) > 1 or any(s < -1 for s in shape):
            raise ValueError(f"Reshape: shape may hold at most one -1 and no other negative value, got {shape}")
        if allowzero and 0 in shape and -1 in shape:
            raise ValueError(f"Reshape: with allowzero, shape {shape} cannot hold both 0 and -1")
        self.shape = shape
        self.allowzero = bool(allowzero)

    def full_output_shape(self, shape):
        return resolve_reshape("Reshape", shape, self.shape, self.allowzero)

    def onnx_export(self, ctx, x, prefix):
        if not self.allowzero:
            return ctx.reshape(x, self.shape, prefix)
        ctx.require_opset(14, f"Reshape {prefix!r} with allowzero=1")
        shape = ctx.constant(ctx.join(prefix, "shape"), np.array(self.shape, np.int64))
        return ctx.node("Reshape", [x, shape], ctx.join(prefix, "Reshape"), allowzero=1)

    def extra_repr(self) -> str:
        return f"shape={self.shape}" + (", allowzero=True" if self.allowzero else "")


class ConstantPad(FullShapeLayer, _OnnxLayer):
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
        value = self.value
        if np.issubdtype(x.dtype, np.integer) and np.isinf(value):  # max pooling of integers pads with the minimum
            value = np.iinfo(x.dtype).min if value < 0 else np.iinfo(x.dtype).max
        return array_module(x).pad(x, widths, mode="constant", constant_values=value)

    def backward(self, dy, input_grad: bool = True):
        widths = self._restore()
        if not input_grad:
            return None
        return dy[tuple(slice(b, dy.shape[i] - e) for i, (b, e) in enumerate(widths))]

    def full_output_shape(self, shape):
        return tuple(s + b + e for s, (b, e) in zip(shape, self._widths(len(shape))))

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # the widths are cached; dx is a view of dy

    def onnx_export(self, ctx, x, prefix):
        return pad_export(ctx, x, prefix, self.pads, "constant", self.value)

    def extra_repr(self) -> str:
        return f"pads={self.pads}, value={self.value}"


def pad_export(ctx, x, prefix: str, pads, mode: str, value: float) -> str:
    """ONNX ``Pad``: pads (and the constant) as inputs from opset 11, attributes before."""
    if mode == "wrap":
        ctx.require_opset(19, f"Pad {prefix!r} in mode 'wrap'")
    if ctx.opset < 11:
        if any(p < 0 for p in pads):
            raise NotImplementedError(f"ONNX export: Pad {prefix!r} with negative pads needs opset >= 11")
        return ctx.node("Pad", [x], ctx.join(prefix, "Pad"), mode=mode, pads=list(pads), value=float(value))
    inputs = [x, ctx.constant(ctx.join(prefix, "pads"), np.array(pads, np.int64))]
    if mode == "constant":
        inputs.append(ctx.constant(ctx.join(prefix, "value"), np.array(value), like=x))
    return ctx.node("Pad", inputs, ctx.join(prefix, "Pad"), mode=mode)


class Clip(_OnnxLayer):
    """``y = min(max(x, min), max)`` (ONNX ``Clip``; ReLU6 is ``Clip(0, 6)``); the gradient passes
    where ``min <= x <= max``, as in PyTorch's ``clamp``. Integer tensors are clipped too.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, min: float | None = None, max: float | None = None):
        super().__init__()
        self.min = None if min is None else float(min)
        self.max = None if max is None else float(max)

    def forward(self, x):
        xp = array_module(x)
        lo = -np.inf if self.min is None else self.min
        hi = np.inf if self.max is None else self.max
        self._save((x >= lo) & (x <= hi))
        if not np.issubdtype(x.dtype, np.floating):
            return xp.clip(x, max(lo, np.iinfo(x.dtype).min), min(hi, np.iinfo(x.dtype).max)).astype(x.dtype)
        return xp.clip(x, lo, hi).astype(x.dtype, copy=False)

    def backward(self, dy, input_grad: bool = True):
        inside = self._restore()
        return dy * inside if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # the mask (x >= min) & (x <= max) is kept; its two halves are gone before the output is made
        return LayerMemory(saved=batch_bytes(input_shape, batch_size, np.bool_))

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # ReLU6 & co. run in place in the notes' convention, as ReLU

    def onnx_export(self, ctx, x, prefix):
        if ctx.opset < 11:
            bounds = {k: v for k, v in (("min", self.min), ("max", self.max)) if v is not None}
            return ctx.node("Clip", [x], ctx.join(prefix, "Clip"), **bounds)
        inputs = [x, "", ""]
        if self.min is not None:
            inputs[1] = ctx.constant(ctx.join(prefix, "min"), np.array(self.min), like=x)
        if self.max is not None:
            inputs[2] = ctx.constant(ctx.join(prefix, "max"), np.array(self.max), like=x)
        while inputs[-1] == "":
            inputs.pop()
        return ctx.node("Clip", inputs, ctx.join(prefix, "Clip"))

    def extra_repr(self) -> str:
        return f"min={self.min}, max={self.max}"


class GlobalMaxPool(_OnnxLayer):
    """Maximum over all spatial positions, keeping them as size-1 axes (ONNX ``GlobalMaxPool``);
    backward routes each gradient to the first maximum.

    Shape:
        input (N, C, *spatial) -> output (N, C, 1, ..., 1)
    """

    def forward(self, x):
        if x.ndim < 3:
            raise ValueError(f"GlobalMaxPool expects (N, C, *spatial), got shape {tuple(x.shape)}")
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        index = flat.argmax(axis=2)
        self._save((x.shape, index))
        return array_module(x).take_along_axis(flat, index[..., None], axis=2).reshape((n, c) + (1,) * (x.ndim - 2))

    def backward(self, dy, input_grad: bool = True):
        shape, index = self._restore()
        if not input_grad:
            return None
        n, c = shape[:2]
        dx = array_module(dy).zeros((n, c, int(np.prod(shape[2:]))), dtype=dy.dtype)
        array_module(dy).put_along_axis(dx, index[..., None], dy.reshape(n, c, 1), axis=2)
        return dx.reshape(shape)

    def output_shape(self, input_shape):
        if len(input_shape) < 2:
            raise ValueError(f"GlobalMaxPool expects one sample (C, *spatial), got {tuple(input_shape)}")
        return (input_shape[0],) + (1,) * (len(input_shape) - 1)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(saved=batch_size * input_shape[0] * 8)  # the int64 argmax of each (n, c)

    def onnx_export(self, ctx, x, prefix):
        return ctx.node("GlobalMaxPool", [x], ctx.join(prefix, "GlobalMaxPool"))


class Slice(FullShapeLayer, _OnnxLayer):
    """``y = x[starts:ends:steps]`` along ``axes`` (ONNX ``Slice`` of a computed tensor; axes count
    the batch axis); backward scatters ``dy`` into zeros.

    Shape:
        along each axis a: len(range(starts, ends, steps)) clipped to the input size
    """

    def __init__(self, starts, ends, axes, steps):
        super().__init__()
        self.starts, self.ends = [int(s) for s in starts], [int(e) for e in ends]
        self.axes, self.steps = [int(a) for a in axes], [int(s) for s in steps]
        if not len(self.starts) == len(self.ends) == len(self.axes) == len(self.steps):
            raise ValueError(f"Slice: starts, ends, axes and steps differ in length: {self.starts}, {self.ends}, "
                             f"{self.axes}, {self.steps}")
        if any(s == 0 for s in self.steps):
            raise ValueError(f"Slice: steps must be non-zero, got {self.steps}")

    def _index(self, ndim: int):
        index = [slice(None)] * ndim
        seen = set()
        for a, s, e, st in zip(self.axes, self.starts, self.ends, self.steps):
            if not -ndim <= a < ndim:
                raise ValueError(f"Slice: axis {a} is out of range for a {ndim}-D input")
            a = a + ndim if a < 0 else a
            if a in seen:
                raise ValueError(f"Slice: axis {a} is given twice in {self.axes}")
            seen.add(a)
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

    def full_output_shape(self, shape):
        index = self._index(len(shape))
        return tuple(len(range(*i.indices(s))) for i, s in zip(index, shape))

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(aliases_input=True)  # basic slicing: a view that holds the input

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # a view

    def onnx_export(self, ctx, x, prefix):
        if ctx.opset < 10:
            if any(s != 1 for s in self.steps):
                raise NotImplementedError(f"ONNX export: Slice {prefix!r} with steps {self.steps} needs opset >= 10")
            return ctx.node("Slice", [x], ctx.join(prefix, "Slice"), starts=self.starts, ends=self.ends,
                            axes=self.axes)
        inputs = [x] + [ctx.constant(ctx.join(prefix, n), np.array(v, np.int64)) for n, v in
                        (("starts", self.starts), ("ends", self.ends), ("axes", self.axes), ("steps", self.steps))]
        return ctx.node("Slice", inputs, ctx.join(prefix, "Slice"))

    def extra_repr(self) -> str:
        return f"starts={self.starts}, ends={self.ends}, axes={self.axes}, steps={self.steps}"
