"""ONNX -> cnnkit: ``load(path)`` builds a :class:`~cnnkit.nn.graph.Graph` that runs and trains.

Each ONNX node is handled by the builder registered for its ``op_type`` in :mod:`.registry`
(the builders live in :mod:`.ops`, :mod:`.ops_math` and :mod:`.ops_shape`):

* a builder returns a cnnkit ``Module`` (wired to the node's non-constant inputs, or to the inputs it
  names by returning ``(module, inputs)``), an :class:`Alias` (the output *is* one input, e.g.
  ``Identity``), or a :class:`Folded` constant;
* a node whose inputs are all constants and whose op has a folding rule is evaluated once at import
  (``Constant``, ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat`` ... the shape arithmetic exporters
  emit around ``Reshape``), within a byte budget checked before anything is allocated.

The batch axis is a property of the imported graph (see :mod:`.context`): a leading dimension
equal to the declared batch size is the batch, so fixed-batch exports run at any batch size where
the graph allows it; ``graph.batch_size`` is ``None`` then, and the declared size otherwise.

The file is untrusted input: sizes are checked against the data before allocating (see
:mod:`.initializers`), and every refusal is one ``ValueError`` or
:class:`UnsupportedOperatorError` naming the node, its op and what is wrong.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..nn.containers import Sequential
from ..nn.graph import Add, Graph, Mul
from ..nn.module import Module
from ._deps import require
from .context import DEFAULT_MAX_FOLDED_BYTES, MAX_SAMPLE_ELEMENTS, ImportContext, Unread, has_batch_marker
from .initializers import declared_dims, onnx_dtype, read_tensor
from .layers import PROBE_BATCH, broadcast_full
from . import registry
from .registry import OPS, Alias, Folded, NeedsConstantError, UnsupportedOperatorError, node_label

__all__ = ["load", "import_model", "supported_operators", "register_op", "register_fold",
           "UnsupportedOperatorError", "NeedsConstantError"]

# Folds that pass the symbolic batch marker through unchanged (shape bookkeeping, no arithmetic).
_BATCH_TRANSPARENT = {"Identity", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Reshape",
                      "Flatten", "Shape"}
# Folds that only rearrange a weight (Caffe2 and TF exports reshape or transpose theirs): the result
# of folding an initializer through them is still a weight, trainable after import.
_REARRANGING = {"Identity", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten", "Cast"}
# Python/NumPy errors a rule may raise on a malformed node; reported as one line naming the node.
_NODE_ERRORS = (ValueError, TypeError, IndexError, KeyError, ArithmeticError)


def _register_builtin_ops() -> None:
    """Import the op modules, each registering its builders into the registry (on first use, so
    that ``import cnnkit`` stays light)."""
    from . import ops, ops_math, ops_shape  # noqa: F401


def register_op(op_type: str, *, fold=None):
    """Decorator: register (or replace) the builder of ``op_type``; see :mod:`.registry`. The
    built-in rules are loaded first, so a rule registered here replaces them."""
    _register_builtin_ops()
    return registry.register_op(op_type, fold=fold)


def register_fold(op_type: str):
    """Decorator: register (or replace) how to fold ``op_type`` on constant inputs."""
    _register_builtin_ops()
    return registry.register_fold(op_type)


def supported_operators() -> list[str]:
    """The ONNX ``op_type``s the importer handles (some only with constant inputs)."""
    _register_builtin_ops()
    return sorted(OPS)


def attributes(node) -> dict:
    onnx = require("onnx")
    try:
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    except Exception as exc:  # a malformed AttributeProto
        raise ValueError(f"ONNX import, {node_label(node)}: unreadable attribute ({exc})") from None


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _read_model(path_or_model):
    onnx = require("onnx")
    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, None, False
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model {path!r} not found")
    try:  # external data is read by cnnkit itself, after checking sizes
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return model, os.path.dirname(os.path.abspath(path)), True


def _dims(value_info) -> list | None:
    tensor_type = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") else None for d in tensor_type.shape.dim]


def _input_shapes(inputs, input_shape) -> tuple[dict, int | None]:
    """Full static shapes of the graph inputs (the batch axis as the declared batch or 1) and the
    declared batch size (``None`` when symbolic)."""
    if input_shape is not None and not isinstance(input_shape, dict):
        input_shape = {inputs[0].name: input_shape}
    given = dict(input_shape or {})
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        raise ValueError(f"ONNX import: input_shape names {sorted(unknown)}, but the graph's inputs are "
                         f"{[i.name for i in inputs]}")
    dims0 = _dims(inputs[0])
    batch = dims0[0] if dims0 and dims0[0] is not None and dims0[0] > 0 else None
    shapes = {}
    for value_info in inputs:
        dims = _dims(value_info)
        if value_info.name in given:
            sample = tuple(int(s) for s in given[value_info.name])
            if any(s < 0 for s in sample):
                raise ValueError(f"ONNX import: input_shape {sample} for {value_info.name!r} has a negative size")
            lead = 1 if batch is None else batch
            shapes[value_info.name] = (lead,) + sample
            continue
        if dims is None:
            raise ValueError(f"ONNX import: input {value_info.name!r} has no declared shape; pass "
                             "input_shape=(C, H, W) (one sample) to cnnkit.onnx.load")
        if len(dims) == 0:
            shapes[value_info.name] = ()
            continue
        missing = [i for i, d in enumerate(dims[1:], 1) if d is None]
        if missing:
            raise ValueError(
                f"ONNX import: input {value_info.name!r} has symbolic dimensions besides the batch axis "
                f"(axes {missing} of {len(dims)}); pass input_shape=(one sample's shape) to cnnkit.onnx.load")
        lead = dims[0] if dims[0] is not None else (1 if batch is None else batch)
        shapes[value_info.name] = (lead,) + tuple(dims[1:])
    return shapes, batch


def _graph_dtype(code, float_dtype) -> np.dtype:
    """The element type ONNX type ``code`` has in the graph: floats (and unknown or undefined
    types) as the graph's float type, the others as declared."""
    try:
        declared = onnx_dtype(code)
    except ValueError:
        return float_dtype
    return float_dtype if np.issubdtype(declared, np.floating) else declared


