"""``Adam`` and ``AdamW``: adaptive moment estimation, with L2 or decoupled weight decay."""
from __future__ import annotations

import math

from ..backend import array_module
from .optimizer import Optimizer, check_non_negative, check_unit_interval


class Adam(Optimizer):
    r"""Adam (Kingma & Ba, 2015), exactly PyTorch's ``torch.optim.Adam``.

    For each parameter ``p`` with gradient ``g`` (``-g`` with ``maximize``), at step ``t``::

        g <- g + weight_decay * p              (L2 penalty; AdamW instead does p <- p(1 - lr wd))
        m <- beta1 * m + (1 - beta1) * g       (first moment)
        v <- beta2 * v + (1 - beta2) * g^2     (second moment; amsgrad keeps v_max = max(v_max, v))
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    ``decoupled_weight_decay=True`` turns this into AdamW (Loshchilov & Hutter, 2019).
    """

    _name = "Adam"

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
                 decoupled_weight_decay: bool = False):
        defaults = dict(lr=lr, betas=_as_pair(betas, self._name), eps=eps, weight_decay=weight_decay,
                        amsgrad=bool(amsgrad), maximize=bool(maximize),
                        decoupled_weight_decay=bool(decoupled_weight_decay))
        super().__init__(params, defaults)

    def _check_group(self, group):
        check_non_negative(self._name, group, "lr", "eps", "weight_decay")
        betas = group["betas"] = _as_pair(group["betas"], self._name)
        for i, beta in enumerate(betas):
            check_unit_interval(self._name, f"beta parameter at index {i}", beta, include_one=False)

    def _update(self, param, grad, state, group):
        lr, eps, weight_decay = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        xp = array_module(param.data)
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(param.data)
            state["exp_avg_sq"] = xp.zeros_like(param.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = xp.zeros_like(param.data)
        state["step"] += 1
        step = state["step"]

        if group["maximize"]:
            grad = -grad
        if weight_decay != 0:
            if group["decoupled_weight_decay"]:
                param.data *= 1 - lr * weight_decay
            else:
                grad = grad + weight_decay * param.data

        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg += (1 - beta1) * (grad - exp_avg)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad

        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        second_moment = exp_avg_sq
        if group["amsgrad"]:
            # amsgrad normalises by the largest second moment seen so far.
            if "max_exp_avg_sq" not in state:  # amsgrad switched on mid-run
                state["max_exp_avg_sq"] = xp.zeros_like(param.data)
            max_exp_avg_sq = state["max_exp_avg_sq"]
            xp.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second_moment = max_exp_avg_sq
        denom = xp.sqrt(second_moment) / bias_correction2_sqrt + eps
        param.data -= (lr / bias_correction1) * exp_avg / denom


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter, 2019), PyTorch's ``torch.optim.AdamW``.

    The decay shrinks the parameter directly, ``p <- p * (1 - lr * weight_decay)``, instead of
    entering the moment estimates as an L2 gradient; default ``weight_decay=1e-2``.
    """

    _name = "AdamW"

    def __init__(self, params, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


def _as_pair(betas, name: str) -> tuple:
    """``betas`` as a tuple of two numbers, or a clear ValueError."""
    try:
        pair = tuple(betas)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
    return pair
