"""Optimizers and learning-rate schedules with PyTorch's names, defaults and update rules.

``SGD``, ``Adam``, ``AdamW``, ``RMSprop``, ``Adagrad`` update ``Parameter.data`` in place from
``Parameter.grad``; ``param_groups_no_decay(model, wd)`` exempts biases and normalisation
parameters from weight decay; ``cnnkit.optim.lr_scheduler`` holds the schedules.
"""
from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .groups import param_groups_no_decay
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "param_groups_no_decay", "lr_scheduler"]
