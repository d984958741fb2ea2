"""Classification metrics on NumPy arrays (confusion matrix via scikit-learn)."""
from __future__ import annotations

import numpy as np


def topk_correct(logits, labels, k: int = 1) -> int:
    """How many rows of ``logits`` have their true label among the ``k`` largest scores."""
    k = min(k, logits.shape[1])
    if k == 1:
        return int(np.sum(np.argmax(logits, axis=1) == labels))
    top = np.argpartition(logits, -k, axis=1)[:, -k:]
    return int(np.sum(np.any(top == labels[:, None], axis=1)))


def softmax(logits):
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(labels, predictions, num_classes: int):
    """``(num_classes, num_classes)`` counts: row = true class, column = predicted class."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    return sk_confusion(labels, predictions, labels=np.arange(num_classes))


def per_class_accuracy(confusion) -> np.ndarray:
    """Recall of each class (diagonal over row sums); NaN for classes absent from the labels."""
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / totals, np.nan)