def _safe_name(name: str) -> str:
    return name or "input"


def _check_tensor_names(g) -> None:
    """Every tensor a node reads must be a graph input, an initializer or some node's output."""
    known = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    produced = {}
    for node in g.node:
        for out in node.output:
            if out and out in produced:
                raise ValueError(f"ONNX import: tensor {out!r} is produced twice (by {produced[out]} and "
                                 f"{node_label(node)})")
            if out:
                produced[out] = node_label(node)
    for node in g.node:
        for name in node.input:
            if name not in known and name not in produced:
                raise ValueError(f"ONNX import: {node_label(node)} reads tensor {name!r}, which is not a graph "
                                 "input, an initializer or the output of any node")
    for out in g.output:
        if out.name not in known and out.name not in produced:
            raise ValueError(f"ONNX import: graph output {out.name!r} is not produced by any node")


def _needed_nodes(g) -> list:
    """The nodes the graph outputs depend on, in topological order (ONNX requires it, some
    writers do not keep it). A cycle is refused, naming its nodes."""
    nodes = list(g.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    needed, stack = set(), [producer[o.name] for o in g.output if o.name in producer]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[name] for name in nodes[i].input if name in producer)
    order, state = [], {}  # depth-first, visiting inputs first; 1 = in progress, 2 = done

    def visit(i):
        path = [(i, iter(nodes[i].input))]
        state[i] = 1
        while path:
            j, inputs = path[-1]
            for name in inputs:
                k = producer.get(name)
                if k is None or state.get(k) == 2:
                    continue
                if state.get(k) == 1:
                    cycle = [node_label(nodes[m]) for m, _ in path[[p for p, _ in path].index(k):]]
                    raise ValueError(f"ONNX import: the graph has a cycle: {' -> '.join(cycle)} -> "
                                     f"{node_label(nodes[k])}")
                state[k] = 1
                path.append((k, iter(nodes[k].input)))
                break
            else:
                state[j] = 2
                order.append(j)
                path.pop()

    for i in sorted(needed):
        if state.get(i) != 2:
            visit(i)
    return [nodes[i] for i in order]


