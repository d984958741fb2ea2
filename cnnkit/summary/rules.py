"""The per-layer rules summary adds up: the layer's own methods, or a registered rule for a type
defined outside cnnkit (which takes precedence)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..functional.memory import LayerMemory
from ..nn.module import Module


@dataclass(frozen=True)
class LayerRule:
    """Rules for a layer type defined outside cnnkit (see :func:`register_layer`)."""

    macs: Callable | None = None  # (module, in_shape, out_shape) -> int
    memory: Callable | None = None  # (module, in_shape, out_shape, batch, itemsize) -> LayerMemory
    counts_activation: bool | Callable = True  # or (module, in_shape, out_shape) -> bool


_RULES: dict[type, LayerRule] = {}


def register_layer(*types: type, macs: Callable | None = None, memory: Callable | None = None,
                   counts_activation: bool | Callable = True) -> None:
    """Give layer ``types`` defined outside cnnkit their MAC and memory rules.

    ``macs(module, in_shape, out_shape)``: multiply-adds of one sample; ``memory(module,
    in_shape, out_shape, batch, itemsize)``: a :class:`LayerMemory`; ``counts_activation``: a
    bool or ``(module, in_shape, out_shape) -> bool``. A rule left out falls back to the
    module's own method. (cnnkit's own layers carry these as methods.)
    """
    rule = LayerRule(macs, memory, counts_activation)
    for t in types:
        _RULES[t] = rule


def _registered(module: Module) -> LayerRule | None:
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None


def macs_of(module: Module, in_shape, out_shape) -> int:
    rule = _registered(module)
    if rule is not None and rule.macs is not None:
        return int(rule.macs(module, in_shape, out_shape))
    return int(module.macs(tuple(in_shape), tuple(out_shape)))


def memory_of(module: Module, in_shape, out_shape, batch: int, dtype) -> LayerMemory:
    rule = _registered(module)
    if rule is not None and rule.memory is not None:
        return rule.memory(module, in_shape, out_shape, batch, np.dtype(dtype).itemsize)
    return module.step_memory(tuple(in_shape), tuple(out_shape), batch, np.dtype(dtype))


def counts_activation_of(module: Module, in_shape, out_shape) -> bool:
    rule = _registered(module)
    if rule is not None:
        if callable(rule.counts_activation):
            return bool(rule.counts_activation(module, in_shape, out_shape))
        return bool(rule.counts_activation)
    return bool(module.counts_activation(tuple(in_shape), tuple(out_shape)))
