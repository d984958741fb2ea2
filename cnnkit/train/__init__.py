"""Training: the mini-batch SGD loop with progress, metrics, checkpoints and early stopping."""
from .callbacks import Checkpoint, EarlyStopping, HistoryWriter
from .metrics import confusion_matrix, per_class_accuracy, softmax, topk_correct
from .trainer import Trainer, fit, predict_proba

__all__ = ["Trainer", "fit", "predict_proba", "Checkpoint", "EarlyStopping", "HistoryWriter",
           "confusion_matrix", "per_class_accuracy", "softmax", "topk_correct"]
