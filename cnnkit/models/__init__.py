"""The model zoo: classic architectures by name (``list_models()``, ``create(name, **kw)``)."""
from . import small  # noqa: F401  (registers digitnet)
from .registry import create, list_models, register

__all__ = ["create", "list_models", "register"]
