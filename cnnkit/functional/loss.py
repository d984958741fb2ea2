"""Classification losses on logits: softmax cross-entropy and the multiclass SVM (hinge) loss.

``*_forward(logits, labels, ...)`` returns ``(loss, cache)``: a 0-d array for ``reduction`` "mean"
and "sum", per-sample losses ``(N,)`` for "none", always in the dtype of the logits.
``*_backward(dloss, cache)`` returns ``dlogits`` (same shape and dtype as the logits); ``dloss`` is
a scalar for "mean"/"sum" and an ``(N,)`` array for "none".

Both follow PyTorch's definitions exactly (``CrossEntropyLoss`` with ``weight`` and
``label_smoothing``; ``MultiMarginLoss`` with ``p``, ``margin`` and ``weight``) so values and
gradients can be compared to it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import array_module
from .activation import log_softmax_forward


class CrossEntropyCache(NamedTuple):
    log_p: object  # (N, C) log-probabilities
    labels: object
    weight: object  # class weights (C,) or None
    target_weight: object  # the weight of each sample's label (N,) or None
    label_smoothing: float
    reduction: str
    normalizer: object  # what "mean" divides by


class MultiMarginCache(NamedTuple):
    margins: object  # (N, C), the label column zeroed
    labels: object
    target_weight: object
    p: int
    reduction: str


REDUCTIONS = ("mean", "sum", "none")


# -- argument checks shared by the losses ------------------------------------------------------
def check_reduction(reduction, loss: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{loss}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_logits_and_labels(logits, labels, loss: str):
    """Raise a clear error unless ``logits`` is ``(N, C)`` floating and ``labels`` ``(N,)`` ints in
    ``[0, C)``; return ``labels`` as an integer array of the logits' array module."""
    xp = array_module(logits)
    if not isinstance(logits, xp.ndarray):
        raise TypeError(f"{loss} expects the logits as an array, got {type(logits).__name__}")
    if not np.issubdtype(logits.dtype, np.floating):
        raise TypeError(f"{loss} expects floating-point logits, got dtype {logits.dtype}")
    if logits.ndim != 2:
        raise ValueError(f"{loss} expects 2-D logits (N, C), got shape {tuple(logits.shape)}")
    labels = xp.asarray(labels)
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(
            f"{loss} expects integer class labels, got dtype {labels.dtype}; "
            "convert them first, e.g. labels.astype(np.int64)"
        )
    n, classes = logits.shape
    if labels.shape != (n,):
        raise ValueError(
            f"{loss}: labels must have shape ({n},) to match logits of shape {tuple(logits.shape)}, "
            f"got labels of shape {tuple(labels.shape)}"
        )
    if n > 0:
        low, high = int(labels.min()), int(labels.max())
        bad = low if low < 0 else high if high >= classes else None
        if bad is not None:
            raise ValueError(f"{loss}: label {bad} out of range for {classes} classes (labels must be in [0, {classes - 1}])")
    return labels


def check_class_weight(weight, logits, loss: str):
    """Return ``weight`` as a ``(C,)`` array in the logits' dtype (``None`` stays ``None``)."""
    if weight is None:
        return None
    xp = array_module(logits)
    weight = xp.asarray(weight)
    classes = logits.shape[1]
    if weight.shape != (classes,):
        raise ValueError(f"{loss}: weight must have shape ({classes},), one per class, got shape {tuple(weight.shape)}")
    return weight.astype(logits.dtype, copy=False)


def _reduce(per_sample, reduction, normalizer):
    """Apply ``reduction`` to per-sample losses (mean divides by ``normalizer``)."""
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return array_module(per_sample).asarray(total / normalizer if reduction == "mean" else total)


def _per_sample_scale(dloss, like, reduction, normalizer, n):
    """``d total / d loss_i`` for each sample: ``dloss/normalizer`` (mean), ``dloss`` (sum, none)."""
    # In the dtype of the cached logits-shaped array ``like``: a float64 dloss must not upcast
    # float32 gradients.
    dloss = array_module(like).asarray(dloss, dtype=like.dtype)
    if reduction == "none":
        if dloss.shape != (n,):
            raise ValueError(
                f"reduction='none' gives one loss per sample, so backward needs dloss of shape ({n},), "
                f"got shape {tuple(dloss.shape)}"
            )
        return dloss
    if dloss.ndim != 0:
        raise ValueError(f"reduction={reduction!r} gives a scalar loss, so dloss must be a scalar, got shape {tuple(dloss.shape)}")
    return dloss / normalizer if reduction == "mean" else dloss


