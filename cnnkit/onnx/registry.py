"""The operator table of the ONNX importer: what each ``op_type`` turns into.

The op modules (:mod:`.ops`, :mod:`.ops_math`, :mod:`.ops_shape`) register into :data:`OPS`;
the importer imports them (on first use) and reads it. Nothing here imports the importer or the op
modules, so the package has no import cycle: ``importer -> ops* -> registry``.

A *builder* ``(ctx, node, attrs)`` returns one of

* a cnnkit ``Module``, wired to the node's non-constant inputs, or ``(module, inputs)`` to name
  the inputs it reads;
* an :class:`Alias`: the node's output *is* one of its inputs (``Identity``, eval ``Dropout``);
* a :class:`Folded` constant, computed at import.

A *fold rule* ``(ctx, attrs, *constant inputs)`` evaluates the node once at import when all its
inputs are constants (the shape arithmetic exporters emit around ``Reshape``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class UnsupportedOperatorError(NotImplementedError):
    """An ONNX operator (or attribute value) that the importer does not handle."""


class NeedsConstantError(UnsupportedOperatorError):
    """A builder needs ``tensor`` as a constant (a weight, a shape, pads...), but it is computed
    or a graph input. The backend uses it to bind such inputs from the values it is given."""

    def __init__(self, message: str, tensor: str):
        super().__init__(message)
        self.tensor = tensor


@dataclass
class Alias:
    """The node's output is the given input tensor (Identity, inference Dropout...)."""

    tensor: str


@dataclass
class Folded:
    """The node's output is a constant, computed at import time."""

    value: object


@dataclass
class OpSpec:
    build: Callable | None = None   # (ctx, node, attrs) -> Module | (Module, inputs) | Alias | Folded
    fold: Callable | None = None    # (ctx, attrs, *constant inputs) -> np.ndarray


OPS: dict[str, OpSpec] = {}


def register_op(op_type: str, *, fold: Callable | None = None):
    """Decorator: register the builder of ``op_type`` (an op may also be fold-only)."""

    def decorate(build):
        previous = OPS.get(op_type)
        OPS[op_type] = OpSpec(build=build, fold=fold or (previous.fold if previous else None))
        return build

    return decorate


def register_fold(op_type: str):
    """Decorator: register how to evaluate ``op_type`` when all its inputs are constants."""

    def decorate(fold):
        OPS.setdefault(op_type, OpSpec()).fold = fold
        return fold

    return decorate


def node_label(node) -> str:
    """``Conv node 'conv1'`` (or the node's outputs when it has no name), for error messages."""
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node (outputs {list(node.output)})"