def import_model(path_or_model, input_shape=None, dtype=np.float32, *, max_folded_bytes=DEFAULT_MAX_FOLDED_BYTES,
                 constants=None) -> tuple[Graph, dict]:
    """Import an ONNX model; return ``(graph, constant_outputs)``.

    ``constant_outputs`` maps the names of graph outputs that do not depend on any input (folded
    at import) to their values; :func:`load` refuses them, the backend returns them.
    ``constants`` binds graph inputs to fixed values (the backend does this for inputs that
    cnnkit needs as weights).
    """
    require("onnx")
    _register_builtin_ops()
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"cnnkit.onnx.load: dtype must be a floating type, got {dtype}")
    if isinstance(max_folded_bytes, bool) or not isinstance(max_folded_bytes, (int, np.integer)) or max_folded_bytes < 0:
        raise ValueError(f"cnnkit.onnx.load: max_folded_bytes must be a non-negative int, got {max_folded_bytes!r}")
    model, base_dir, owned = _read_model(path_or_model)
    g = model.graph
    constants = dict(constants or {})
    initializer_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in initializer_names and i.name not in constants]
    _check_tensor_names(g)
    shapes, batch = _input_shapes(inputs, input_shape) if inputs else ({}, None)
    graph = Graph(input=[_safe_name(i.name) for i in inputs] or ["input"])
    ctx = ImportContext(opset=_opset(model), graph=graph, dtype=dtype, batch=batch,
                        max_folded_bytes=int(max_folded_bytes),
                        graph_inputs={i.name for i in inputs}, base_dir=base_dir)
    for value_info, graph_name in zip(inputs, graph.input_names):
        if value_info.name != graph_name:
            ctx.aliases[value_info.name] = graph_name
        shape = shapes[value_info.name]
        ctx.shapes[graph_name] = shape
        ctx.dtypes[graph_name] = _graph_dtype(value_info.type.tensor_type.elem_type, dtype)
        if shape and shape[0] == ctx.batch_axis_value():
            ctx.batched.add(graph_name)
    for tensor in g.initializer:
        ctx.constants[tensor.name] = _unread(tensor, base_dir, owned, dtype)
        ctx.trainable.add(tensor.name)
    for name, value in constants.items():
        ctx.constants[name] = _as_graph_dtype(np.asarray(value), dtype)
        ctx.trainable.add(name)
    for node in g.node:
        for name in node.input:
            ctx.consumers[name] = ctx.consumers.get(name, 0) + 1
    for out in g.output:
        ctx.consumers[out.name] = ctx.consumers.get(out.name, 0) + 1
    for index, node in enumerate(_needed_nodes(g)):
        _import_node(ctx, node, index)
    outputs, constant_outputs = [], {}
    for value_info in g.output:
        name = ctx.resolve(value_info.name)
        if name in ctx.constants:
            value = ctx.const(name)
            if has_batch_marker(value):
                raise UnsupportedOperatorError(f"ONNX import: output {value_info.name!r} is a shape that depends on "
                                               "the symbolic batch size; give the input a fixed batch size")
            constant_outputs[value_info.name] = value
        else:
            outputs.append(name)
    if outputs:
        graph.set_outputs(outputs)
    else:  # every output was folded at import (the backend returns them as constants)
        graph = None
    if graph is not None:
        graph.to(dtype)
        graph.opset = ctx.opset
        batched = all(name in ctx.batched for name in outputs) and not constant_outputs
        graph.batch_size = None if batched else batch
        if graph.batch_size is not None:
            graph.batch_note = ctx.batch_note or "an output does not keep the batch axis"
        graph.input_shapes = [tuple(ctx.shapes[name][1:]) for name in graph.input_names]  # one sample each
        graph.input_shape = graph.input_shapes[0]
    return graph, constant_outputs


def load(path_or_model, input_shape=None, dtype=np.float32, *, max_folded_bytes=DEFAULT_MAX_FOLDED_BYTES) -> Graph:
    """Read an ONNX file (or ``onnx.ModelProto``) into a trainable :class:`Graph`.

    Args:
        path_or_model: a path, or an ``onnx.ModelProto`` (external data then needs the path).
        input_shape: one sample's shape ``(C, H, W)``, needed only when the file leaves it
            symbolic; for several inputs, a dict ``{input name: sample shape}``.
        dtype: the floating type of the imported parameters (float32, or float64 for gradient
            checks).
        max_folded_bytes: how many bytes of constants the import may compute (``ConstantOfShape``,
            ``Expand``, ``Tile``... folded at import); raise it only for files you trust.

    Returns a :class:`Graph` called as ``g(x)`` (``g(a, b)`` with several inputs). Its
    ``batch_size`` is ``None`` when it runs at any batch size, else the batch size the file
    declares (the graph moves or merges its batch axis); ``input_shape`` is one sample's shape
    (``input_shapes``: one per input). Imported layers skip cnnkit's geometry
    check (``check_geometry=False``): the model was defined elsewhere. Raises
    :class:`UnsupportedOperatorError` naming the operator, its node and what is unsupported.
    """
    graph, constant_outputs = import_model(path_or_model, input_shape, dtype, max_folded_bytes=max_folded_bytes)
    if graph is None or not graph.output_names:
        raise ValueError("ONNX import: the model computes nothing from its inputs (no input, or every output is "
                         "a constant)")
    if constant_outputs:
        raise ValueError(f"ONNX import: outputs {sorted(constant_outputs)} do not depend on the input (they are "
                         "constants computed at import); nothing to run for them")
    return graph


