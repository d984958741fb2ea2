"""ONNX interchange: ``load(path)`` -> a trainable :class:`~cnnkit.nn.graph.Graph`;
``export(model, path, input_shape)`` writes any cnnkit model as an ONNX file.

``onnx`` (and ``onnxruntime``, to run the files) are optional: ``pip install 'cnnkit[onnx]'``.
They are imported only when these functions run.
"""
from .export_registry import register_exporter
from .exporter import ExportContext, export
from .importer import UnsupportedOperatorError, load, register_fold, register_op

__all__ = ["load", "export", "register_op", "register_fold", "register_exporter", "ExportContext",
           "UnsupportedOperatorError"]
