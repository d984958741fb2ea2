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
import re
from pathlib import Path

from .interrupts import hold_interrupts

# What interrupted writes leave: ``.NAME.<12 hex>.tmp`` (cnnkit.io's atomic writes of checkpoints)
# and ``NAME.tmp`` (the history files below, diagnostics.json).
_ATOMIC_TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{12}\.tmp")
_PLAIN_TEMPORARY = re.compile(r"(.+)\.tmp")
_RUN_FILES = re.compile(r"(best|last|interrupted)\.(safetensors|npz)|(history|diagnostics)\.(json|csv)")


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporary files that interrupted writes of a run's own files left in ``folder``
    (a killed process cannot clean up after itself); returns the paths removed. Nothing else in
    the folder is touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = _ATOMIC_TEMPORARY.fullmatch(path.name) or _PLAIN_TEMPORARY.fullmatch(path.name)
        if match and _RUN_FILES.fullmatch(match.group(1)) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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
    """Writes ``history.csv`` and ``history.json`` in the run directory after every epoch, and
    ``steps.csv`` (``step,epoch,loss,lr``: every training step's mini-batch loss)."""

    STEP_COLUMNS = ("step", "epoch", "loss", "lr")

    def __init__(self, out_dir):
        self.out_dir = Path(out_dir)
        self.steps: list[tuple] = []

    def on_train_begin(self, trainer):
        remove_stale_temporaries(self.out_dir)
        # a resumed run keeps the steps it already wrote (up to where its checkpoint was saved)
        self.steps = []
        path = self.out_dir / "steps.csv"
        if trainer.global_step > 0 and path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        step = (int(row["step"]), int(row["epoch"]), float(row["loss"]), float(row["lr"]))
                    except (KeyError, TypeError, ValueError):
                        continue
                    if step[0] <= trainer.global_step:
                        self.steps.append(step)

    def on_step_end(self, trainer, step):
        loss = getattr(trainer, "step_loss", None)
        if loss is not None:
            self.steps.append((int(step), trainer.epoch + 1, float(loss), trainer.lr))

    def on_epoch_end(self, trainer, epoch, logs):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = trainer.history
        _atomic_write_text(self.out_dir / "history.json", json.dumps(rows, indent=1))
        if self.steps:
            lines = [",".join(self.STEP_COLUMNS)] + ["%d,%d,%.6g,%.6g" % s for s in self.steps]
            _atomic_write_text(self.out_dir / "steps.csv", "\n".join(lines) + "\n")
        columns = list(dict.fromkeys(k for row in rows for k in row))

        def write_csv(f):
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

        _atomic_write(self.out_dir / "history.csv", write_csv)


class Checkpoint:
    """Saves ``last.safetensors`` (full training state, for ``--resume``) every epoch and ``best.safetensors``
    whenever ``monitor`` improves (``mode`` "max" for accuracies, "min" for losses).

    The run folder is created when training begins, and a new run (epoch 0) writes its starting
    point as ``last.safetensors`` then, so an interrupt during the first epoch can be resumed too.
    Temporary files left by interrupted writes are removed. A Ctrl-C while the epoch's
    checkpoints are written takes effect once both are complete."""

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

    def on_train_begin(self, trainer):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        if trainer.epoch == 0:
            with hold_interrupts():
                trainer.save(self.last_path)

    def on_epoch_end(self, trainer, epoch, logs):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        value = logs.get(self.monitor, logs.get("train_top1"))
        with hold_interrupts():  # best and last of one epoch are written together or not at all
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