def _unread(tensor, base_dir, owned: bool, dtype) -> Unread:
    """An initializer to read when a rule first asks for its value (sizes are checked then)."""
    def read():
        value = read_tensor(tensor, base_dir, "initializer", float_dtype=dtype, release=owned)
        return _as_graph_dtype(value, dtype)

    dims, _ = declared_dims(tensor, f"ONNX initializer {tensor.name!r}")
    return Unread(read, dims, _graph_dtype(tensor.data_type, dtype))


def _as_graph_dtype(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(value.dtype, np.floating) and value.dtype != dtype:
        return value.astype(dtype)
    return value


def _import_node(ctx: ImportContext, node, index: int) -> None:
    spec = OPS.get(node.op_type)
    label = node_label(node)
    if spec is None or node.domain not in ("", "ai.onnx"):
        domain = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
        raise UnsupportedOperatorError(
            f"ONNX import: operator {node.op_type!r}{domain} in {label} is not supported; supported: "
            f"{supported_operators()}")
    attrs = attributes(node)
    present = [n for n in node.input if n != ""]
    try:
        if spec.fold is not None and all(ctx.is_const(n) for n in present):
            values = [ctx.const(n) if n != "" else None for n in node.input]
            if node.op_type not in _BATCH_TRANSPARENT and any(v is not None and has_batch_marker(v) for v in values):
                raise UnsupportedOperatorError("it computes with the symbolic batch size (from a Shape node); give "
                                               "the input a fixed batch size in the file")
            _store_folded(ctx, node, spec.fold(ctx, attrs, *values))
            if node.op_type in _REARRANGING and ctx.is_trainable(node.input[0]):
                source = ctx.weight_names.get(ctx.resolve(node.input[0]), ctx.resolve(node.input[0]))
                for out in (o for o in node.output if o):
                    ctx.trainable.add(out)
                    ctx.weight_names[out] = source
            return
        if spec.build is None:
            missing = [n for n in present if not ctx.is_const(n)]
            raise NeedsConstantError(f"it is supported only with constant inputs (it is folded at import); "
                                     f"{missing} are computed", ctx.resolve(missing[0]))
        result = spec.build(ctx, node, attrs)
        if isinstance(result, Folded):
            _store_folded(ctx, node, result.value)
        elif isinstance(result, Alias):
            target = ctx.resolve(result.tensor)
            if target != node.output[0]:
                ctx.aliases[node.output[0]] = target
        else:
            module, inputs = result if isinstance(result, tuple) else (result, [n for n in present if not ctx.is_const(n)])
            _add_module(ctx, node, module, [ctx.resolve(n) for n in inputs], index)
    except UnsupportedOperatorError as exc:
        if label in str(exc):
            raise
        message = f"ONNX import, {label}: {exc}"
        raise (NeedsConstantError(message, exc.tensor) if isinstance(exc, NeedsConstantError)
               else UnsupportedOperatorError(message)) from None
    except MemoryError:
        raise MemoryError(f"ONNX import, {label}: out of memory") from None
    except _NODE_ERRORS as exc:
        if label in str(exc):
            raise ValueError(str(exc)) from None
        detail = f"missing required attribute {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise ValueError(f"ONNX import, {label}: {detail}") from None


def _store_folded(ctx: ImportContext, node, value) -> None:
    outputs = [o for o in node.output if o]
    values = value if isinstance(value, (tuple, list)) and len(outputs) > 1 else (value,)
    for name, v in zip(outputs, values):
        ctx.add_folded(name, v)


def _module_name(ctx: ImportContext, node, index: int) -> str:
    """A readable, unique attribute name: the weight's prefix (``features.0.weight`` -> ``features_0``,
    ``fc6_w_0`` -> ``fc6``), else the node's name, else ``<op>_<index>``."""
    graph = ctx.graph
    base = ""
    for name in node.input[1:2]:
        if ctx.is_trainable(name) and np.issubdtype(ctx.dtype_of(name), np.floating):
            name = ctx.weight_names.get(ctx.resolve(name), name)
            # PyTorch's features.0.weight, Caffe2's conv1_w_0, TF's dense/kernel:0
            base = name.rsplit(".", 1)[0] if "." in name else re.sub(r"([_/](w|weight|weights|kernel)(_\d+)?|:\d+)+$", "", name)
    base = base or node.name or f"{node.op_type}_{index}"
    base = re.sub(r"\W+", "_", base).strip("_") or f"{node.op_type}_{index}"
    if not base[0].isalpha():
        base = f"n_{base}"
    name, k = base, 1
    while name in vars(graph) or hasattr(type(graph), name):
        k += 1
        name = f"{base}_{k}"
    return name


def _full_output_shapes(module: Module, fulls: list[tuple], count: int):
    """Full output shapes of ``module``: from its ``full_output_shape`` (ONNX layers, which may
    touch the batch axis), by broadcasting (``Add``, ``Mul``), through the children of a
    ``Sequential``, else from its per-sample ``output_shape`` with the batch axis kept."""
    if hasattr(module, "full_output_shape"):
        return module.full_output_shape(*fulls)
    if isinstance(module, (Add, Mul)):
        return broadcast_full(type(module).__name__, *fulls)
    if isinstance(module, Sequential) and count == 1:
        shape = fulls[0]
        for child in module.children():
            shape = tuple(_full_output_shapes(child, [shape], 1))
        return shape
    if any(len(f) == 0 for f in fulls):  # a scalar: fine for layers that keep the shape
        if type(module).output_shape is not Module.output_shape or count > 1:
            raise ValueError(f"{type(module).__name__} needs inputs with a batch axis, got shapes {fulls}")
        return fulls[0]
    if len({f[0] for f in fulls}) > 1:
        raise ValueError(f"{type(module).__name__}: inputs {fulls} differ on axis 0")
    sample = module.output_shape(*[f[1:] for f in fulls])
    return [(fulls[0][0],) + tuple(s) for s in sample] if count > 1 else (fulls[0][0],) + tuple(sample)


def _output_shapes(ctx: ImportContext, module: Module, inputs: list[str], count: int) -> list[tuple]:
    result = _full_output_shapes(module, [ctx.shape(n) for n in inputs], count)
    shapes = [tuple(int(d) for d in s) for s in result] if count > 1 else [tuple(int(d) for d in result)]
    if len(shapes) != count:
        raise ValueError(f"{type(module).__name__} makes {len(shapes)} outputs, the node has {count}")
    return shapes


def _keeps_batch(ctx: ImportContext, module: Module, inputs: list[str], count: int) -> bool:
    """Whether the output's axis 0 is still the batch: some input is batched, and with their
    batch axis set to an unusual size (:data:`~.layers.PROBE_BATCH`) the output's axis 0 has that
    size too (so a ``(1, C, 1, 1)`` constant-like input broadcasts without merging anything)."""
    if not any(ctx.is_batched(n) for n in inputs):
        return False
    probes = [(PROBE_BATCH,) + ctx.shape(n)[1:] if ctx.is_batched(n) else ctx.shape(n) for n in inputs]
    try:
        result = _full_output_shapes(module, probes, count)
    except ValueError:
        return False
    first = result[0] if count > 1 else result
    return len(first) > 0 and first[0] == PROBE_BATCH


def _add_module(ctx: ImportContext, node, module: Module, inputs: list[str], index: int) -> None:
    if not inputs:
        raise ValueError("it has no computed input (every input is a constant, and the op has no folding rule)")
    graph = ctx.graph
    for name in inputs:
        if name not in graph.input_names and name not in graph._producers:
            raise ValueError(f"it reads tensor {name!r}, which is a constant or not produced by any earlier node")
    outputs = [o for o in node.output if o]
    shapes = _output_shapes(ctx, module, inputs, len(outputs))
    for out, shape in zip(outputs, shapes):
        per_sample = int(np.prod(shape[1:], dtype=object)) if shape else 1
        if per_sample > MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"output {out!r} would hold {per_sample:,} values per sample (shape {shape}); "
                             f"cnnkit refuses more than {MAX_SAMPLE_ELEMENTS:,}")
    name = _module_name(ctx, node, index)
    graph.add_node(name, module, inputs, outputs if len(outputs) > 1 else outputs[0])
    batched = _keeps_batch(ctx, module, inputs, len(outputs))
    if not batched and any(ctx.is_batched(n) for n in inputs) and not ctx.batch_note:
        ctx.batch_note = f"{node_label(node)} moves or merges the batch axis"
    dtype = getattr(module, "to_dtype", None) or ctx.dtype_of(inputs[0])
    for i, (out, shape) in enumerate(zip(outputs, shapes)):
        ctx.shapes[out] = shape
        ctx.producers[out] = name
        ctx.dtypes[out] = (getattr(module, "extra_output_dtype", None) or dtype) if i else dtype
        if batched and shape and out == outputs[0]:
            ctx.batched.add(out)
    # a second output (indices, a mask) has the batch axis of the first when it has its shape
    for out, shape in zip(outputs[1:], shapes[1:]):
        if batched and shape == shapes[0]:
            ctx.batched.add(out)

