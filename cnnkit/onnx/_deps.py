"""Lazy imports of the optional ``onnx`` / ``onnxruntime`` packages, with an install hint."""
from __future__ import annotations

import importlib

HINT = "pip install 'cnnkit[onnx]'  (or: pip install onnx onnxruntime)"


def require(name: str = "onnx"):
    """Import and return ``name``; raise ``ImportError`` with an install hint when it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"cnnkit.onnx needs the optional package {name!r}, which is not installed: {HINT}") from exc
