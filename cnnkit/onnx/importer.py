"""ONNX -> cnnkit: ``load(path)`` builds a :class:`~cnnkit.nn.graph.Graph` that runs and trains.

Each ONNX node is handled by the builder registered for its ``op_type`` (see :mod:`.ops`):

* a builder returns a cnnkit ``Module`` (wired to the node's non-constant inputs, or to the inputs it
  names by returning ``(module, inputs)``), an :class:`Alias` (the output *is* one input, e.g.
  ``Identity``), or a :class:`Folded` constant;
* a node whose inputs are all constants and whose op has a folding rule is evaluated once at import
  (``Constant``, ``Shape``, ``Gather``, ``Unsqueeze``, ``Concat`` ... the shape arithmetic exporters
  emit around ``Reshape``).

Shapes are static except the batch axis, which ``Shape`` folds to 0 -- ``Reshape``'s "copy this
axis" -- so ``x.view(x.size(0), -1)`` keeps working for any batch size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..nn.graph import Graph
from ..nn.module import Module
from ._deps import require


class UnsupportedOperatorError(NotImplementedError):
    """An ONNX operator (or attribute value) that the importer does not handle."""


@dataclass
class Alias:
    """The node's output is the given input tensor (Identity, inference Dropout...)."""

    tensor: str


@dataclass
class Folded:
    """The node's output is a constant, computed at import time."""

    value: np.ndarray


@dataclass
class OpSpec:
    build: Callable | None = None   # (ctx, node, attrs) -> Module | (Module, inputs) | Alias | Folded
    fold: Callable | None = None    # (ctx, attrs, *constant inputs) -> np.ndarray
    since: int = 1                  # the oldest opset the rule follows


OPS: dict[str, OpSpec] = {}


def register_op(op_type: str, *, fold: Callable | None = None):
    """Decorator: register the builder of ``op_type`` (an op may also be fold-only)."""

    def decorate(build):
        OPS[op_type] = OpSpec(build=build, fold=fold or (OPS[op_type].fold if op_type in OPS else None))
        return build

    return decorate


def register_fold(op_type: str):
    """Decorator: register how to evaluate ``op_type`` when all its inputs are constants."""

    def decorate(fold):
        spec = OPS.setdefault(op_type, OpSpec())
        spec.fold = fold
        return fold

    return decorate


@dataclass
class ImportContext:
    opset: int
    graph: Graph
    constants: dict = field(default_factory=dict)   # tensor name -> np.ndarray
    trainable: set = field(default_factory=set)     # constants that came from initializers
    shapes: dict = field(default_factory=dict)      # tensor name -> one sample's shape
    aliases: dict = field(default_factory=dict)     # onnx tensor name -> graph tensor name
    node_index: int = 0

    def resolve(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def is_const(self, name: str) -> bool:
        return name == "" or self.resolve(name) in self.constants

    def const(self, name: str, default=None):
        if name == "":
            return default
        return self.constants.get(self.resolve(name), default)

    def is_trainable(self, name: str) -> bool:
        return self.resolve(name) in self.trainable

    def shape(self, name: str) -> tuple:
        name = self.resolve(name)
        if name not in self.shapes:
            raise ValueError(f"ONNX import: the shape of tensor {name!r} is unknown")
        return self.shapes[name]

    def input(self, node, i: int, default=None):
        """Name of input ``i`` of ``node`` (``default`` when absent or empty)."""
        return node.input[i] if len(node.input) > i and node.input[i] != "" else default


def node_label(node) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node (outputs {list(node.output)})"


def attributes(node) -> dict:
    onnx = require("onnx")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _module_name(ctx: ImportContext, node, graph: Graph) -> str:
    """A readable, unique attribute name: the weight's prefix (``features.0.weight`` -> ``features_0``),
    else the node's name, else ``<op>_<index>``."""
    base = ""
    for name in node.input[1:2]:
        if ctx.is_trainable(name) and "." in name:
            base = name.rsplit(".", 1)[0]
    base = base or node.name or f"{node.op_type}_{ctx.node_index}"
    base = re.sub(r"\W+", "_", base).strip("_") or f"{node.op_type}_{ctx.node_index}"
    if not base[0].isalpha():
        base = f"n_{base}"
    name, k = base, 1
    while name in vars(graph) or hasattr(type(graph), name):
        k += 1
        name = f"{base}_{k}"
    return name


def _opset(model) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def _static_input_shape(value_info, input_shape) -> tuple:
    if input_shape is not None:
        return tuple(int(s) for s in input_shape)
    dims = value_info.type.tensor_type.shape.dim
    shape = []
    for d in list(dims)[1:]:
        if not d.HasField("dim_value"):
            raise ValueError(
                f"ONNX import: input {value_info.name!r} has a symbolic dimension {d.dim_param!r} besides the "
                "batch axis; pass input_shape=(C, H, W) to cnnkit.onnx.load"
            )
        shape.append(int(d.dim_value))
    return tuple(shape)


def load(path_or_model, input_shape=None, dtype=np.float32) -> Graph:
    """Read an ONNX file (or ``onnx.ModelProto``) into a trainable :class:`Graph`.

    ``input_shape`` is one sample's shape ``(C, H, W)``, needed only when the file leaves it symbolic.
    Imported layers skip cnnkit's geometry check (``check_geometry=False``): the model was defined
    elsewhere. Raises :class:`UnsupportedOperatorError` naming the operator and its node.
    """
    onnx = require("onnx")
    from onnx import numpy_helper

    from . import ops  # noqa: F401  (registers the builders)

    model = onnx.load(str(path_or_model)) if not isinstance(path_or_model, onnx.ModelProto) else path_or_model
    g = model.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"ONNX import: cnnkit graphs take one input tensor, this model has {[i.name for i in inputs]}")
    graph = Graph(input=_safe_tensor_name(inputs[0].name))
    ctx = ImportContext(opset=_opset(model), graph=graph)
    if inputs[0].name != graph.input_name:
        ctx.aliases[inputs[0].name] = graph.input_name
    ctx.shapes[graph.input_name] = _static_input_shape(inputs[0], input_shape)
    for name, value in initializers.items():
        ctx.constants[name] = value.astype(dtype) if np.issubdtype(value.dtype, np.floating) else value
        ctx.trainable.add(name)
    for index, node in enumerate(g.node):
        ctx.node_index = index
        _import_node(ctx, node, dtype)
    outputs = [ctx.resolve(o.name) for o in g.output]
    for name in outputs:
        if name in ctx.constants:
            raise ValueError(f"ONNX import: output {name!r} is a constant; nothing to compute")
    graph.set_outputs(outputs)
    graph.to(dtype)
    graph.opset = ctx.opset
    return graph


