"""A registry of model constructors, so names (CLI, checkpoints) map to code without if/elif chains.

``create(name, **kwargs)`` builds a model and records ``model.config = {"name": ..., "kwargs": ...}``
so that a checkpoint can rebuild the same architecture later (``cnnkit.io.load``).
"""
from __future__ import annotations

from typing import Callable

_MODELS: dict[str, Callable] = {}
_INPUT_SHAPES: dict[str, tuple] = {}


def register(name: str | None = None, *, input_shape: tuple | None = None):
    """Decorator: register a constructor under ``name`` (default: the function's name).

    ``input_shape`` is the model's usual input for one sample (``default_input_shape``).
    """

    def decorate(fn: Callable) -> Callable:
        key = name or fn.__name__
        if key in _MODELS and _MODELS[key] is not fn:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = fn
        if input_shape is not None:
            _INPUT_SHAPES[key] = tuple(input_shape)
        return fn

    return decorate


def list_models() -> list[str]:
    """Names accepted by ``create``, sorted."""
    return sorted(_MODELS)


def constructor(name: str) -> Callable:
    """The function registered under ``name`` (to inspect its parameters); unknown names list the known ones."""
    if name not in _MODELS:
        known = ", ".join(list_models()) or "(none registered)"
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return _MODELS[name]


def create(name: str, **kwargs):
    """Build the registered model ``name`` with ``kwargs``; unknown names list the known ones."""
    if name not in _MODELS:
        known = ", ".join(list_models()) or "(none registered)"
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    model = _MODELS[name](**kwargs)
    model.config = {"name": name, "kwargs": dict(kwargs)}
    return model


def default_input_shape(name: str) -> tuple:
    """The usual input of model ``name`` for one sample: what it was registered with, else (3, 224, 224)."""
    if name not in _MODELS:
        known = ", ".join(list_models()) or "(none registered)"
        raise ValueError(f"unknown model {name!r}; known models: {known}")
    return _INPUT_SHAPES.get(name, (3, 224, 224))
