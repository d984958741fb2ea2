"""A run's final figures: one evaluation of a checkpoint on the whole test split, and
``results.json``.

``evaluate_model`` runs the model once over a loader and keeps every prediction, so the test
accuracy ``cnnkit train`` prints, the confusion matrix, the per-class table and the misclassified
examples of ``report.html`` all come from the same pass and cannot disagree.

``results.json`` (written by ``cnnkit train`` beside ``history.json``) holds the test accuracy and
loss, top-5 where it applies (more than 10 classes), the best epoch, wall time, training images/s
and the settings of the run (model, parameter count, optimizer, learning rate and schedule, batch
size, augmentation, seed, data folder, cnnkit version and backend), so that a report can be
(re)built from the run folder alone.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..nn.module import no_grad
from .metrics import confusion_matrix, softmax

RESULTS_FILE = "results.json"
RESULTS_FORMAT = "cnnkit-results"
TOP5_MIN_CLASSES = 11  # as the trainer: top-5 of 10 classes says little


@dataclass
class Evaluation:
    """Every prediction of one pass over a labelled split.

    ``labels``, ``predictions``: ``(N,)`` true and top-1 classes; ``confidence``: ``(N,)`` the
    softmax probability of the predicted class; ``in_top5``: ``(N,)`` whether the true class is
    among the 5 highest scores; ``loss``: mean cross-entropy over the N images.
    """

    labels: np.ndarray
    predictions: np.ndarray
    confidence: np.ndarray
    in_top5: np.ndarray
    loss: float
    num_classes: int

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def correct(self) -> int:
        return int(np.sum(self.predictions == self.labels))

    @property
    def top1(self) -> float:
        return self.correct / max(len(self), 1)

    @property
    def top5(self) -> float | None:
        """Top-5 accuracy, or None where it does not apply (10 classes or fewer)."""
        if self.num_classes < TOP5_MIN_CLASSES:
            return None
        return float(np.mean(self.in_top5)) if len(self) else 0.0

    def confusion(self) -> np.ndarray:
        """``(classes, classes)`` counts, rows the true class, columns the predicted one."""
        return confusion_matrix(self.labels, self.predictions, self.num_classes)


def evaluate_model(model, loader, num_classes: int | None = None) -> Evaluation:
    """Run ``model`` in eval mode, caching nothing, over ``loader`` (batches ``(x, labels)``)
    once and keep every prediction. The loss is averaged as ``Trainer.evaluate`` does."""
    from ..nn.loss import CrossEntropyLoss

    lossf = CrossEntropyLoss()
    labels, predictions, confidence, in_top5 = [], [], [], []
    total_loss = 0.0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for x, y in loader:
                logits = model(x)
                total_loss += float(lossf(logits, y)) * len(y)
                probs = softmax(np.asarray(logits, dtype=np.float64))
                top = np.argsort(-probs, axis=1, kind="stable")[:, :5]
                labels.append(np.asarray(y, dtype=np.int64))
                predictions.append(np.argmax(logits, axis=1))  # the trainer's rule, ties included
                confidence.append(probs[np.arange(len(y)), predictions[-1]])
                in_top5.append(np.any(top == np.asarray(y)[:, None], axis=1))
    finally:
        model.train(was_training)
    if num_classes is None:
        num_classes = len(getattr(getattr(loader, "dataset", None), "classes", ())) or None
    if not labels:
        raise ValueError("evaluate_model: the loader yielded no images")
    labels = np.concatenate(labels)
    if num_classes is None:
        num_classes = int(max(labels.max(), np.concatenate(predictions).max())) + 1
    return Evaluation(labels, np.concatenate(predictions).astype(np.int64), np.concatenate(confidence),
                      np.concatenate(in_top5), total_loss / len(labels), int(num_classes))


def training_throughput(history) -> float | None:
    """Training images per second over all epochs of ``history`` (weighted by epoch time)."""
    seen = seconds = 0.0
    for row in history:
        rate, spent = row.get("images_per_s"), row.get("epoch_time_s")
        if isinstance(rate, (int, float)) and isinstance(spent, (int, float)) and spent > 0:
            seen += rate * spent
            seconds += spent
    return seen / seconds if seconds > 0 else None


def active_backend() -> tuple[str, str | None]:
    """``(name, why)`` of the compute backend in use, asked defensively: ``cnnkit.backend`` may
    report it (``active_backend()`` -> a name or ``(name, reason)``, or ``current_backend`` /
    ``backend_name``); anything missing, failing or unexpected gives ``("numpy", None)``."""
    from .. import backend

    for name in ("active_backend", "current_backend", "backend_name"):
        probe = getattr(backend, name, None)
        if not callable(probe):
            continue
        try:
            value = probe()
        except Exception:  # a backend probe must never break a run's results
            continue
        why = None
        if isinstance(value, (tuple, list)) and value:
            value, why = value[0], (value[1] if len(value) > 1 and isinstance(value[1], str) else None)
        value = getattr(value, "name", value)
        if isinstance(value, str) and value and value != "auto":
            return value, why
    return "numpy", None


def results_dict(evaluation: Evaluation, *, checkpoint: str, best_epoch: int | None, epochs: int,
                 wall_time_s: float, images_per_s: float | None, settings: dict) -> dict:
    """The content of ``results.json`` (``settings`` carries the cnnkit version and backend)."""
    from datetime import datetime

    results = {
        "format": RESULTS_FORMAT,
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "test_top1": evaluation.top1,
        "test_loss": evaluation.loss,
        "test_images": len(evaluation),
        "test_correct": evaluation.correct,
        "checkpoint": checkpoint,
        "best_epoch": best_epoch,
        "epochs": epochs,
        "wall_time_s": wall_time_s,
        "images_per_s": images_per_s,
        "settings": settings,
    }
    if evaluation.top5 is not None:
        results["test_top5"] = evaluation.top5
    return results


def write_results(run_dir, results: dict) -> Path:
    """Write ``results`` to ``run_dir/results.json`` atomically (non-finite numbers as null)."""
    path = Path(run_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(results), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_results(run_dir) -> dict | None:
    """``results.json`` of a run folder, or None when there is none. A file that is not a
    results file raises ``ValueError`` naming it."""
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    try:
        results = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a cnnkit results file (no \"format\": \"{RESULTS_FORMAT}\")")
    if not isinstance(results.get("settings", {}), dict):
        raise ValueError(f"{path}: \"settings\" must be an object")
    for key in ("test_top1", "test_loss", "test_top5", "wall_time_s", "images_per_s"):
        value = results.get(key)
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ValueError(f"{path}: {key} must be a number, got {value!r}")
    return results


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value
