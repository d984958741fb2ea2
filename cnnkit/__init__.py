"""cnnkit: convolutional neural networks in NumPy, with explicit forward and backward passes."""
from . import data, finetune, io, models, nn, onnx, optim, profile  # onnx imports the onnx package lazily
from ._version import __version__
from .nn.module import is_grad_enabled, no_grad
from .summary import summary
from .testing.gradcheck import gradcheck


__all__ = ["data", "finetune", "io", "models", "nn", "onnx", "optim", "profile", "summary", "no_grad", "is_grad_enabled", "gradcheck", "__version__"]
