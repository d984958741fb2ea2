"""cnnkit -> ONNX: ``export(model, path, input_shape)``.

Export walks the module tree. Every cnnkit module exports itself with its
``onnx_export(ctx, x, prefix)`` method: a leaf layer emits its ONNX node(s), a container
(``Sequential``, ``Residual``, ``Concat``, ``Graph``) exports its children and the node that
merges them (``Add``, ``Concat``). Initializers are named by state-dict key
(``layer1.0.conv1.weight``), as PyTorch's exporter does.

For a module type defined outside cnnkit, :func:`register_exporter` adds an exporter
``fn(ctx, module, x, prefix) -> y`` (it takes precedence over a method): ``x`` and ``y`` are
tensor names, ``prefix`` is the module's state-dict prefix; ``ctx.shape(x)`` is one sample's
shape of ``x``; ``ctx.node``, ``ctx.constant`` and ``ctx.join`` build the graph.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..nn.module import Module
from . import export_layers
from ._deps import require
from .export_registry import find_exporter

DEFAULT_OPSET = 13


class ExportContext:
    """Collects the ONNX nodes and initializers; tracks one sample's shape of every tensor."""

    def __init__(self, opset: int, dtype):
        self.opset = int(opset)
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.initializers: list = []
        self.shapes: dict[str, tuple] = {}
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

    @staticmethod
    def join(prefix: str, name: str) -> str:
        """A child's name under ``prefix`` (the state-dict convention: ``layer1.0`` + ``conv1``)."""
        return f"{prefix}.{name}" if prefix else name

    def reshape(self, x: str, target, prefix: str) -> str:
        """A ``Reshape`` of ``x`` to ``target`` (ONNX's rules: 0 copies a dimension, -1 is inferred)."""
        shape = self.constant(self.join(prefix, "shape"), np.array(target, np.int64))
        return self.node("Reshape", [x, shape], self.join(prefix, "Reshape"))

    def constant(self, name: str, value, dtype=None) -> str:
        """Add an initializer (floating arrays in the export dtype); returns its name."""
        from onnx import numpy_helper

        value = np.asarray(value)
        if dtype is not None:
            value = value.astype(dtype)
        elif np.issubdtype(value.dtype, np.floating):
            value = value.astype(self.dtype)
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op_type: str, inputs, name: str, shape=None, **attrs) -> str:
        """Add one node; returns its output name (``shape``: one sample's output shape, if known)."""
        from onnx import helper

        output = self.fresh(name)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        if shape is not None:
            self.shapes[output] = tuple(int(s) for s in shape)
        return output

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
        if y not in self.shapes:
            self.shapes[y] = tuple(module.output_shape(self.shapes[x]))
        return y

    def export_multi(self, module: Module, inputs: list, prefix: str) -> str:
        """Export a module with several inputs (``Add``, ``Cat``, ... in a ``Graph``)."""
        exporter = find_exporter(module)
        if exporter is None:
            raise NotImplementedError(f"ONNX export: no exporter for the multi-input {type(module).__name__} "
                                      f"({prefix!r})")
        y = exporter(self, module, list(inputs), prefix)
        if y not in self.shapes:
            self.shapes[y] = tuple(module.output_shape(*[self.shapes[a] for a in inputs]))
        return y


def export(model: Module, path, input_shape, *, opset: int = DEFAULT_OPSET, input_name: str = "input",
           output_name: str = "output", dynamic_batch: bool = True, dtype=np.float32, check: bool = True):
    """Write ``model`` as an ONNX file for inputs of one-sample shape ``input_shape`` ``(C, H, W)``.

    The graph is the model's inference (eval-mode) computation: BatchNorm uses its running
    statistics, Dropout is the identity. The batch axis is symbolic (``N``) unless
    ``dynamic_batch=False``. The file is checked with ``onnx.checker`` and the ``ModelProto`` returned.
    """
    onnx = require("onnx")
    from onnx import TensorProto, helper

    export_layers.register_all()
    input_shape = tuple(int(s) for s in input_shape)
    model.output_shape(input_shape)  # clear shape errors before any ONNX work
    ctx = ExportContext(opset, dtype)
    x = ctx.fresh(input_name)
    ctx.shapes[x] = input_shape
    y = ctx.export(model, x, "")
    if y == x:
        y = ctx.node("Identity", [x], output_name, shape=input_shape)
    # the last node's output takes the requested output name
    last = ctx.nodes[-1]
    if last.output[0] == y and output_name not in ctx._used:
        last.output[0] = output_name
        ctx.shapes[output_name] = ctx.shapes[y]
        y = output_name
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) if hasattr(helper, "np_dtype_to_tensor_dtype") \
        else TensorProto.FLOAT
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        ctx.nodes, type(model).__name__,
        [helper.make_tensor_value_info(x, elem, (batch,) + input_shape)],
        [helper.make_tensor_value_info(y, elem, (batch,) + tuple(ctx.shapes[y]))],
        initializer=ctx.initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cnnkit")
    proto.ir_version = min(proto.ir_version, _max_ir_version(opset))
    if check:
        onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
    return proto


def _max_ir_version(opset: int) -> int:
    """The IR version that goes with ``opset``, so older runtimes load the file."""
    from onnx import helper

    table = getattr(helper, "VERSION_TABLE", [])
    versions = [ir for _, ir, op, *_ in table if op == opset]
    return min(versions) if versions else 8
