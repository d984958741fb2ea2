"""``RMSprop``: divide the gradient by a running root mean square of recent gradients."""
from __future__ import annotations

from ..backend import array_module
from .optimizer import Optimizer, check_non_negative, check_unit_interval


class RMSprop(Optimizer):
    r"""RMSprop (Hinton's lecture 6e), exactly PyTorch's ``torch.optim.RMSprop``.

    For each parameter ``p`` with gradient ``g`` (``-g`` with ``maximize``)::

        g <- g + weight_decay * p
        v <- alpha * v + (1 - alpha) * g^2
        centered:  m <- alpha * m + (1 - alpha) * g ;  d = sqrt(v - m^2) + eps
        otherwise: d = sqrt(v) + eps
        momentum > 0:  b <- momentum * b + g / d ;  p <- p - lr * b
        otherwise:     p <- p - lr * g / d

    Note ``eps`` is added outside the square root (PyTorch's choice; Keras adds it inside).
    """

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, *,
                 maximize: bool = False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        centered=bool(centered), maximize=bool(maximize))
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_non_negative("RMSprop", group, "lr", "eps", "weight_decay", "momentum")
        check_unit_interval("RMSprop", "alpha", group["alpha"], include_one=True)

    def _update(self, param, grad, state, group):
        lr, alpha, eps = float(group["lr"]), float(group["alpha"]), float(group["eps"])
        weight_decay, momentum = float(group["weight_decay"]), float(group["momentum"])
        xp = array_module(param.data)
        if not state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(param.data)
        state["step"] += 1

        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            grad = grad + weight_decay * param.data

        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * grad * grad
        if group["centered"]:
            # Subtracting the squared mean estimates the variance instead of the raw second moment.
            grad_avg = _buffer(state, "grad_avg", param.data)
            grad_avg += (1 - alpha) * (grad - grad_avg)
            denom = xp.sqrt(square_avg - grad_avg * grad_avg)
        else:
            denom = xp.sqrt(square_avg)
        denom += eps

        if momentum > 0:
            buffer = _buffer(state, "momentum_buffer", param.data)
            buffer *= momentum
            buffer += grad / denom
            param.data -= lr * buffer
        else:
            param.data -= lr * (grad / denom)


def _buffer(state: dict, name: str, like):
    """``state[name]``, created as zeros shaped like the parameter on first use."""
    if name not in state:
        state[name] = array_module(like).zeros_like(like)
    return state[name]
