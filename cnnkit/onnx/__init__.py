"""ONNX interchange: ``load(path)`` -> a trainable :class:`~cnnkit.nn.graph.Graph`;
``export(model, path, input_shape)`` writes any cnnkit model as an ONNX file;
:mod:`cnnkit.onnx.backend` runs ONNX models through cnnkit behind ONNX's backend interface.

``onnx`` (and ``onnxruntime``, to run the files) are optional: ``pip install -e '.[onnx]'`` in the
checkout. They are imported only when these functions run.
"""
from .edit import strip_softmax
from .export_registry import register_exporter
from .exporter import ExportContext, export
from .importer import load, register_fold, register_op, supported_operators
from .registry import NeedsConstantError, UnsupportedOperatorError

__all__ = ["load", "export", "register_op", "register_fold", "register_exporter", "ExportContext",
           "UnsupportedOperatorError", "NeedsConstantError", "supported_operators", "strip_softmax"]
