"""Layers that move data without arithmetic, as ONNX's tensor operators define them on whole
tensors (batch axis included): transpose (a channel shuffle, an NHWC -> NCHW input), flatten at
any axis, squeeze/unsqueeze, concatenation along any axis, split, expand, tile, gather with
constant indices, pad by reflection/edge/wrap, cast.

Each backward is the adjoint of its forward: a permutation is undone, a broadcast is summed
back, gathered or padded positions scatter-add into the input's gradient. Each layer exports as
the operator it was imported from (see :mod:`.layers` for the rules).
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..functional.memory import LayerMemory
from ..nn.graph import Cat, MultiInputModule, unbroadcast
from ..nn.module import Parameter
from .layers import FullShapeLayer, _OnnxLayer, _View, batch_bytes, broadcast_full, pad_export


def _axis(axis: int, ndim: int, layer: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"{layer}: axis {axis} is out of range for a {ndim}-D tensor")
    return axis + ndim if axis < 0 else axis


def _axes_export(ctx, op: str, x: str, axes, prefix: str) -> str:
    """``Squeeze``/``Unsqueeze``: the axes as an input from opset 13, an attribute before (and
    non-negative before opset 11)."""
    if axes is None:
        return ctx.node(op, [x], ctx.join(prefix, op))
    if ctx.opset >= 13:
        return ctx.node(op, [x, ctx.constant(ctx.join(prefix, "axes"), np.array(axes, np.int64))], ctx.join(prefix, op))
    if ctx.opset < 11:  # count negative axes from the end of the input (Squeeze) or output (Unsqueeze)
        rank = len(ctx.shape(x)) + 1 + (len(axes) if op == "Unsqueeze" else 0)
        axes = [a + rank if a < 0 else a for a in axes]
    return ctx.node(op, [x], ctx.join(prefix, op), axes=list(axes))


class Transpose(FullShapeLayer, _OnnxLayer):
    """Permute the axes (ONNX ``Transpose``; ``perm=None`` reverses them); backward applies the
    inverse permutation.

    Shape:
        input (d0, d1, ...) -> output (d_perm[0], d_perm[1], ...)
    """

    def __init__(self, perm=None):
        super().__init__()
        self.perm = None if perm is None else tuple(int(p) for p in perm)

    def _perm(self, ndim: int) -> tuple:
        if self.perm is None:
            return tuple(range(ndim - 1, -1, -1))
        if sorted(self.perm) != list(range(ndim)):
            raise ValueError(f"Transpose: perm {self.perm} is not a permutation of the {ndim} axes")
        return self.perm

    def forward(self, x):
        perm = self._perm(x.ndim)
        self._save(perm)
        return x.transpose(perm)

    def backward(self, dy, input_grad: bool = True):
        perm = self._restore()
        return dy.transpose(np.argsort(perm)) if input_grad else None

    def full_output_shape(self, shape):
        return tuple(shape[p] for p in self._perm(len(shape)))

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # The transpose itself is a view, but the permuted layout is materialised by whatever
        # reads it (a Reshape copies it, a kernel makes it contiguous): counted as a new array.
        return LayerMemory()

    def onnx_export(self, ctx, x, prefix):
        attrs = {} if self.perm is None else {"perm": list(self.perm)}
        return ctx.node("Transpose", [x], ctx.join(prefix, "Transpose"), **attrs)

    def extra_repr(self) -> str:
        return f"perm={self.perm}"


class FlattenAt(FullShapeLayer, _View):
    """ONNX ``Flatten``: a 2-D output ``(d0*...*d_{axis-1}, d_axis*...*d_last)``; ``axis=1`` is
    ``nn.Flatten``, other axes merge the batch axis with others (or make it 1 with ``axis=0``).

    Shape:
        input (d0, ..., d_last) -> (prod(d[:axis]), prod(d[axis:]))
    """

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = int(axis)

    def full_output_shape(self, shape):
        axis = self.axis + len(shape) if self.axis < 0 else self.axis
        if not 0 <= axis <= len(shape):
            raise ValueError(f"Flatten: axis {self.axis} is out of range for a {len(shape)}-D tensor")
        return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))

    def onnx_export(self, ctx, x, prefix):
        axis = self.axis + len(ctx.shape(x)) + 1 if self.axis < 0 else self.axis  # ONNX < 11 has no negative axis
        return ctx.node("Flatten", [x], ctx.join(prefix, "Flatten"), axis=axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Squeeze(FullShapeLayer, _View):
    """Drop size-1 axes (ONNX ``Squeeze``; ``axes=None``: every size-1 axis).

    Shape:
        input (..., 1, ...) -> the same without the squeezed axes
    """

    def __init__(self, axes=None):
        super().__init__()
        self.axes = None if axes is None else tuple(int(a) for a in axes)

    def full_output_shape(self, shape):
        if self.axes is None:
            return tuple(s for s in shape if s != 1)
        axes = {_axis(a, len(shape), "Squeeze") for a in self.axes}
        for a in axes:
            if shape[a] != 1:
                raise ValueError(f"Squeeze: axis {a} of shape {tuple(shape)} has size {shape[a]}, not 1")
        return tuple(s for i, s in enumerate(shape) if i not in axes)

    def onnx_export(self, ctx, x, prefix):
        return _axes_export(ctx, "Squeeze", x, self.axes, prefix)

    def extra_repr(self) -> str:
        return f"axes={self.axes}"


class Unsqueeze(FullShapeLayer, _View):
    """Insert size-1 axes at ``axes`` (positions in the output, ONNX ``Unsqueeze``).

    Shape:
        input (d0, ...) -> the same with a 1 at each position in ``axes``
    """

    def __init__(self, axes):
        super().__init__()
        self.axes = tuple(int(a) for a in axes)

    def full_output_shape(self, shape):
        rank = len(shape) + len(self.axes)
        axes = sorted(_axis(a, rank, "Unsqueeze") for a in self.axes)
        if len(set(axes)) != len(axes):
            raise ValueError(f"Unsqueeze: axes {self.axes} repeat an axis")
        out = list(shape)
        for a in axes:
            out.insert(a, 1)
        return tuple(out)

    def onnx_export(self, ctx, x, prefix):
        return _axes_export(ctx, "Unsqueeze", x, self.axes, prefix)

    def extra_repr(self) -> str:
        return f"axes={self.axes}"


class AxisCat(FullShapeLayer, Cat):
    """``Cat`` along any axis, the batch axis included (ONNX ``Concat`` with ``axis=0``).

    Shape:
        inputs agree on every axis but ``dim`` -> output with the sizes along ``dim`` summed
    """

    def full_output_shape(self, *shapes):
        axis = _axis(self.dim, len(shapes[0]), "Concat")
        rest = {tuple(s for i, s in enumerate(shape) if i != axis) for shape in shapes}
        if len(rest) > 1 or len({len(s) for s in shapes}) > 1:
            raise ValueError(f"Concat(axis={self.dim}): inputs differ outside the axis: {[tuple(s) for s in shapes]}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    output_shape = FullShapeLayer.output_shape

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the widths are cached

    def onnx_export(self, ctx, inputs, prefix):
        return ctx.node("Concat", inputs, prefix or "Concat", axis=self.dim)


class Split(FullShapeLayer, _OnnxLayer):
    """Split along ``axis`` into pieces of the given ``sizes`` (ONNX ``Split``); forward returns
    a tuple, backward concatenates the pieces' gradients (zeros for unused pieces).

    Shape:
        input (..., sum(sizes), ...) -> one output per size
    """

    def __init__(self, axis: int, sizes):
        super().__init__()
        self.axis = int(axis)
        self.sizes = tuple(int(s) for s in sizes)
        if any(s < 0 for s in self.sizes):
            raise ValueError(f"Split: sizes must be >= 0, got {self.sizes}")

    def full_output_shape(self, shape):
        axis = _axis(self.axis, len(shape), "Split")
        if sum(self.sizes) != shape[axis]:
            raise ValueError(f"Split: sizes {self.sizes} do not add up to axis {axis} of shape {tuple(shape)}")
        return [tuple(s if i == axis else d for i, d in enumerate(shape)) for s in self.sizes]

    def output_shape(self, sample):
        full = self.full_output_shape((1,) + tuple(sample))
        if _axis(self.axis, len(sample) + 1, "Split") == 0:
            raise ValueError("Split along the batch axis has no per-sample output shape")
        return [s[1:] for s in full]

    def forward(self, x):
        axis = _axis(self.axis, x.ndim, "Split")
        self.full_output_shape(x.shape)
        self._save((x.shape, x.dtype, axis))
        bounds = np.cumsum(self.sizes)[:-1]
        return tuple(array_module(x).split(x, bounds, axis=axis))

    def backward(self, dys, input_grad: bool = True):
        shape, dtype, axis = self._restore()
        if not input_grad:
            return None
        xp = array_module(next(d for d in dys if d is not None))
        parts = []
        for dy, size in zip(dys, self.sizes):
            if dy is None:
                dy = xp.zeros(tuple(size if i == axis else d for i, d in enumerate(shape)), dtype=dtype)
            parts.append(dy)
        return xp.concatenate(parts, axis=axis)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(aliases_input=True)  # the pieces are views of the input

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # views

    def onnx_export(self, ctx, x, prefix):
        name = ctx.join(prefix, "Split")
        if ctx.opset >= 13:
            sizes = ctx.constant(ctx.join(prefix, "split"), np.array(self.sizes, np.int64))
            return ctx.node_outputs("Split", [x, sizes], name, len(self.sizes), axis=self.axis)
        return ctx.node_outputs("Split", [x], name, len(self.sizes), axis=self.axis, split=list(self.sizes))

    def extra_repr(self) -> str:
        return f"axis={self.axis}, sizes={self.sizes}"


class Expand(FullShapeLayer, _OnnxLayer):
    """Broadcast to ``shape`` (ONNX ``Expand``: NumPy broadcasting of the input with ``shape``, so
    a 1 in ``shape`` keeps the input's size); backward sums over the broadcast axes.

    Shape:
        input -> broadcast(input, shape)
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def full_output_shape(self, shape):
        return broadcast_full("Expand", shape, self.shape)

    def forward(self, x):
        self._save(x.shape)
        xp = array_module(x)
        return xp.ascontiguousarray(xp.broadcast_to(x, self.full_output_shape(x.shape)))

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        return unbroadcast(dy, shape) if input_grad else None

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # the input shape is cached; backward sums dy into dx

    def onnx_export(self, ctx, x, prefix):
        shape = ctx.constant(ctx.join(prefix, "shape"), np.array(self.shape, np.int64))
        return ctx.node("Expand", [x, shape], ctx.join(prefix, "Expand"))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Tile(FullShapeLayer, _OnnxLayer):
    """Repeat the tensor ``repeats[i]`` times along each axis (ONNX ``Tile``); backward sums the
    copies.

    Shape:
        input (d0, d1, ...) -> (d0*r0, d1*r1, ...)
    """

    def __init__(self, repeats):
        super().__init__()
        self.repeats = tuple(int(r) for r in repeats)
        if any(r < 0 for r in self.repeats):
            raise ValueError(f"Tile: repeats must be >= 0, got {self.repeats}")

    def full_output_shape(self, shape):
        if len(self.repeats) != len(shape):
            raise ValueError(f"Tile: {len(self.repeats)} repeats for a {len(shape)}-D input")
        return tuple(s * r for s, r in zip(shape, self.repeats))

    def forward(self, x):
        self.full_output_shape(x.shape)
        self._save(x.shape)
        return array_module(x).tile(x, self.repeats)

    def backward(self, dy, input_grad: bool = True):
        shape = self._restore()
        if not input_grad:
            return None
        split = []
        for r, s in zip(self.repeats, shape):
            split += [r, s]
        return dy.reshape(split).sum(axis=tuple(range(0, 2 * len(shape), 2))) if dy.size else \
            array_module(dy).zeros(shape, dtype=dy.dtype)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # the input shape is cached; backward sums the copies of dy

    def onnx_export(self, ctx, x, prefix):
        repeats = ctx.constant(ctx.join(prefix, "repeats"), np.array(self.repeats, np.int64))
        return ctx.node("Tile", [x, repeats], ctx.join(prefix, "Tile"))

    def extra_repr(self) -> str:
        return f"repeats={self.repeats}"


class Gather(FullShapeLayer, _OnnxLayer):
    """``y = take(x, indices, axis)`` with constant indices (ONNX ``Gather``; negative indices
    count from the end); backward scatter-adds ``dy`` into the gathered positions.

    Shape:
        input (..., d_axis, ...) -> (..., *indices.shape, ...)
    """

    def __init__(self, indices, axis: int = 0):
        super().__init__()
        self.register_buffer("indices", np.array(indices, dtype=np.int64, copy=True))
        self.axis = int(axis)

    def _normalized(self, size: int):
        indices = self.indices
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise ValueError(f"Gather: indices must lie in [{-size}, {size - 1}], got values from "
                             f"{int(indices.min())} to {int(indices.max())}")
        return np.where(indices < 0, indices + size, indices)

    def full_output_shape(self, shape):
        axis = _axis(self.axis, len(shape), "Gather")
        self._normalized(shape[axis])
        return tuple(shape[:axis]) + tuple(self.indices.shape) + tuple(shape[axis + 1:])

    def forward(self, x):
        axis = _axis(self.axis, x.ndim, "Gather")
        indices = self._normalized(x.shape[axis])
        self._save((x.shape, axis, indices))
        return array_module(x).take(x, indices, axis=axis)

    def backward(self, dy, input_grad: bool = True):
        shape, axis, indices = self._restore()
        if not input_grad:
            return None
        xp = array_module(dy)
        dx = xp.zeros(shape, dtype=dy.dtype)
        moved = xp.moveaxis(dx, axis, 0)  # a view: scatter along the first axis
        grads = xp.moveaxis(dy.reshape(shape[:axis] + (indices.size,) + shape[axis + 1:]), axis, 0)
        np.add.at(moved, indices.reshape(-1), grads)
        return dx

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(saved=self.indices.nbytes)  # the indices, made non-negative

    def onnx_export(self, ctx, x, prefix):
        indices = ctx.constant(ctx.join(prefix, "indices"), self.indices)
        return ctx.node("Gather", [x, indices], ctx.join(prefix, "Gather"), axis=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, indices_shape={tuple(self.indices.shape)}"


class GatherConstant(FullShapeLayer, _OnnxLayer):
    """``y = take(weight, indices, axis)``: a constant (trainable) table indexed by computed integer
    indices (ONNX ``Gather`` with constant data: an embedding lookup). Backward scatter-adds
    ``dy`` into the rows of ``weight`` that were read; the indices have no gradient.

    Shape:
        indices (N, ...) -> (weight.shape[:axis], *indices.shape, weight.shape[axis+1:])
    """

    def __init__(self, weight, axis: int = 0, trainable: bool = True):
        super().__init__()
        weight = np.array(weight, copy=True)
        self.axis = _axis(int(axis), weight.ndim, "Gather")
        if trainable and np.issubdtype(weight.dtype, np.floating):
            self.weight = Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def _table(self):
        return self.weight.data if isinstance(self.weight, Parameter) else self.weight

    @property
    def to_dtype(self):
        """The type of the output: the table's, not the (integer) input's."""
        return self._table().dtype

    def forward(self, indices):
        table = self._table()
        size = table.shape[self.axis]
        if indices.size and (indices.min() < -size or indices.max() >= size):
            raise ValueError(f"Gather: indices must lie in [{-size}, {size - 1}], got values from "
                             f"{int(indices.min())} to {int(indices.max())}")
        indices = np.where(indices < 0, indices + size, indices)
        self._save(indices)
        return array_module(table).take(table, indices, axis=self.axis)

    def backward(self, dy, input_grad: bool = True):
        indices = self._restore()
        if isinstance(self.weight, Parameter) and self.weight.requires_grad:
            table = self.weight.data
            grad = np.zeros(table.shape, dtype=dy.dtype)
            moved = np.moveaxis(grad, self.axis, 0)
            rows = dy.reshape(table.shape[:self.axis] + (indices.size,) + table.shape[self.axis + 1:])
            np.add.at(moved, indices.reshape(-1), np.moveaxis(rows, self.axis, 0))
            self.weight.accumulate_grad(grad)
        return None

    def full_output_shape(self, shape):
        table = self._table().shape
        return table[:self.axis] + tuple(shape) + table[self.axis + 1:]

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # the (non-negative) int64 indices are cached; backward scatters into a table of zeros
        trainable = isinstance(self.weight, Parameter) and self.weight.requires_grad
        return LayerMemory(saved=batch_bytes(input_shape, batch_size, np.int64),
                           backward_temp=self._table().size * np.dtype(dtype).itemsize if trainable else 0)

    def onnx_export(self, ctx, x, prefix):
        table = ctx.constant(ctx.join(prefix, "weight"), self._table())
        return ctx.node("Gather", [table, x], ctx.join(prefix, "Gather"), axis=self.axis)

    def extra_repr(self) -> str:
        return f"table={tuple(self._table().shape)}, axis={self.axis}"


class Pad(FullShapeLayer, _OnnxLayer):
    """ONNX ``Pad`` in modes ``reflect``, ``edge`` and ``wrap`` (and ``constant`` with negative pads,
    which crop); ``pads`` in ONNX's order ``(x1_begin, x2_begin, ..., x1_end, x2_end, ...)``.

    Backward sends each output position's gradient to the input position it copies: per axis,
    the source index of every output position is ``np.pad(arange(size), pads, mode)``.

    Shape:
        axis i: size + pads[i] + pads[i + ndim]
    """

    def __init__(self, pads, mode: str = "reflect", value: float = 0.0):
        super().__init__()
        self.pads = tuple(int(p) for p in pads)
        if mode not in ("constant", "reflect", "edge", "wrap"):
            raise ValueError(f"Pad: mode must be constant, reflect, edge or wrap, got {mode!r}")
        if len(self.pads) % 2:
            raise ValueError(f"Pad: pads must hold 2 values per axis, got {self.pads}")
        self.mode, self.value = mode, float(value)

    def _widths(self, shape):
        half = len(self.pads) // 2
        if half != len(shape):
            raise ValueError(f"Pad: pads {self.pads} are for {half}-D tensors, got a {len(shape)}-D one")
        widths = [(self.pads[i], self.pads[i + half]) for i in range(half)]
        for (b, e), s in zip(widths, shape):
            kept = s + min(b, 0) + min(e, 0)
            if kept < 0:
                raise ValueError(f"Pad: pads {self.pads} crop more than the input {tuple(shape)} holds")
            if self.mode == "reflect" and max(b, e) > 0 and max(b, e) > kept - 1:
                raise ValueError(f"Pad: reflect pads {self.pads} must be smaller than the (cropped) sizes {tuple(shape)}")
            if self.mode in ("edge", "wrap") and max(b, e) > 0 and kept == 0:
                raise ValueError(f"Pad: cannot {self.mode}-pad an empty axis of {tuple(shape)}")
        return widths

    def _sources(self, shape):
        """Per axis, the input index each output position copies (-1: the constant value)."""
        sources = []
        for (b, e), s in zip(self._widths(shape), shape):
            index = np.arange(s)[max(-b, 0):s - max(-e, 0)]
            grow = (max(b, 0), max(e, 0))
            if self.mode == "constant":
                sources.append(np.pad(index, grow, constant_values=-1))
            else:
                sources.append(np.pad(index, grow, mode=self.mode) if index.size else index)
        return sources

    def full_output_shape(self, shape):
        return tuple(s + b + e for s, (b, e) in zip(shape, self._widths(shape)))

    def forward(self, x):
        xp = array_module(x)
        sources = self._sources(x.shape)
        y = x
        for axis, source in enumerate(sources):
            y = xp.take(y, np.maximum(source, 0), axis=axis) if y.shape[axis] else \
                xp.zeros(y.shape[:axis] + (len(source),) + y.shape[axis + 1:], dtype=x.dtype)
            if self.mode == "constant" and (source < 0).any():
                index = [slice(None)] * x.ndim
                index[axis] = source < 0
                y[tuple(index)] = self.value
        self._save((x.shape, sources))
        return y

    def backward(self, dy, input_grad: bool = True):
        shape, sources = self._restore()
        if not input_grad:
            return None
        xp = array_module(dy)
        g = dy
        for axis in range(len(shape) - 1, -1, -1):
            source = sources[axis]
            keep = source >= 0
            out = xp.zeros(g.shape[:axis] + (shape[axis],) + g.shape[axis + 1:], dtype=dy.dtype)
            moved = xp.moveaxis(out, axis, 0)
            np.add.at(moved, source[keep], xp.moveaxis(g, axis, 0)[keep])
            g = out
        return g

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        # forward takes the padded positions axis by axis (one intermediate alive beside the
        # output); backward scatter-adds axis by axis from a gathered copy of the gradient
        n = batch_bytes(output_shape, batch_size, dtype)
        return LayerMemory(forward_temp=n, backward_temp=2 * n)

    def onnx_export(self, ctx, x, prefix):
        return pad_export(ctx, x, prefix, self.pads, self.mode, self.value)

    def extra_repr(self) -> str:
        return f"pads={self.pads}, mode={self.mode!r}" + (f", value={self.value}" if self.mode == "constant" else "")


class Cast(_OnnxLayer):
    """Convert to ``dtype`` (ONNX ``Cast`` of a computed tensor); the gradient of a float-to-float
    cast passes through, casts to integers or booleans pass none.

    Shape:
        input -> output of the same shape
    """

    def __init__(self, dtype):
        super().__init__()
        self.to_dtype = np.dtype(dtype)

    def forward(self, x):
        self._save(x.dtype)
        return x.astype(self.to_dtype)

    def backward(self, dy, input_grad: bool = True):
        dtype = self._restore()
        if not input_grad:
            return None
        if not np.issubdtype(self.to_dtype, np.floating) or not np.issubdtype(dtype, np.floating):
            return array_module(dy).zeros(dy.shape, dtype=dtype if np.issubdtype(dtype, np.floating) else dy.dtype)
        return dy.astype(dtype, copy=False)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the input's dtype is cached

    def onnx_export(self, ctx, x, prefix):
        from onnx import helper

        return ctx.node("Cast", [x], ctx.join(prefix, "Cast"), to=helper.np_dtype_to_tensor_dtype(self.to_dtype))

    def extra_repr(self) -> str:
        return f"to={self.to_dtype}"


class Where(FullShapeLayer, MultiInputModule):
    """``y = where(condition, a, b)`` with a constant ``condition`` (ONNX ``Where``); each gradient
    goes to the branch that was taken. A branch may be a constant (``a_value`` / ``b_value``),
    then the layer takes only the other one as input.

    Shape:
        condition, a, b broadcast together -> output of the broadcast shape
    """

    def __init__(self, condition, a_value=None, b_value=None):
        super().__init__()
        if a_value is not None and b_value is not None:
            raise ValueError("Where: at most one branch may be a constant")
        self.register_buffer("condition", np.array(condition, dtype=bool, copy=True))
        self.constant_branch = "a" if a_value is not None else "b" if b_value is not None else None
        if self.constant_branch:
            self.register_buffer("branch_value", np.array(a_value if a_value is not None else b_value, copy=True))

    def __call__(self, *xs):
        return self.forward(*xs)

    def _branches(self, xs):
        if self.constant_branch is None:
            return xs
        (x,) = xs
        c = self.branch_value.astype(x.dtype, copy=False) if np.issubdtype(x.dtype, np.floating) else self.branch_value
        return (c, x) if self.constant_branch == "a" else (x, c)

    def forward(self, *xs):
        a, b = self._branches(xs)
        self._save([x.shape for x in xs])
        return array_module(a).where(self.condition, a, b)

    def backward(self, dy, input_grad: bool = True):
        shapes = self._restore()
        if not input_grad:
            return None
        if self.constant_branch == "a":
            return unbroadcast(dy * ~self.condition, shapes[0])
        if self.constant_branch == "b":
            return unbroadcast(dy * self.condition, shapes[0])
        return unbroadcast(dy * self.condition, shapes[0]), unbroadcast(dy * ~self.condition, shapes[1])

    def full_output_shape(self, *shapes):
        branch = () if self.constant_branch is None else (self.branch_value.shape,)
        return broadcast_full("Where", self.condition.shape, *shapes, *branch)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the input shapes are cached

    def onnx_export(self, ctx, x, prefix):
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        condition = ctx.constant(ctx.join(prefix, "condition"), self.condition)
        if self.constant_branch is not None:
            value = ctx.constant(ctx.join(prefix, "branch_value"), self.branch_value, like=xs[0])
            xs = [value, xs[0]] if self.constant_branch == "a" else [xs[0], value]
        return ctx.node("Where", [condition] + xs, ctx.join(prefix, "Where"))