def _safe_tensor_name(name: str) -> str:
    return name or "input"


def _import_node(ctx: ImportContext, node, dtype) -> None:
    spec = OPS.get(node.op_type)
    if spec is None or node.domain not in ("", "ai.onnx"):
        raise UnsupportedOperatorError(
            f"ONNX import: operator {node.op_type!r}{f' (domain {node.domain})' if node.domain else ''} in "
            f"{node_label(node)} is not supported; supported: {sorted(OPS)}"
        )
    attrs = attributes(node)
    present = [n for n in node.input if n != ""]
    if spec.fold is not None and all(ctx.is_const(n) for n in present):
        values = [ctx.const(n) if n != "" else None for n in node.input]
        ctx.constants[node.output[0]] = np.asarray(spec.fold(ctx, attrs, *values))
        return
    if spec.build is None:
        raise UnsupportedOperatorError(
            f"ONNX import: {node_label(node)} is supported only with constant inputs (it is folded at import)"
        )
    try:
        result = spec.build(ctx, node, attrs)
    except (UnsupportedOperatorError, ValueError) as exc:
        if node_label(node) in str(exc):
            raise
        raise type(exc)(f"ONNX import, {node_label(node)}: {exc}") from exc
    if isinstance(result, Folded):
        ctx.constants[node.output[0]] = np.asarray(result.value)
    elif isinstance(result, Alias):
        target = ctx.resolve(result.tensor)
        if target != node.output[0]:
            ctx.aliases[node.output[0]] = target
    else:
        module, inputs = result if isinstance(result, tuple) else (result, [n for n in present if not ctx.is_const(n)])
        _add_module(ctx, node, module, [ctx.resolve(n) for n in inputs], dtype)


def _add_module(ctx: ImportContext, node, module: Module, inputs: list[str], dtype) -> None:
    if not inputs:
        raise ValueError(f"ONNX import: {node_label(node)} has no non-constant input")
    graph = ctx.graph
    for name in inputs:
        if name != graph.input_name and name not in graph._producers:
            raise UnsupportedOperatorError(
                f"ONNX import: {node_label(node)} reads tensor {name!r}, which cnnkit does not produce "
                "(an extra output such as MaxPool indices or a Dropout mask)"
            )
    name = _module_name(ctx, node, graph)
    output = node.output[0]
    shapes = [ctx.shape(n) for n in inputs]
    try:
        shape = module.output_shape(*shapes)
    except ValueError as exc:
        raise ValueError(f"ONNX import, {node_label(node)}: {exc}") from exc
    graph.add_node(name, module, inputs, output)
    ctx.shapes[output] = tuple(shape)