# -- softmax cross-entropy ---------------------------------------------------------------------
def cross_entropy_forward(logits, labels, *, weight=None, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Softmax cross-entropy of ``logits`` against integer ``labels``; return ``(loss, cache)``.

    With ``log p = log_softmax(logits)`` (max-subtracted: finite for logits of +-1e4), class
    weights ``w`` (all 1 without ``weight``), smoothing ``eps`` and ``C`` classes, sample ``i``
    with label ``y`` loses, exactly as PyTorch::

        l_i = (1 - eps) * w[y] * (-log p[i, y])  +  (eps / C) * sum_c w[c] * (-log p[i, c])

    i.e. ``l_i = -sum_c q[i, c] log p[i, c]`` for the target weights ``q[i] = (1 - eps) w[y]
    onehot(y) + (eps / C) w``. "mean" divides the sum by ``sum_i w[y_i]`` (``N`` without weights).

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.loss.cross_entropy`.

    Shape:
        logits: (N, C), labels: (N,) ints in [0, C), weight: (C,)
        loss: () for "mean"/"sum", (N,) for "none"
    """
    name = "cross_entropy"
    check_reduction(reduction, name)
    labels = check_logits_and_labels(logits, labels, name)
    weight = check_class_weight(weight, logits, name)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    xp = array_module(logits)
    n, classes = logits.shape
    rows = xp.arange(n)

    log_p, _ = log_softmax_forward(logits, axis=1)
    target_weight = None if weight is None else weight[labels]  # w[y_i], (N,)
    nll = -log_p[rows, labels]
    if target_weight is not None:
        nll = nll * target_weight
    per_sample = nll if label_smoothing == 0 else (1 - label_smoothing) * nll
    if label_smoothing > 0:
        # sum_c w_c log p_c as an element-wise product, not a matrix-vector product: OpenBLAS's
        # float32 gemv can raise a spurious "invalid value" warning on finite input
        smooth = -(log_p.sum(axis=1) if weight is None else (log_p * weight).sum(axis=1))
        per_sample = per_sample + (label_smoothing / classes) * smooth
    normalizer = n if target_weight is None else target_weight.sum()
    loss = _reduce(per_sample, reduction, normalizer)
    cache = CrossEntropyCache(log_p, labels, weight, target_weight, label_smoothing, reduction, normalizer)
    return loss, cache


def cross_entropy_backward(dloss, cache):
    """``dlogits[i] = scale_i * (sum_c q[i, c] * p[i] - q[i])`` (``p - onehot`` when unweighted).

    ``scale_i`` is ``dloss / normalizer`` for "mean", ``dloss`` for "sum", ``dloss[i]`` for "none".

    Shape:
        dloss: () or (N,) for "none" -> dlogits: (N, C)
    """
    log_p, labels, weight, target_weight, eps, reduction, normalizer = cache
    xp = array_module(log_p)
    n, classes = log_p.shape
    rows = xp.arange(n)

    grad = xp.exp(log_p)  # the softmax probabilities, a fresh array we may write into
    if weight is None:
        # sum_c q[i, c] = (1 - eps) + eps = 1
        grad[rows, labels] -= 1 - eps
        if eps > 0:
            grad -= eps / classes
    else:
        target_mass = (1 - eps) * target_weight + (eps / classes) * weight.sum()  # sum_c q[i, c]
        grad *= target_mass[:, None]
        grad[rows, labels] -= (1 - eps) * target_weight
        if eps > 0:
            grad -= (eps / classes) * weight
    scale = _per_sample_scale(dloss, log_p, reduction, normalizer, n)
    grad *= scale[:, None] if scale.ndim == 1 else scale
    return grad


# -- multiclass SVM (hinge) loss ---------------------------------------------------------------
def multi_margin_forward(logits, labels, *, p: int = 1, margin: float = 1.0, weight=None, reduction: str = "mean"):
    """Multiclass hinge loss (PyTorch's ``MultiMarginLoss``); return ``(loss, cache)``.

    For sample ``i`` with label ``y``, over the ``C`` classes::

        l_i = w[y] * sum_{j != y} max(0, margin - x[i, y] + x[i, j])^p / C

    (``w[y] = 1`` without ``weight``). "mean" divides the sum by ``N`` (not by the weights,
    unlike cross-entropy: that is PyTorch's definition too).

    The readable loop over the definition, which tests hold this kernel equal to:
    :func:`cnnkit.testing.reference.loss.multi_margin`.

    Shape:
        logits: (N, C), labels: (N,) ints in [0, C), weight: (C,)
        loss: () for "mean"/"sum", (N,) for "none"
    """
    name = "multi_margin"
    check_reduction(reduction, name)
    if p not in (1, 2):
        raise ValueError(f"{name}: only p == 1 and p == 2 are supported, got p={p!r}")
    labels = check_logits_and_labels(logits, labels, name)
    weight = check_class_weight(weight, logits, name)
    xp = array_module(logits)
    n, classes = logits.shape
    rows = xp.arange(n)

    # margins[i, j] = margin - x[i, y_i] + x[i, j]; the j = y_i term is excluded by zeroing it.
    margins = (margin - logits[rows, labels])[:, None] + logits
    margins[rows, labels] = 0
    hinge = xp.maximum(margins, 0)
    if p == 2:
        hinge *= hinge
    per_sample = hinge.sum(axis=1) / classes
    target_weight = None if weight is None else weight[labels]
    if target_weight is not None:
        per_sample *= target_weight
    loss = _reduce(per_sample, reduction, n)
    return loss, MultiMarginCache(margins, labels, target_weight, p, reduction)


def multi_margin_backward(dloss, cache):
    """``dlogits[i, j] = s_i * h'(m_ij)`` for ``j != y_i`` and ``dlogits[i, y_i] = -s_i * sum_j h'(m_ij)``.

    ``m_ij`` is the margin term, ``h'(m) = [m > 0]`` for ``p = 1`` and ``2 max(m, 0)`` for ``p = 2``,
    and ``s_i = w[y_i] / C`` times the reduction's scale.

    Shape:
        dloss: () or (N,) for "none" -> dlogits: (N, C)
    """
    margins, labels, target_weight, p, reduction = cache
    xp = array_module(margins)
    n, classes = margins.shape
    rows = xp.arange(n)

    if p == 1:
        grad = (margins > 0).astype(margins.dtype)
    else:
        grad = 2 * xp.maximum(margins, 0)
    # margins[i, y_i] was set to 0, so the label column of grad is 0 before this line.
    grad[rows, labels] = -grad.sum(axis=1)
    scale = _per_sample_scale(dloss, margins, reduction, n, n) / classes
    if target_weight is not None:
        scale = scale * target_weight
    grad *= scale[:, None] if scale.ndim == 1 else scale
    return grad
