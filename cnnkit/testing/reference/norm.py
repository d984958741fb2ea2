"""Naive normalisation kernels: one channel at a time, the textbook formulas step by step.

Slow on purpose; ``tests/test_norm.py`` holds ``cnnkit.functional.norm`` equal to them.
"""
from __future__ import annotations

import numpy as np


def _channel_values(x, c):
    """Every value of channel ``c`` of ``x (N, C, *)`` as a flat vector."""
    return x[:, c].reshape(-1)


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch norm channel by channel; returns ``(y, cache)`` and updates the running stats in place.

    Shape:
        x: (N, C, *) ; weight, bias, running_mean, running_var: (C,) -> y: same as x
    """
    num_channels = x.shape[1]
    y = np.empty_like(x)
    cache = []
    for c in range(num_channels):
        values = _channel_values(x, c)
        m = values.size
        if training:
            mean = values.sum() / m
            var = ((values - mean) ** 2).sum() / m  # biased
            if running_mean is not None:
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean
                running_var[c] = (1 - momentum) * running_var[c] + momentum * var * m / (m - 1)
        else:
            mean, var = running_mean[c], running_var[c]
        std = np.sqrt(var + eps)
        xhat = (values - mean) / std
        gamma = 1 if weight is None else weight[c]
        beta = 0 if bias is None else bias[c]
        y[:, c] = (gamma * xhat + beta).reshape(x[:, c].shape)
        cache.append((values, mean, var, std, xhat, gamma))
    return y, (cache, training, eps, x.shape)


def batch_norm_backward(dy, cache):
    """Return ``(dx, dweight, dbias)`` by the staged chain rule (CS231n's long form).

    In training mode the gradient flows into ``x`` three ways: through ``xhat`` directly, through
    the batch variance and through the batch mean; every stage is written out.
    """
    channels, training, eps, shape = cache
    dx = np.empty(shape, dtype=dy.dtype)
    dweight = np.empty(len(channels), dtype=dy.dtype)
    dbias = np.empty(len(channels), dtype=dy.dtype)
    for c, (values, mean, var, std, xhat, gamma) in enumerate(channels):
        g = _channel_values(dy, c)
        m = values.size
        dbias[c] = g.sum()
        dweight[c] = (g * xhat).sum()
        dxhat = g * gamma
        if training:
            centred = values - mean
            dvar = (dxhat * centred).sum() * -0.5 * (var + eps) ** -1.5
            dmean = -(dxhat / std).sum() + dvar * (-2 * centred).sum() / m
            dvalues = dxhat / std + dvar * 2 * centred / m + dmean / m
        else:
            dvalues = dxhat / std
        dx[:, c] = dvalues.reshape(dx[:, c].shape)
    return dx, dweight, dbias


def local_response_norm_forward(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """LRN channel by channel: ``y_c = x_c / (k + alpha/size * sum of x_c'^2 in the window) ** beta``.

    The window of channel ``c`` is ``c - size//2 .. c + (size-1)//2``, clipped to the channels
    that exist (the missing ones are zeros in PyTorch's padded form, so they add nothing).
    """
    num_channels = x.shape[1]
    y = np.empty_like(x)
    for c in range(num_channels):
        first = max(0, c - size // 2)
        last = min(num_channels - 1, c + (size - 1) // 2)
        squares = np.zeros_like(x[:, c])
        for neighbour in range(first, last + 1):
            squares += x[:, neighbour] ** 2
        y[:, c] = x[:, c] / (k + alpha / size * squares) ** beta
    return y
