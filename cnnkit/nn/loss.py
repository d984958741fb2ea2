"""Losses as modules: ``CrossEntropyLoss`` and ``MultiMarginLoss`` (the multiclass SVM loss).

Usage differs from a layer only in taking the labels too::

    lossf = CrossEntropyLoss()
    loss = lossf(logits, labels)      # a Python float ("mean"/"sum"), caches what backward needs
    dlogits = lossf.backward()        # d loss / d logits, same shape and dtype as the logits

With ``reduction="none"`` the call returns the per-sample losses as an ``(N,)`` array (logits'
dtype) and ``backward(dloss)`` needs one ``dloss`` per sample. ``backward(dloss)`` scales the
gradient (default 1.0). ``weight`` is kept as a buffer, as in PyTorch (it then appears in the state
dict and follows ``.to(dtype)``).
"""
from __future__ import annotations

from numbers import Real

import numpy as np

from ..functional import loss as F
from .module import Module

__all__ = ["CrossEntropyLoss", "MultiMarginLoss"]  # what cnnkit.nn exports from here


def _check_weight_argument(weight, loss: str):
    if weight is None:
        return None
    weight = np.asarray(weight) if not hasattr(weight, "ndim") else weight
    if weight.ndim != 1 or not np.issubdtype(weight.dtype, np.number) or weight.dtype == bool:
        raise ValueError(f"{loss}: weight must be a 1-D array of per-class weights, got {weight!r}")
    if not np.issubdtype(weight.dtype, np.floating):
        weight = weight.astype(np.float32)
    return weight


class _Loss(Module):
    """Shared plumbing: ``__call__(logits, labels)``, the float result and ``backward(dloss)``."""

    def __init__(self, weight, reduction: str):
        super().__init__()
        name = type(self).__name__
        self.reduction = F.check_reduction(reduction, name)
        weight = _check_weight_argument(weight, name)
        if weight is not None:
            self.register_buffer("weight", weight)
        else:
            self.weight = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def _forward_kernel(self, logits, labels):  # pragma: no cover - abstract
        raise NotImplementedError

    def _backward_kernel(self, dloss, cache):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits, labels):
        loss, cache = self._forward_kernel(logits, labels)
        self._save(cache)
        return loss if self.reduction == "none" else float(loss)

    def backward(self, dloss=1.0, input_grad: bool = True):
        """Return ``d loss / d logits`` scaled by ``dloss`` (one per sample for ``reduction='none'``)."""
        cache = self._restore()
        return self._backward_kernel(dloss, cache) if input_grad else None

    def output_shape(self, input_shape):
        """The loss of one sample is a scalar."""
        return ()


class CrossEntropyLoss(_Loss):
    """Softmax cross-entropy on logits, PyTorch's ``CrossEntropyLoss`` (class-index targets).

    ``weight`` (C,) rescales each class; ``label_smoothing`` mixes the one-hot target with the
    uniform distribution exactly as PyTorch; "mean" divides by the summed weights of the targets.
    Logits of +-1e4 give finite losses and gradients (log-sum-exp with the maximum subtracted).
    ``ignore_index`` is not supported.

    Shape:
        logits (N, C), labels (N,) ints in [0, C) -> loss: float, or (N,) for reduction="none"
    """

    def __init__(self, weight=None, *, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(weight, reduction)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, Real) or not 0 <= label_smoothing <= 1:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _forward_kernel(self, logits, labels):
        return F.cross_entropy_forward(logits, labels, weight=self.weight, label_smoothing=self.label_smoothing,
                                       reduction=self.reduction)

    def _backward_kernel(self, dloss, cache):
        return F.cross_entropy_backward(dloss, cache)

    def extra_repr(self) -> str:
        parts = [f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        if self.weight is not None:
            parts.append(f"weight=<{self.weight.shape[0]} classes>")
        return ", ".join(parts)


class MultiMarginLoss(_Loss):
    """Multiclass SVM (hinge) loss, PyTorch's ``MultiMarginLoss``:
    ``l_i = w[y] * sum_{j != y} max(0, margin - x[y] + x[j])^p / C``.

    Shape:
        logits (N, C), labels (N,) ints in [0, C) -> loss: float, or (N,) for reduction="none"
    """

    def __init__(self, p: int = 1, margin: float = 1.0, weight=None, *, reduction: str = "mean"):
        super().__init__(weight, reduction)
        if p not in (1, 2) or isinstance(p, bool):
            raise ValueError(f"MultiMarginLoss: only p == 1 and p == 2 are supported, got p={p!r}")
        if isinstance(margin, bool) or not isinstance(margin, Real):
            raise ValueError(f"MultiMarginLoss: margin must be a number, got {margin!r}")
        self.p = int(p)
        self.margin = float(margin)

    def _forward_kernel(self, logits, labels):
        return F.multi_margin_forward(logits, labels, p=self.p, margin=self.margin, weight=self.weight,
                                      reduction=self.reduction)

    def _backward_kernel(self, dloss, cache):
        return F.multi_margin_backward(dloss, cache)

    def extra_repr(self) -> str:
        return f"p={self.p}, margin={self.margin}, reduction={self.reduction!r}"
