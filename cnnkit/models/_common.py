"""Helpers shared by the zoo: one random generator per model, and the papers' init schemes."""
from __future__ import annotations

import numpy as np

from ..nn import init
from ..nn.conv import Conv2d
from ..nn.linear import Linear
from ..nn.normalization import BatchNorm1d, BatchNorm2d


def make_rng(generator: np.random.Generator | None = None, seed: int | None = None) -> np.random.Generator:
    """The generator every layer of a model draws from: ``generator`` if given, else one from ``seed``.

    Passing the same ``seed`` builds the same weights; passing neither draws fresh entropy.
    """
    if generator is not None and seed is not None:
        raise ValueError(f"give either generator or seed, not both (got seed={seed!r})")
    if generator is not None:
        if not isinstance(generator, np.random.Generator):
            raise TypeError(f"generator must be a numpy.random.Generator, got {type(generator).__name__}")
        return generator
    return np.random.default_rng(seed)


def he_init_(model, rng: np.random.Generator, *, mode: str = "fan_out", linear_std: float | None = None) -> None:
    """He et al. 2015 init for ReLU nets, as torchvision does it.

    Convolutions: ``kaiming_normal_(mode, nonlinearity="relu")``, bias 0. BatchNorm: weight 1,
    bias 0. Linear layers: ``N(0, linear_std^2)`` with bias 0 when ``linear_std`` is given
    (torchvision's VGG uses 0.01), else they keep their default init.
    """
    for module in model.modules():
        if isinstance(module, Conv2d):
            init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu", generator=rng)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (BatchNorm1d, BatchNorm2d)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
        elif isinstance(module, Linear) and linear_std is not None:
            init.normal_(module.weight, 0.0, linear_std, generator=rng)
            if module.bias is not None:
                init.zeros_(module.bias)


def check_num_classes(num_classes, model: str) -> int:
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{model}: num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)
