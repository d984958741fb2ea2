"""Importer rules for constants and the tensor operators: ``Reshape``, ``Flatten``, ``Transpose``,
``Squeeze``/``Unsqueeze``, ``Concat``, ``Split``, ``Slice``, ``Pad``, ``Expand``, ``Tile``,
``Gather``, ``Cast``, and the shape arithmetic exporters emit around them (``Shape``,
``ConstantOfShape``, ``Range``...).

This is where the batch axis is decided (see :mod:`.context`): a ``Reshape`` or ``Expand`` target
whose entry for a batched axis is the declared batch size, or the symbolic :data:`BATCH` marker
that ``Shape`` folds to, keeps that axis the batch (``0``: copy it, or ``1``: broadcast it), so
``x.view(x.size(0), -1)`` exported at batch 1 runs at any batch size.
"""
from __future__ import annotations

import numpy as np

from ..nn.flatten import Flatten
from ..nn.graph import Cat
from .context import BATCH, has_batch_marker
from .initializers import onnx_dtype, read_tensor
from .layers import ConstantPad, Reshape, Slice, resolve_reshape
from .op_helpers import int_list, required, text, unsupported, variable_input
from .registry import Alias, Folded, register_fold, register_op
from .tensor_layers import (AxisCat, Cast, Expand, FlattenAt, Gather, GatherConstant, Pad, Split, Squeeze, Tile, Transpose, Unsqueeze,
                            Where)

# ---- constants ----------------------------------------------------------------------------------


def _constant_value(ctx, attrs):
    if "value" in attrs:
        return read_tensor(attrs["value"], ctx.base_dir, "Constant value")
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    unsupported(f"Constant with attributes {sorted(attrs)} (only tensors, floats and ints)")


@register_op("Constant")
def constant(ctx, node, attrs):
    value = _constant_value(ctx, attrs)
    if np.issubdtype(value.dtype, np.floating):
        value = value.astype(ctx.dtype, copy=False)
    return Folded(value)


@register_fold("ConstantOfShape")
def _fold_constant_of_shape(ctx, attrs, shape):
    shape = tuple(int_list(shape, "the shape"))
    value = read_tensor(attrs["value"], ctx.base_dir, "ConstantOfShape value") if "value" in attrs \
        else np.zeros(1, np.float32)
    if value.size != 1:
        raise ValueError(f"value must hold one element, got shape {value.shape}")
    ctx.check_fold_size(shape, value.dtype, "ConstantOfShape")
    return np.full(shape, value.reshape(-1)[0], dtype=value.dtype)


@register_op("Shape")
def shape_(ctx, node, attrs):
    """The static shape; the entry of a batched axis is the declared batch size, or :data:`BATCH`
    when the file leaves it symbolic."""
    x = node.input[0]
    full = np.array(ctx.shape(x), dtype=np.int64)
    if ctx.is_batched(x) and ctx.batch is None and full.size:
        full[0] = BATCH
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return Folded(full[start:None if end is None else int(end)])


@register_fold("Shape")
def _fold_shape(ctx, attrs, x):
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return np.array(np.shape(x), dtype=np.int64)[start:None if end is None else int(end)]


@register_op("Size")
def size_(ctx, node, attrs):
    x = node.input[0]
    if ctx.is_batched(x) and ctx.batch is None:
        unsupported("Size of a tensor with a symbolic batch size; give the input a fixed batch size")
    return Folded(np.array(int(np.prod(ctx.shape(x), dtype=np.int64)), dtype=np.int64))


@register_fold("Size")
def _fold_size(ctx, attrs, x):
    return np.array(np.size(x), dtype=np.int64)


@register_fold("Identity")
def _fold_identity(ctx, attrs, x):
    return x


@register_op("Identity")
def identity(ctx, node, attrs):
    return Alias(node.input[0])


@register_fold("Range")
def _fold_range(ctx, attrs, start, limit, delta):
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    if delta == 0:
        raise ValueError("delta must not be 0")
    count = max(int(np.ceil((limit - start) / delta)), 0)
    dtype = np.result_type(start, limit, delta)
    ctx.check_fold_size((count,), dtype, "Range")
    return (start + np.arange(count) * delta).astype(dtype)


# ---- reshaping ----------------------------------------------------------------------------------


