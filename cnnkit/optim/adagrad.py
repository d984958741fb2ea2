"""``Adagrad``: per-coordinate learning rates from the sum of all past squared gradients."""
from __future__ import annotations

from ..backend import array_module
from .optimizer import Optimizer, check_non_negative


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al., 2011), exactly PyTorch's ``torch.optim.Adagrad``.

    For each parameter ``p`` with gradient ``g`` (``-g`` with ``maximize``), at step ``t``::

        g <- g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s <- s + g^2                          (s starts at initial_accumulator_value)
        p <- p - clr * g / (sqrt(s) + eps)

    Deliberate difference: a parameter group's own ``initial_accumulator_value`` is honoured
    (PyTorch starts every group at the constructor's value).
    """

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, *, maximize: bool = False):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        maximize=bool(maximize))
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_non_negative("Adagrad", group, "lr", "lr_decay", "weight_decay",
                           "initial_accumulator_value", "eps")

    def _update(self, param, grad, state, group):
        lr, lr_decay, eps = float(group["lr"]), float(group["lr_decay"]), float(group["eps"])
        weight_decay = float(group["weight_decay"])
        xp = array_module(param.data)
        if not state:
            state["step"] = 0
            state["sum"] = xp.full_like(param.data, float(group["initial_accumulator_value"]))
        state["step"] += 1

        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            grad = grad + weight_decay * param.data
        decayed_lr = lr / (1 + (state["step"] - 1) * lr_decay)

        squared_sum = state["sum"]
        squared_sum += grad * grad
        param.data -= decayed_lr * (grad / (xp.sqrt(squared_sum) + eps))
