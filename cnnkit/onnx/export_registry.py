"""Exporters for module types defined outside cnnkit (cnnkit's own modules export themselves with
their ``onnx_export`` method); looked up along the class's MRO, before the method."""
from __future__ import annotations

from ..nn.module import Module

EXPORTERS: dict[type, object] = {}  # only types defined outside cnnkit: cnnkit's export themselves


def register_exporter(*types):
    """Decorator: ``fn(ctx, module, x, prefix) -> output tensor name`` exports these module types
    (defined outside cnnkit; cnnkit's modules have an ``onnx_export`` method)."""

    def decorate(fn):
        for t in types:
            EXPORTERS[t] = fn
        return fn

    return decorate


def find_exporter(module: Module):
    for cls in type(module).__mro__:
        if cls in EXPORTERS:
            return EXPORTERS[cls]
    method = getattr(module, "onnx_export", None)
    if method is not None:
        return lambda ctx, m, x, prefix: method(ctx, x, prefix)
    return None