def _batch_entry(ctx, x: str, value: int) -> bool:
    """Whether ``value`` in a target's batch position means "the batch": the marker, or the
    declared batch size of a fixed-batch file."""
    return ctx.is_batched(x) and (value == BATCH or (ctx.batch is not None and value == ctx.batch))


@register_fold("Reshape")
def _fold_reshape(ctx, attrs, x, shape=None):
    target = int_list(shape if shape is not None else attrs["shape"], "the shape")
    return np.asarray(x).reshape(resolve_reshape("Reshape", np.shape(x), target, bool(attrs.get("allowzero", 0))))


@register_op("Reshape")
def reshape(ctx, node, attrs):
    x = variable_input(ctx, node)
    if ctx.opset < 5:
        target = int_list(required(attrs, "shape"), "shape")
    else:
        target = int_list(ctx.require_const(node, 1, "shape", batch_ok=True), "the shape")
    allowzero = bool(attrs.get("allowzero", 0))
    if target and not allowzero and _batch_entry(ctx, x, target[0]):
        target[0] = 0  # "copy the input's batch axis": the graph then runs at any batch size
    if BATCH in target:
        unsupported(f"Reshape to {['N' if t == BATCH else t for t in target]} moves the symbolic batch size "
                    "away from the first axis")
    return Reshape(target, allowzero=allowzero), [x]


