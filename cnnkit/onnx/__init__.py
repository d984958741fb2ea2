"""ONNX interchange: ``load(path)`` -> a trainable :class:`~cnnkit.nn.graph.Graph`;
``export(model, path, input_shape)`` writes any cnnkit model as an ONNX file.

``onnx`` (and ``onnxruntime``, to run the files) are optional: ``pip install 'cnnkit[onnx]'``.
They are imported only when these functions run.
"""
from .exporter import ExportContext, export, register_exporter
from .importer import UnsupportedOperatorError, load, register_fold, register_op

__all__ = ["load", "export", "register_op", "register_fold", "register_exporter", "ExportContext",
           "UnsupportedOperatorError"]
