"""Layers, containers and losses with PyTorch's names and explicit forward/backward passes."""
from . import init
from .containers import Concat, Residual, Sequential
from .linear import Linear
from .module import Module, Parameter, is_grad_enabled, no_grad
from .normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm

__all__ = [
    "Module", "Parameter", "no_grad", "is_grad_enabled", "init",
    "Sequential", "Residual", "Concat",
    "Linear",
    "BatchNorm1d", "BatchNorm2d", "LocalResponseNorm",
]