@register_fold("Flatten")
def _fold_flatten(ctx, attrs, x):
    axis = int(attrs.get("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


@register_op("Flatten")
def flatten(ctx, node, attrs):
    x = variable_input(ctx, node)
    rank = ctx.rank(x)
    axis = int(attrs.get("axis", 1))
    if not -rank <= axis <= rank:
        raise ValueError(f"axis {axis} is out of range for a {rank}-D input")
    axis = axis + rank if axis < 0 else axis
    if axis == 1 and rank >= 2 and ctx.is_batched(x):
        return Flatten(), [x]
    return FlattenAt(axis), [x]


@register_fold("Transpose")
def _fold_transpose(ctx, attrs, x):
    return np.transpose(x, attrs.get("perm"))


@register_op("Transpose")
def transpose(ctx, node, attrs):
    x = variable_input(ctx, node)
    perm = attrs.get("perm")
    return Transpose(None if perm is None else int_list(perm, "perm")), [x]


def _axes(ctx, node, attrs, since: int = 13):
    """Axes from the attribute (before opset ``since``) or the second input."""
    if ctx.opset >= since:
        value = ctx.require_const(node, 1, "axes")
        return None if value is None else int_list(value, "axes")
    return int_list(attrs["axes"], "axes") if "axes" in attrs else None


def _fold_axes(ctx, attrs, axes):
    if ctx.opset >= 13:
        return None if axes is None else int_list(axes, "axes")
    return int_list(attrs["axes"], "axes") if "axes" in attrs else None


@register_fold("Unsqueeze")
def _fold_unsqueeze(ctx, attrs, data, axes=None):
    axes = _fold_axes(ctx, attrs, axes)
    if axes is None:
        raise ValueError("missing axes")
    data = np.asarray(data)
    return data.reshape(Unsqueeze(axes).full_output_shape(data.shape))


@register_op("Unsqueeze")
def unsqueeze(ctx, node, attrs):
    x = variable_input(ctx, node)
    axes = _axes(ctx, node, attrs)
    if axes is None:
        raise ValueError("missing axes")
    return Unsqueeze(axes), [x]


@register_fold("Squeeze")
def _fold_squeeze(ctx, attrs, data, axes=None):
    data = np.asarray(data)
    return data.reshape(Squeeze(_fold_axes(ctx, attrs, axes)).full_output_shape(data.shape))


@register_op("Squeeze")
def squeeze(ctx, node, attrs):
    x = variable_input(ctx, node)
    return Squeeze(_axes(ctx, node, attrs)), [x]


# ---- joining, splitting, slicing ----------------------------------------------------------------


@register_fold("Concat")
def _fold_concat(ctx, attrs, *values):
    values = [np.asarray(v) for v in values if v is not None]
    return np.concatenate(values, axis=int(required(attrs, "axis")))


@register_op("Concat")
def concat(ctx, node, attrs):
    inputs = [n for n in node.input if n]
    if any(ctx.is_const(n) for n in inputs):
        unsupported("Concat of computed tensors with constants")
    axis = int(required(attrs, "axis"))
    rank = ctx.rank(inputs[0])
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for {rank}-D inputs")
    if (axis + rank if axis < 0 else axis) != 0 and all(ctx.is_batched(n) for n in inputs):
        return Cat(axis), inputs
    return AxisCat(axis), inputs


def _split_sizes(attrs, dim: int, outputs: int, sizes):
    if sizes is None and "split" in attrs:
        sizes = attrs["split"]
    if sizes is not None:
        sizes = int_list(sizes, "split")
        if len(sizes) != outputs:
            raise ValueError(f"split {sizes} has {len(sizes)} sizes for {outputs} outputs")
        return sizes
    count = int(attrs.get("num_outputs", outputs))
    if count != outputs:
        raise ValueError(f"num_outputs={count} but the node has {outputs} outputs")
    chunk = -(-dim // count)  # ceil: the last piece may be smaller (opset 18)
    return [min(chunk, dim - i * chunk) for i in range(count)]


@register_op("Split")
def split(ctx, node, attrs):
    x = variable_input(ctx, node)
    axis = int(attrs.get("axis", 0))
    shape = ctx.shape(x)
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for a {len(shape)}-D input")
    sizes = ctx.require_const(node, 1, "split") if ctx.opset >= 13 else None
    outputs = len([o for o in node.output if o])
    if outputs != len(node.output):
        unsupported("Split with unused (empty) outputs")
    return Split(axis, _split_sizes(attrs, shape[axis], outputs, sizes)), [x]


def _slice_args(ctx, node, attrs, values=None):
    if ctx.opset < 10:
        starts, ends, axes = required(attrs, "starts"), required(attrs, "ends"), attrs.get("axes")
        steps = None
    elif values is not None:
        starts, ends, axes, steps = values
    else:
        starts, ends = ctx.require_const(node, 1, "starts"), ctx.require_const(node, 2, "ends")
        axes, steps = ctx.require_const(node, 3, "axes"), ctx.require_const(node, 4, "steps")
    starts, ends = int_list(starts, "starts"), int_list(ends, "ends")
    axes = list(range(len(starts))) if axes is None else int_list(axes, "axes")
    steps = [1] * len(starts) if steps is None else int_list(steps, "steps")
    return starts, ends, axes, steps


@register_fold("Slice")
def _fold_slice(ctx, attrs, data, starts=None, ends=None, axes=None, steps=None):
    module = Slice(*_slice_args(ctx, None, attrs, (starts, ends, axes, steps)))
    return np.asarray(data)[module._index(np.ndim(data))]


@register_op("Slice")
def slice_(ctx, node, attrs):
    x = variable_input(ctx, node)
    return Slice(*_slice_args(ctx, node, attrs)), [x]


@register_fold("Gather")
def _fold_gather(ctx, attrs, data, indices):
    data, indices = np.asarray(data), np.asarray(indices)
    axis = int(attrs.get("axis", 0))
    if not -data.ndim <= axis < data.ndim:
        raise ValueError(f"axis {axis} is out of range for a {data.ndim}-D tensor")
    axis = axis + data.ndim if axis < 0 else axis
    out = data.shape[:axis] + indices.shape + data.shape[axis + 1:]
    ctx.check_fold_size(out, data.dtype, "Gather")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ValueError(f"indices must lie in [{-size}, {size - 1}], got values from {indices.min()} to {indices.max()}")
    return np.take(data, indices, axis=axis)


@register_op("Gather")
def gather(ctx, node, attrs):
    if ctx.is_const(node.input[0]):  # a constant table indexed by computed indices: an embedding
        return GatherConstant(ctx.const(node.input[0]), int(attrs.get("axis", 0)),
                              ctx.is_trainable(node.input[0])), [variable_input(ctx, node, 1)]
    x = variable_input(ctx, node)
    indices = ctx.require_const(node, 1, "indices")
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {indices.dtype}")
    return Gather(indices, int(attrs.get("axis", 0))), [x]


# ---- padding, broadcasting, tiling --------------------------------------------------------------


def _pad_args(ctx, node, attrs, rank: int):
    mode = text(attrs, "mode", "constant")
    if ctx.opset < 11:
        pads, value = int_list(required(attrs, "pads"), "pads"), float(attrs.get("value", 0.0))
    else:
        pads = int_list(ctx.require_const(node, 1, "pads"), "pads")
        value = ctx.require_const(node, 2, "constant_value")
        value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0]) if np.size(value) else 0.0
        axes = ctx.require_const(node, 3, "axes")
        if axes is not None:
            axes = int_list(axes, "axes")
            if len(pads) != 2 * len(axes):
                raise ValueError(f"pads {pads} need 2 values per axis of {axes}")
            full = [0] * (2 * rank)
            for k, axis in enumerate(axes):
                if not -rank <= axis < rank:
                    raise ValueError(f"axis {axis} is out of range for a {rank}-D input")
                axis = axis + rank if axis < 0 else axis
                full[axis], full[axis + rank] = pads[k], pads[k + len(axes)]
            pads = full
    if len(pads) != 2 * rank:
        raise ValueError(f"pads {pads} need 2 values per axis of the {rank}-D input")
    return pads, value, mode


@register_op("Pad")
def pad(ctx, node, attrs):
    x = variable_input(ctx, node)
    pads, value, mode = _pad_args(ctx, node, attrs, ctx.rank(x))
    if mode not in ("constant", "reflect", "edge", "wrap"):
        unsupported(f"Pad mode {mode!r} (supported: constant, reflect, edge, wrap)")
    if mode == "constant" and all(p >= 0 for p in pads):
        return ConstantPad(pads, value), [x]
    return Pad(pads, mode, value), [x]


@register_fold("Expand")
def _fold_expand(ctx, attrs, x, shape):
    x = np.asarray(x)
    out = np.broadcast_shapes(x.shape, tuple(int_list(shape, "the shape")))
    ctx.check_fold_size(out, x.dtype, "Expand")
    return np.broadcast_to(x, out).copy()


@register_op("Expand")
def expand(ctx, node, attrs):
    x = variable_input(ctx, node)
    target = int_list(ctx.require_const(node, 1, "shape", batch_ok=True), "the shape")
    batch_position = len(target) - ctx.rank(x)  # where the input's axis 0 lands in the output
    if batch_position >= 0 and _batch_entry(ctx, x, target[batch_position]):
        target[batch_position] = 1  # broadcasting keeps the input's batch size
    if BATCH in target:
        unsupported("Expand to a shape that depends on the symbolic batch size elsewhere than the batch axis")
    return Expand(target), [x]


@register_fold("Tile")
def _fold_tile(ctx, attrs, x, repeats):
    x = np.asarray(x)
    out = Tile(int_list(repeats, "repeats")).full_output_shape(x.shape)
    ctx.check_fold_size(out, x.dtype, "Tile")
    return np.tile(x, int_list(repeats, "repeats"))


@register_op("Tile")
def tile(ctx, node, attrs):
    x = variable_input(ctx, node)
    return Tile(int_list(ctx.require_const(node, 1, "repeats"), "repeats")), [x]


@register_op("Where")
def where(ctx, node, attrs):
    condition = ctx.require_const(node, 0, "condition")
    a, b = node.input[1], node.input[2]
    if ctx.is_const(a):
        return Where(condition, a_value=ctx.const(a)), [b]
    if ctx.is_const(b):
        return Where(condition, b_value=ctx.const(b)), [a]
    return Where(condition), [a, b]


# ---- casts --------------------------------------------------------------------------------------


@register_fold("Cast")
def _fold_cast(ctx, attrs, data):
    data = np.asarray(data)
    if has_batch_marker(data):
        return data  # shape arithmetic: int64 <-> int32 casts keep the marker
    return data.astype(onnx_dtype(required(attrs, "to")))


@register_op("Cast")
def cast(ctx, node, attrs):
    x = variable_input(ctx, node)
    to = onnx_dtype(required(attrs, "to"))
    if to == ctx.dtype_of(x):
        return Alias(x)
    return Cast(to), [x]


@register_fold("CastLike")
def _fold_cast_like(ctx, attrs, data, like):
    return np.asarray(data).astype(np.asarray(like).dtype)


@register_op("CastLike")
def cast_like(ctx, node, attrs):
    to = ctx.dtype_of(node.input[1])
    if ctx.is_const(node.input[0]):  # a constant cast to a computed tensor's type (expanded functions)
        return Folded(np.asarray(ctx.const(node.input[0])).astype(to))
    x = variable_input(ctx, node)
    return Alias(x) if to == ctx.dtype_of(x) else (Cast(to), [x])
