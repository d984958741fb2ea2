"""Callbacks the trainer calls at the end of every epoch: history files, checkpoints, early stop.

A callback is any object with some of ``on_train_begin(trainer)``,
``on_epoch_end(trainer, epoch, logs)`` and ``on_train_end(trainer)``. ``logs`` holds the epoch's
figures (``train_loss``, ``train_top1``, ``val_loss``, ``val_top1``, ``lr``, ...). A callback stops
training by setting ``trainer.stop_training = True``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text))


def _atomic_write(path: Path, write) -> None:
    """``write(file)`` into a temporary file moved onto ``path``; removed if interrupted (Ctrl-C)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class HistoryWriter:
    """Writes ``history.csv`` and ``history.json`` in the run directory after every epoch."""

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, trainer, epoch, logs):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = trainer.history
        _atomic_write_text(self.out_dir / "history.json", json.dumps(rows, indent=1))
        columns = list(dict.fromkeys(k for row in rows for k in row))

        def write_csv(f):
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

        _atomic_write(self.out_dir / "history.csv", write_csv)


class Checkpoint:
    """Saves ``last.safetensors`` (full training state, for ``--resume``) every epoch and ``best.safetensors``
    whenever ``monitor`` improves (``mode`` "max" for accuracies, "min" for losses)."""

    def __init__(self, out_dir, monitor: str = "val_top1", mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"Checkpoint: mode must be 'max' or 'min', got {mode!r}")
        self.out_dir = Path(out_dir)
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self.best_path = self.out_dir / "best.safetensors"
        self.last_path = self.out_dir / "last.safetensors"

    def _improved(self, value) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best is None:
            return True
        # A tie counts as an improvement: the later model has trained longer at the same score.
        return value >= self.best if self.mode == "max" else value <= self.best

    def on_epoch_end(self, trainer, epoch, logs):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        value = logs.get(self.monitor, logs.get("train_top1"))
        if self._improved(value):
            self.best = value
            trainer.best_metric = value
            trainer.save(self.best_path)
        trainer.save(self.last_path)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state.get("best")


class EarlyStopping:
    """Stops training when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_top1", patience: int = 5, mode: str = "max", min_delta: float = 0.0):
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        if mode not in ("max", "min"):
            raise ValueError(f"EarlyStopping: mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best = None
        self.bad_epochs = 0

    def on_epoch_end(self, trainer, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            return
        better = self.best is None or (
            value > self.best + self.min_delta if self.mode == "max" else value < self.best - self.min_delta
        )
        if better:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            trainer.stop_training = True
            trainer.log(f"early stopping: {self.monitor} has not improved for {self.patience} epochs (best {self.best:.4f})")

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best, self.bad_epochs = state.get("best"), state.get("bad_epochs", 0)
