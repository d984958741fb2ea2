"""cnnkit -> ONNX: ``export(model, path, input_shape)``.

Export walks the module tree. Every cnnkit module exports itself with its
``onnx_export(ctx, x, prefix)`` method: a leaf layer emits its ONNX node(s), a container
(``Sequential``, ``Residual``, ``Concat``, ``Graph``) exports its children and the node that
merges them (``Add``, ``Concat``). Initializers are named by state-dict key
(``layer1.0.conv1.weight``), as PyTorch's exporter does. A module with several inputs (``Add``,
``Cat``, ``MatMul``... in a ``Graph``) gets a list of tensor names as ``x``; one with several
outputs (``Split``, a ``MaxPool`` with indices) returns a tuple of names. The layers ONNX import
adds (:mod:`cnnkit.onnx.layers` and friends) export the operators they were read from, so an
imported graph exports back.

For a module type defined outside cnnkit, :func:`register_exporter` adds an exporter
``fn(ctx, module, x, prefix) -> y`` (it takes precedence over a method): ``x`` and ``y`` are
tensor names, ``prefix`` is the module's state-dict prefix; ``ctx.shape(x)`` is one sample's
shape of ``x``; ``ctx.node``, ``ctx.constant`` and ``ctx.join`` build the graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..nn.module import Module
from ._deps import require
from .export_registry import find_exporter

DEFAULT_OPSET = 13


class ExportContext:
    """Collects the ONNX nodes and initializers; tracks one sample's shape of every tensor, and
    the element type of those that are not in the export dtype (after a ``Cast``, an index output)."""

    def __init__(self, opset: int, dtype):
        self.opset = int(opset)
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.initializers: list = []
        self.shapes: dict[str, tuple] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self._used: set[str] = set()

    def fresh(self, base: str) -> str:
        base = base or "t"
        name, k = base, 1
        while name in self._used:
            k += 1
            name = f"{base}_{k}"
        self._used.add(name)
        return name

    def shape(self, tensor: str) -> tuple:
        return self.shapes[tensor]

    def dtype_of(self, tensor: str) -> np.dtype:
        """The element type of ``tensor`` (the export dtype unless a ``Cast`` or index output made it other)."""
        return self.dtypes.get(tensor, self.dtype)

    @staticmethod
    def join(prefix: str, name: str) -> str:
        """A child's name under ``prefix`` (the state-dict convention: ``layer1.0`` + ``conv1``)."""
        return f"{prefix}.{name}" if prefix else name

    def reshape(self, x: str, target, prefix: str) -> str:
        """A ``Reshape`` of ``x`` to ``target`` (ONNX's rules: 0 copies a dimension, -1 is inferred)."""
        shape = self.constant(self.join(prefix, "shape"), np.array(target, np.int64))
        return self.node("Reshape", [x, shape], self.join(prefix, "Reshape"))

    def constant(self, name: str, value, dtype=None, like: str | None = None) -> str:
        """Add an initializer (floating arrays in the export dtype, or in the type of tensor
        ``like``, the operand it meets: ONNX's arithmetic takes one type); returns its name."""
        from onnx import numpy_helper

        value = np.asarray(value)
        if dtype is None and like is not None and (np.issubdtype(value.dtype, np.floating)
                                                   or value.dtype.kind == self.dtype_of(like).kind):
            dtype = self.dtype_of(like)
        if dtype is not None:
            value = value.astype(dtype)
        elif np.issubdtype(value.dtype, np.floating):
            value = value.astype(self.dtype)
        name = self.fresh(name)
        if not value.flags.c_contiguous:  # (np.ascontiguousarray would turn a scalar into shape (1,))
            value = np.ascontiguousarray(value)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op_type: str, inputs, name: str, shape=None, **attrs) -> str:
        """Add one node; returns its output name (``shape``: one sample's output shape, if known)."""
        return self.node_outputs(op_type, inputs, name, 1, None if shape is None else [shape], **attrs)[0]

    def node_outputs(self, op_type: str, inputs, name: str, count: int, shapes=None, **attrs) -> tuple[str, ...]:
        """Add one node with ``count`` outputs (``Split``, ``MaxPool`` with ``Indices``); returns
        their names (``shapes``: one sample's shape of each output, if known)."""
        from onnx import helper

        outputs = [self.fresh(name)] + [self.fresh(f"{name}_{i}") for i in range(1, count)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=outputs[0], **attrs))
        for output, shape in zip(outputs, shapes or ()):
            self.shapes[output] = tuple(int(s) for s in shape)
        return tuple(outputs)

    def require_opset(self, version: int, what: str) -> None:
        """Refuse, naming ``what`` and the opset it needs, when exporting below ``version``."""
        if self.opset < version:
            raise NotImplementedError(f"ONNX export: {what} needs opset >= {version}; export with "
                                      f"opset={version} or later (this export is at opset {self.opset})")

    def _record(self, module: Module, y, inputs) -> None:
        """One sample's shape and the type of each output tensor ``y`` (a name, or a tuple of
        names) of ``module`` applied to tensors ``inputs``, as the importer tracks them: a cast
        sets its type, an extra output (indices, a mask) has the module's ``extra_output_dtype``."""
        names = y if isinstance(y, tuple) else (y,)
        dtype = getattr(module, "to_dtype", None) or self.dtype_of(inputs[0])
        leaf = next(module.children(), None) is None  # a container's outputs are its children's
        for i, name in enumerate(names):
            if not leaf or name in inputs or name in self.dtypes:
                continue  # typed by a child, passed through (Identity, Dropout) or typed by the layer
            out = (getattr(module, "extra_output_dtype", None) or dtype) if i else dtype
            if np.dtype(out) != self.dtype:
                self.dtypes[name] = np.dtype(out)
        if all(n in self.shapes for n in names):
            return
        shapes = module.output_shape(*[self.shapes[a] for a in inputs])
        for name, shape in zip(names, shapes if isinstance(y, tuple) else (shapes,)):
            self.shapes.setdefault(name, tuple(int(s) for s in shape))

    def export(self, module: Module, x: str, prefix: str) -> str:
        """Export ``module`` applied to tensor ``x``; returns the output tensor name."""
        exporter = find_exporter(module)
        if exporter is None:
            raise NotImplementedError(
                f"ONNX export: no exporter for {type(module).__name__} (module {prefix or '<root>'!r}); "
                f"register one with @cnnkit.onnx.register_exporter({type(module).__name__}) or give the "
                "class an onnx_export(ctx, x, prefix) method"
            )
        y = exporter(self, module, x, prefix)
        self._record(module, y, [x])
        return y

    def export_multi(self, module: Module, inputs: list, prefix: str) -> str:
        """Export a module with several inputs (``Add``, ``Cat``, ... in a ``Graph``)."""
        exporter = find_exporter(module)
        if exporter is None:
            raise NotImplementedError(f"ONNX export: no exporter for the multi-input {type(module).__name__} "
                                      f"({prefix!r})")
        y = exporter(self, module, list(inputs), prefix)
        self._record(module, y, list(inputs))
        return y


