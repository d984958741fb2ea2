"""ONNX's backend interface (``onnx.backend.base.Backend``) on cnnkit, the way onnxruntime and
other runtimes prove conformance with ONNX's own backend test suite::

    import cnnkit.onnx.backend as backend
    rep = backend.prepare(model)            # an onnx.ModelProto (or a path)
    outputs = rep.run([x])                  # or backend.run_model(model, [x])

A model runs as the :class:`~cnnkit.nn.graph.Graph` that :func:`cnnkit.onnx.load` builds, in
eval mode, without caching anything for backward. Two things differ from a plain ``load``:

* **Inputs that cnnkit needs as constants are bound from the values given to** ``run``. ONNX lets
  any tensor be a graph input, even a convolution's weight or a ``Reshape`` target; cnnkit builds
  layers from constant weights, shapes and pads. When the importer asks for such an input (it
  raises :class:`~cnnkit.onnx.registry.NeedsConstantError`), the backend imports the model again
  with that input fixed to the value passed to ``run``; the graph is kept for later runs with the
  same values.
* **Outputs that do not depend on any runtime input** (folded at import) are returned as the
  constants they are.

The floating type is the model's: float64 when its float inputs are ``double``, else float32.
Only the CPU device is supported.
"""
from __future__ import annotations

import numpy as np

from ..nn.module import no_grad
from ._deps import require
from .importer import import_model
from .registry import NeedsConstantError

onnx = require("onnx")
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict  # noqa: E402


def _float_dtype(model) -> np.dtype:
    """float64 when the model's float inputs (or, without any, its outputs) are double."""
    initializers = {t.name for t in model.graph.initializer}
    codes = [i.type.tensor_type.elem_type for i in model.graph.input if i.name not in initializers]
    codes += [o.type.tensor_type.elem_type for o in model.graph.output]
    for code in codes:
        if code == onnx.TensorProto.DOUBLE:
            return np.dtype(np.float64)
        if code == onnx.TensorProto.FLOAT:
            return np.dtype(np.float32)
    return np.dtype(np.float32)


class CnnkitRep(BackendRep):
    """A prepared model: call :meth:`run` with the graph inputs (a list in the graph's input
    order, or a dict by name); returns the outputs in the graph's output order."""

    def __init__(self, model, dtype=None, max_folded_bytes=None):
        self.model = model
        self.dtype = np.dtype(dtype) if dtype is not None else _float_dtype(model)
        self.max_folded_bytes = max_folded_bytes
        initializers = {t.name for t in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in initializers]
        self.output_names = [o.name for o in model.graph.output]
        self._bound: dict[str, np.ndarray] = {}   # inputs fixed as constants, with their values
        self._graph = None
        self._imported = False
        self._constant_outputs: dict = {}

    def _feeds(self, inputs) -> dict:
        if isinstance(inputs, dict):
            unknown = set(inputs) - set(self.input_names)
            if unknown:
                raise ValueError(f"cnnkit backend: unknown inputs {sorted(unknown)}; the model's are {self.input_names}")
            feeds = dict(inputs)
        else:
            inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
            if len(inputs) > len(self.input_names):
                raise ValueError(f"cnnkit backend: {len(inputs)} inputs given, the model takes {self.input_names}")
            feeds = dict(zip(self.input_names, inputs))
        for name, value in feeds.items():
            if isinstance(value, (list, tuple, dict)) or value is None:
                raise TypeError(f"cnnkit backend: input {name!r} is a {type(value).__name__}; cnnkit takes tensors "
                                "only (no sequence, map or optional types)")
        return {name: np.asarray(value) for name, value in feeds.items()}

    def _import(self, feeds: dict) -> None:
        """(Re)import the model with the inputs cnnkit needs as constants bound to ``feeds``."""
        if self._imported and all(
                name in feeds and feeds[name].shape == value.shape and np.array_equal(feeds[name], value)
                for name, value in self._bound.items()):
            return
        bound = {name: feeds[name] for name in self._bound if name in feeds}
        kwargs = {} if self.max_folded_bytes is None else {"max_folded_bytes": self.max_folded_bytes}
        for _ in range(len(self.input_names) + 1):
            try:
                graph, constant_outputs = import_model(self.model, dtype=self.dtype, constants=bound, **kwargs)
                break
            except NeedsConstantError as exc:
                if exc.tensor not in feeds or exc.tensor in bound:
                    raise
                bound[exc.tensor] = feeds[exc.tensor]
        self._graph = None if graph is None else graph.eval()
        self._constant_outputs, self._bound, self._imported = constant_outputs, bound, True

    def run(self, inputs, **kwargs):
        feeds = self._feeds(inputs)
        self._import(feeds)
        graph = self._graph
        computed = [name for name in self.output_names if name not in self._constant_outputs]
        values = {}
        if computed:
            missing = [name for name in graph.input_names if name not in feeds]
            if missing:
                raise ValueError(f"cnnkit backend: no value given for inputs {missing}")
            xs = [feeds[name] for name in graph.input_names]
            xs = [x.astype(self.dtype) if np.issubdtype(x.dtype, np.floating) else x for x in xs]
            with no_grad():
                ys = graph(*xs)
            values = dict(zip(computed, (ys,) if len(computed) == 1 else ys))
        outputs = [np.asarray(self._constant_outputs[name] if name in self._constant_outputs else values[name])
                   for name in self.output_names]
        return namedtupledict("Outputs", self.output_names)(*outputs)


class CnnkitBackend(Backend):
    """cnnkit behind ``onnx.backend.base.Backend``: ``prepare``, ``run_model``, ``run_node``,
    ``supports_device``."""

    @classmethod
    def is_compatible(cls, model, device: str = "CPU", **kwargs) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> CnnkitRep:
        """Check the model with ``onnx.checker`` and return a :class:`CnnkitRep` (the import
        itself happens at the first ``run``, when the values of bound inputs are known).
        ``dtype`` and ``max_folded_bytes`` may be passed as keywords."""
        if not cls.supports_device(device):
            raise ValueError(f"cnnkit backend: device {device!r} is not supported (only 'CPU')")
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model))
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cnnkit backend: the model fails onnx.checker: {first}") from None
        return CnnkitRep(model, kwargs.get("dtype"), kwargs.get("max_folded_bytes"))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        """Run one node on ``inputs`` (arrays, in the node's input order)."""
        from onnx import helper

        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        arrays = [np.asarray(x) for x in inputs]
        graph_inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
                        for name, x in zip(node.input, arrays) if name]
        graph_outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
                         for name in node.output if name]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        rep = CnnkitRep(model, kwargs.get("dtype"))
        return rep.run([x for name, x in zip(node.input, arrays) if name])

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return Device(device).type == DeviceType.CPU


prepare = CnnkitBackend.prepare
run_model = CnnkitBackend.run_model
run_node = CnnkitBackend.run_node
supports_device = CnnkitBackend.supports_device
is_compatible = CnnkitBackend.is_compatible
