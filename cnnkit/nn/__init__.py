"""Layers, containers and losses with PyTorch's names and explicit forward/backward passes."""
from . import init
from .activation import Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .containers import Concat, Residual, Sequential
from .conv import Conv2d, LocallyConnected2d
from .dropout import Dropout
from .flatten import Flatten
from .fuse import fold_batchnorm, fuse
from .graph import Add, Cat, Graph, Mul, MultiInputModule
from .linear import Linear
from .loss import CrossEntropyLoss, MultiMarginLoss
from .module import Module, Parameter, is_grad_enabled, no_grad
from .normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from .pooling import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from .sync_batchnorm import SyncBatchNorm
from . import parallel  # cnnkit.nn.parallel.DistributedDataParallel

__all__ = [
    "Module", "Parameter", "no_grad", "is_grad_enabled", "init",
    "Sequential", "Residual", "Concat", "Graph", "MultiInputModule", "Add", "Mul", "Cat",
    "fuse", "fold_batchnorm",
    "Conv2d", "LocallyConnected2d", "Linear", "Flatten", "Dropout",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Identity",
    "CrossEntropyLoss", "MultiMarginLoss",
    "BatchNorm1d", "BatchNorm2d", "LocalResponseNorm", "SyncBatchNorm", "parallel",
    "MaxPool2d", "AvgPool2d", "LPPool2d", "AdaptiveAvgPool2d",
]