def export(model: Module, path, input_shape, *, opset: int | None = None, input_name: str = "input",
           output_name: str = "output", dynamic_batch: bool = True, dtype=np.float32, check: bool = True):
    """Write ``model`` as an ONNX file for inputs of one-sample shape ``input_shape`` ``(C, H, W)``.

    The graph is the model's inference (eval-mode) computation: BatchNorm uses its running
    statistics, Dropout is the identity. The batch axis is symbolic (``N``) unless
    ``dynamic_batch=False``. ``opset`` defaults to 13, or to the opset of an imported graph
    (``cnnkit.onnx.load``) when that is later, so that it exports the operators it was read from.
    A model with several outputs (a ``Graph``) gets outputs ``output``, ``output_1``, ...
    The file is checked with ``onnx.checker`` and the ``ModelProto`` returned.
    """
    onnx = require("onnx")
    from onnx import helper

    if opset is None:
        opset = max(DEFAULT_OPSET, int(getattr(model, "opset", 0) or 0))
    batch_only = getattr(model, "batch_size", None)
    if batch_only is not None:
        raise NotImplementedError(
            f"ONNX export: this graph runs only at batch size {batch_only} ({getattr(model, 'batch_note', '')}); "
            "export works on one sample's shape, so graphs that move or merge the batch axis do not export")
    input_shape = tuple(int(s) for s in input_shape)
    model.output_shape(input_shape)  # clear shape errors before any ONNX work
    ctx = ExportContext(opset, dtype)
    x = ctx.fresh(input_name)
    ctx.shapes[x] = input_shape
    y = ctx.export(model, x, "")
    ys = list(y) if isinstance(y, tuple) else [y]
    names = [output_name] + [f"{output_name}_{i}" for i in range(1, len(ys))]
    for i, (tensor, name) in enumerate(zip(ys, names)):
        if tensor == x or tensor in ys[:i]:  # an output that is the input, or another output
            ys[i] = ctx.node("Identity", [tensor], name, shape=ctx.shapes[tensor])
            if tensor in ctx.dtypes:
                ctx.dtypes[ys[i]] = ctx.dtypes[tensor]
    for i, name in enumerate(names):  # the outputs take the requested names
        if ys[i] != name and name not in ctx._used:
            _rename(ctx, ys[i], name)
            ys[i] = name
    batch = "N" if dynamic_batch else 1

    def info(tensor, shape):
        return helper.make_tensor_value_info(tensor, helper.np_dtype_to_tensor_dtype(ctx.dtype_of(tensor)),
                                             (batch,) + tuple(shape))

    graph = helper.make_graph(ctx.nodes, type(model).__name__, [info(x, input_shape)],
                              [info(t, ctx.shapes[t]) for t in ys], initializer=ctx.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cnnkit")
    proto.ir_version = min(proto.ir_version, _max_ir_version(opset))
    if check:
        onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto


def _rename(ctx: ExportContext, old: str, new: str) -> None:
    """Give tensor ``old`` the name ``new`` everywhere (its producer and its consumers)."""
    for node in ctx.nodes:
        for names in (node.output, node.input):
            for i, name in enumerate(names):
                if name == old:
                    names[i] = new
    ctx._used.add(new)
    ctx.shapes[new] = ctx.shapes[old]
    if old in ctx.dtypes:
        ctx.dtypes[new] = ctx.dtypes[old]


def _max_ir_version(opset: int) -> int:
    """The IR version that goes with ``opset``, so older runtimes load the file."""
    from onnx import helper

    table = getattr(helper, "VERSION_TABLE", [])
    versions = [ir for _, ir, op, *_ in table if op == opset]
    return min(versions) if versions else 8
