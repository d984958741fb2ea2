"""Naive losses: one sample and one class at a time, straight from PyTorch's documented formulas.
Each returns the per-sample losses ``(N,)`` and their gradients ``(N, C)`` (the gradient of
``sum_i loss_i``); the tests reduce them. Slow on purpose."""
from __future__ import annotations

import math

import numpy as np


def _log_softmax_row(row):
    top = max(row)
    log_total = math.log(sum(math.exp(v - top) for v in row)) + top
    return [v - log_total for v in row]


def cross_entropy(logits, labels, weight=None, label_smoothing=0.0):
    """Per-sample ``l_i = (1-eps) w[y] (-log p_y) + (eps/C) sum_c w[c] (-log p_c)`` and ``dl_i/dx_i``.

    Returns ``(losses, grads, target_weights)``; "mean" is ``sum(losses) / sum(target_weights)``.
    """
    n, classes = logits.shape
    w = [1.0] * classes if weight is None else [float(v) for v in weight]
    eps = label_smoothing
    losses = np.zeros(n)
    grads = np.zeros((n, classes))
    target_weights = np.zeros(n)
    for i in range(n):
        y = int(labels[i])
        log_p = _log_softmax_row([float(v) for v in logits[i]])
        # target weights q_c: the label gets (1-eps) w[y], and every class gets (eps/C) w[c]
        q = [(eps / classes) * w[c] + ((1 - eps) * w[y] if c == y else 0.0) for c in range(classes)]
        losses[i] = -sum(q[c] * log_p[c] for c in range(classes))
        mass = sum(q)
        for c in range(classes):
            grads[i, c] = mass * math.exp(log_p[c]) - q[c]
        target_weights[i] = w[y]
    return losses, grads, target_weights


def multi_margin(logits, labels, p=1, margin=1.0, weight=None):
    """Per-sample ``l_i = w[y] sum_{j != y} max(0, margin - x_y + x_j)^p / C`` and ``dl_i/dx_i``."""
    n, classes = logits.shape
    losses = np.zeros(n)
    grads = np.zeros((n, classes))
    for i in range(n):
        y = int(labels[i])
        wy = 1.0 if weight is None else float(weight[y])
        for j in range(classes):
            if j == y:
                continue
            m = margin - float(logits[i, y]) + float(logits[i, j])
            if m > 0:
                losses[i] += wy * m**p / classes
                slope = wy * (1.0 if p == 1 else 2.0 * m) / classes
                grads[i, j] += slope
                grads[i, y] -= slope
    return losses, grads
