"""``SGD``: stochastic gradient descent with momentum, dampening, Nesterov and weight decay."""
from __future__ import annotations

from .optimizer import Optimizer, check_non_negative


class SGD(Optimizer):
    r"""Stochastic gradient descent, exactly PyTorch's ``torch.optim.SGD``.

    For each parameter ``p`` with gradient ``g`` (``-g`` with ``maximize``)::

        g <- g + weight_decay * p                      (L2 penalty, when weight_decay != 0)
        b <- g                   at the first step     (momentum buffer, when momentum != 0)
        b <- momentum * b + (1 - dampening) * g        afterwards
        g <- g + momentum * b    with nesterov, else  g <- b
        p <- p - lr * g

    Note the convention (PyTorch's, not Sutskever's): the learning rate multiplies the whole
    velocity, so changing ``lr`` mid-run rescales the step at once.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        nesterov=bool(nesterov), maximize=bool(maximize))
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_non_negative("SGD", group, "lr", "momentum", "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"SGD: nesterov=True requires momentum > 0 and dampening = 0, got "
                f"momentum={group['momentum']!r}, dampening={group['dampening']!r}"
            )

    def _update(self, param, grad, state, group):
        lr, momentum = float(group["lr"]), float(group["momentum"])
        weight_decay, dampening = float(group["weight_decay"]), float(group["dampening"])
        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            grad = grad + weight_decay * param.data
        if momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                # The first step starts the velocity at the gradient itself (no dampening).
                buffer = state["momentum_buffer"] = grad.copy()
            else:
                buffer *= momentum
                buffer += (1 - dampening) * grad
            grad = grad + momentum * buffer if group["nesterov"] else buffer
        param.data -= lr * grad
