"""Parameter groups that exempt biases and normalisation parameters from weight decay.

Weight decay is meant to shrink the weights that multiply inputs; decaying a bias or a
BatchNorm scale/shift only fights the normalisation (convnetjs set ``l2_decay_mul = 0`` on
biases for this reason). Those parameters are exactly the one-dimensional ones.
"""
from __future__ import annotations

from ..nn.module import Module


def param_groups_no_decay(model: Module, weight_decay: float, *, no_decay=None) -> list[dict]:
    """Split ``model``'s parameters into a decayed group and a ``weight_decay=0`` group.

    Args:
        model: the module whose parameters to split (each shared parameter appears once).
        weight_decay: the weight decay of the first group (weights of conv and linear layers).
        no_decay: optional ``predicate(name, parameter) -> bool`` choosing the exempt parameters;
            by default those with ``ndim <= 1``: biases and BatchNorm/normalisation parameters.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0}]``, leaving out a group that would be empty;
        pass it to any optimizer, e.g. ``SGD(param_groups_no_decay(net, 5e-4), lr=0.1)``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"param_groups_no_decay expects a cnnkit Module, got {type(model).__name__}")
    if not weight_decay >= 0:
        raise ValueError(f"param_groups_no_decay: invalid weight_decay {weight_decay!r}: it must be >= 0")
    if no_decay is None:
        def no_decay(name, param):
            return param.data.ndim <= 1

    decayed, exempt, seen = [], [], set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        (exempt if no_decay(name, param) else decayed).append(param)
    groups = [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]
