"""Weight initialisation schemes, each drawing from an explicit ``np.random.Generator``.

``fan_in``/``fan_out`` follow PyTorch: for a conv weight ``(out, in/groups, kh, kw)`` the
receptive field ``kh*kw`` multiplies the channel counts. ``kaiming_*`` is He et al. 2015, the
notes' "Xavier/2": variance ``2/fan_in`` for ReLU nets.
"""
from __future__ import annotations

import math

import numpy as np

from .module import Parameter

_GAINS = {"linear": 1.0, "conv2d": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3, "relu": math.sqrt(2.0)}


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for ``nonlinearity`` (PyTorch's table)."""
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}; known: {sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` (linear ``(out, in)`` or conv ``(out, in, kh, kw)``)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in/fan_out need a weight with at least 2 dimensions, got shape {tuple(shape)}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _fill(param, values):
    target = param.data if isinstance(param, Parameter) else param
    target[...] = values
    return param


def _rng(generator):
    return generator if generator is not None else np.random.default_rng()


def uniform_(param, low=0.0, high=1.0, generator=None):
    shape = np.shape(param.data if isinstance(param, Parameter) else param)
    return _fill(param, _rng(generator).uniform(low, high, size=shape))


def normal_(param, mean=0.0, std=1.0, generator=None):
    shape = np.shape(param.data if isinstance(param, Parameter) else param)
    return _fill(param, _rng(generator).normal(mean, std, size=shape))


def zeros_(param):
    return _fill(param, 0.0)


def ones_(param):
    return _fill(param, 1.0)


def constant_(param, value):
    return _fill(param, value)


def xavier_uniform_(param, gain=1.0, generator=None):
    """Glorot & Bengio 2010: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(np.shape(param.data if isinstance(param, Parameter) else param))
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -bound, bound, generator)


def xavier_normal_(param, gain=1.0, generator=None):
    """Glorot & Bengio 2010: N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(np.shape(param.data if isinstance(param, Parameter) else param))
    return normal_(param, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def _kaiming_std(param, a, mode, nonlinearity):
    fan_in, fan_out = fans(np.shape(param.data if isinstance(param, Parameter) else param))
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(param, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He et al. 2015 uniform: U(-b, b), b = gain * sqrt(3 / fan)."""
    bound = math.sqrt(3.0) * _kaiming_std(param, a, mode, nonlinearity)
    return uniform_(param, -bound, bound, generator)


def kaiming_normal_(param, a=0.0, mode="fan_in", nonlinearity="relu", generator=None):
    """He et al. 2015 ("Xavier/2"): N(0, 2/fan) for ReLU."""
    return normal_(param, 0.0, _kaiming_std(param, a, mode, nonlinearity), generator)


# Short aliases that people search for.
glorot_uniform_ = xavier_uniform_
glorot_normal_ = xavier_normal_
he_uniform_ = kaiming_uniform_
he_normal_ = kaiming_normal_


def default_weight_and_bias(weight_shape, bias_size, dtype, generator):
    """PyTorch's default for Linear and Conv2d: kaiming_uniform(a=sqrt(5)) for the weight, which
    is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias."""
    fan_in, _ = fans(weight_shape)
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    rng = _rng(generator)
    weight = rng.uniform(-bound, bound, size=weight_shape).astype(dtype)
    bias = rng.uniform(-bound, bound, size=bias_size).astype(dtype) if bias_size else None
    return weight, bias
