"""The training loop of the notes, written out: sample a mini-batch, forward, loss, backward, update.

``Trainer.fit`` runs epochs of that loop with a progress bar (images/s, ETA), evaluates on the
validation data after every epoch, steps the learning-rate schedule (``ReduceLROnPlateau`` is
driven by validation accuracy), and hands each epoch's figures to the callbacks (history files,
best/last checkpoints, early stopping). ``Trainer.save`` writes everything a resumed run needs —
weights, optimizer and scheduler state, epoch, history and every random-number generator — so
``resume`` continues bit for bit where an uninterrupted run would be.

With ``ema`` the trainer keeps an exponential moving average of the weights
(:class:`~cnnkit.train.ema.ExponentialMovingAverage`, updated after every step): validation,
the best checkpoint and every saved file use the averaged weights, while training goes on with
the live ones, which a checkpoint keeps in its training state (``training_state["ema"]``) so that
``resume`` continues both exactly.

Under ``mpiexec -n N`` with a ``DistributedDataParallel`` model each rank trains on its shard
(a ``DistributedSampler`` in the loader; the trainer sets its epoch), the epoch's loss and
accuracy figures are summed over the ranks before anyone sees them (so every rank makes the same
schedule, checkpoint and early-stopping decisions), and only rank 0 prints and writes files.
"""
from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from .. import distributed
from ..nn.module import no_grad
from ..nn.parallel import DistributedDataParallel
from ..optim.lr_scheduler import ReduceLROnPlateau
from .ema import ExponentialMovingAverage
from .interrupts import hold_interrupts
from .metrics import softmax, topk_correct


def _generator_modules(model):
    """``(name, module)`` for every module that draws random numbers (e.g. Dropout)."""
    for name, m in model.named_modules():
        if isinstance(getattr(m, "generator", None), np.random.Generator):
            yield name, m


def _rng_state(obj):
    if obj is None:
        return None
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    gen = getattr(obj, "generator", None)
    return gen.bit_generator.state if isinstance(gen, np.random.Generator) else None


def _set_rng_state(obj, state):
    if obj is None or state is None:
        return
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
    else:
        obj.generator.bit_generator.state = state


class Trainer:
    """Mini-batch training of ``model`` with ``optimizer`` on a classification loss.

    Args:
        model: a cnnkit ``Module`` producing logits ``(N, classes)``.
        optimizer: a ``cnnkit.optim`` optimizer over the model's parameters.
        loss: a loss module (default ``CrossEntropyLoss()``).
        scheduler: an ``lr_scheduler``; stepped once per epoch, or once per batch when
            ``scheduler_interval="step"`` (the default for ``OneCycleLR``).
            ``ReduceLROnPlateau`` gets the validation top-1 accuracy (or the training one).
        callbacks: objects with ``on_epoch_end(trainer, epoch, logs)`` and friends.
        progress: show a progress bar per epoch (a one-line summary per epoch is always printed).
        schedule_steps: how many scheduler steps the schedule was made for (e.g. ``T_max`` of a
            cosine schedule); after that many the scheduler is not stepped again and the learning
            rate stays where the schedule ended, so a run continued past its planned end neither
            sends a cosine back up nor steps ``OneCycleLR`` past its last step. None: no limit.
        out: where messages go (default: ``sys.stdout`` at the time of printing); ``None``
            silences them. Only rank 0 of a distributed run prints.
        ema: a decay (e.g. 0.99) or an ``ExponentialMovingAverage`` of the model: evaluation and
            checkpoints then use the averaged weights (see the module docstring). None: no average.

    ``model`` may be a ``DistributedDataParallel``: training steps then run through it, while
    ``trainer.model`` is the wrapped network (what evaluation, callbacks and checkpoints use).
    """

    def __init__(self, model, optimizer, loss=None, scheduler=None, callbacks=(), progress: bool = True,
                 scheduler_interval: str | None = None, out="stdout", schedule_steps: int | None = None,
                 ema=None):
        from ..nn.loss import CrossEntropyLoss
        from ..optim.lr_scheduler import OneCycleLR

        self.parallel_model = model if isinstance(model, DistributedDataParallel) else None
        self.model = model.module if self.parallel_model is not None else model
        self.optimizer = optimizer
        self.loss = loss if loss is not None else CrossEntropyLoss()
        self.scheduler = scheduler
        if scheduler_interval is None:
            scheduler_interval = "step" if isinstance(scheduler, OneCycleLR) else "epoch"
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.scheduler_interval = scheduler_interval
        if schedule_steps is not None and (isinstance(schedule_steps, bool) or int(schedule_steps) != schedule_steps
                                           or schedule_steps < 1):
            raise ValueError(f"schedule_steps must be a positive integer or None, got {schedule_steps!r}")
        self.schedule_steps = schedule_steps
        if ema is not None and not isinstance(ema, ExponentialMovingAverage):
            ema = ExponentialMovingAverage(self.model, ema)
        if ema is not None and ema.model is not self.model:
            raise ValueError("Trainer: ema must average the model being trained (ExponentialMovingAverage(model, "
                             "decay) of the same model, the wrapped one under DistributedDataParallel)")
        self.ema = ema
        self.callbacks = list(callbacks)
        self.progress = progress
        self.out = out
        self.history: list[dict] = []
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best_metric = None
        self.stop_training = False
        self.train_loader = None

    # -- messages -----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.out is not None and self.rank == 0:
            print(message, file=self._stream(), flush=True)

    def _stream(self):
        return sys.stdout if self.out == "stdout" else self.out

    @property
    def rank(self) -> int:
        """This process's rank in a distributed run (0 otherwise): rank 0 prints and writes files."""
        return distributed.rank_or_zero()

    @property
    def world_size(self) -> int:
        """The number of ranks training together (1 without MPI)."""
        return distributed.world_size_or_one()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- one step and one epoch ---------------------------------------------------------------
    def train_step(self, x, y) -> tuple[float, int]:
        """Forward, loss, backward (no input gradient), update. Returns (loss, correct count).

        Callbacks with ``on_step_begin(trainer, step)`` / ``on_step_end(trainer, step)`` are called
        before the forward pass and after ``optimizer.step()`` (the step's gradients are still in
        the parameters then); ``step`` counts from 1 over the whole run.
        """
        step = self.global_step + 1
        self._step_callbacks("on_step_begin", step)
        net = self.parallel_model or self.model
        logits = net(x)
        loss = float(self.loss(logits, y))
        if not math.isfinite(loss):
            where = f" on rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
            raise FloatingPointError(
                f"training stopped: the loss became {loss}{where} at epoch {self.epoch + 1}, step "
                f"{self.global_step + 1} with learning rate {self.lr:g}; lower the learning rate "
                "or check the input normalisation"
            )
        self.optimizer.zero_grad()
        net.backward(self.loss.backward(), input_grad=False)  # DDP: gradients averaged over ranks
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.global_step += 1
        self.step_loss = loss  # for on_step_end callbacks (HistoryWriter's per-step loss)
        self._step_callbacks("on_step_end", step)
        if self.scheduler_interval == "step":
            self._step_scheduler()
        return loss, topk_correct(logits, y)

    def _step_scheduler(self, metric=None) -> None:
        """One scheduler step (``ReduceLROnPlateau`` gets ``metric``), unless the schedule has
        taken the ``schedule_steps`` it was made for."""
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metric)
        elif self.schedule_steps is None or self.scheduler.last_epoch < self.schedule_steps:
            self.scheduler.step()

    def _step_callbacks(self, hook: str, step: int) -> None:
        for cb in self.callbacks:
            method = getattr(cb, hook, None)
            if method is not None:
                method(self, step)

    def _sum_over_ranks(self, *values) -> list[float]:
        """``values`` summed over the ranks (as they are in a single process)."""
        if self.world_size == 1:
            return list(values)
        total = np.array(values, dtype=np.float64)
        distributed.all_reduce(total)
        return total.tolist()

    def _progress_bar(self, total: int, description: str):
        if not self.progress or self.out is None or self.rank != 0:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(file=self._stream())
        if not console.is_terminal:
            return None  # logs and CI get one line per epoch instead of redraws
        return Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>7.0f} img/s"), TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(), console=console, transient=True,
        )

    def train_epoch(self, loader) -> dict:
        self.model.train()
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: this epoch's shuffle
            sampler.set_epoch(self.epoch)
        if hasattr(loader, "set_epoch"):  # epoch-dependent augmentation (AlternatingHorizontalFlip)
            loader.set_epoch(self.epoch)
        total_loss, correct, seen = 0.0, 0, 0
        start = time.perf_counter()
        bar = self._progress_bar(len(loader), f"epoch {self.epoch + 1}")
        task = bar.add_task(f"epoch {self.epoch + 1}", total=len(loader), rate=0.0, loss=0.0) if bar else None
        if bar:
            bar.start()
        try:
            for x, y in loader:
                loss, right = self.train_step(x, y)
                total_loss += loss * len(y)
                correct += right
                seen += len(y)
                if bar:
                    rate = seen / max(time.perf_counter() - start, 1e-9)
                    bar.update(task, advance=1, rate=rate, loss=total_loss / seen)
        finally:
            if bar:
                bar.stop()
        elapsed = time.perf_counter() - start
        total_loss, correct, seen = self._sum_over_ranks(total_loss, correct, seen)
        return {"train_loss": total_loss / max(seen, 1), "train_top1": correct / max(seen, 1),
                "images_per_s": seen / max(elapsed, 1e-9), "epoch_time_s": elapsed}

    def averaged_weights(self):
        """A context in which the model holds the weights to evaluate and save: the EMA's when
        the trainer keeps one, else the training weights as they are."""
        return self.ema.applied() if self.ema is not None else nullcontext(self.model)

    def evaluate(self, loader, topk: tuple[int, ...] = (1, 5)) -> dict:
        """Loss and top-k accuracy on ``loader`` in eval mode, caching nothing (with the averaged
        weights when the trainer keeps an EMA).

        In a distributed run every rank calls it on its shard and gets the figures of the union.
        """
        was_training = self.model.training
        self.model.eval()
        total_loss, seen = 0.0, 0
        correct = {k: 0 for k in topk}
        with no_grad(), self.averaged_weights():
            for x, y in loader:
                logits = self.model(x)
                total_loss += float(self.loss(logits, y)) * len(y)
                seen += len(y)
                for k in topk:
                    correct[k] += topk_correct(logits, y, k)
        self.model.train(was_training)
        total_loss, seen, *counts = self._sum_over_ranks(total_loss, seen, *(correct[k] for k in topk))
        correct = dict(zip(topk, counts))
        result = {"loss": total_loss / max(seen, 1)}
        result.update({f"top{k}": correct[k] / max(seen, 1) for k in topk})
        return result

    # -- the loop -----------------------------------------------------------------------------
    def fit(self, train_loader, val_loader=None, epochs: int = 10) -> list[dict]:
        """Train until ``epochs`` epochs are complete (counting any resumed ones) or a callback
        stops it. Returns the history: one dict of figures per epoch."""
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.train_loader = train_loader
        classes = getattr(getattr(val_loader, "dataset", None), "classes", None)
        for cb in self.callbacks:
            if hasattr(cb, "on_train_begin"):
                cb.on_train_begin(self)
        try:
            while self.epoch < epochs and not self.stop_training:
                lr = self.lr
                logs = {"epoch": self.epoch + 1, "lr": lr}
                logs.update(self.train_epoch(train_loader))
                if val_loader is not None:
                    val = self.evaluate(val_loader)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                    if classes is not None and len(classes) <= 10:  # top-5 says little for 10 classes
                        logs.pop("val_top5", None)
                self.epoch += 1
                if self.scheduler_interval == "epoch":
                    self._step_scheduler(logs.get("val_top1", logs["train_top1"]))
                self.history.append(logs)
                self.log(self._epoch_line(logs, epochs))
                for cb in self.callbacks:
                    if hasattr(cb, "on_epoch_end"):
                        cb.on_epoch_end(self, self.epoch, logs)
        finally:
            for cb in self.callbacks:
                if hasattr(cb, "on_train_end"):
                    cb.on_train_end(self)
        return self.history

    @staticmethod
    def _epoch_line(logs, epochs) -> str:
        parts = [f"epoch {logs['epoch']}/{epochs}", f"lr {logs['lr']:.3g}",
                 f"train loss {logs['train_loss']:.4f} acc {logs['train_top1']:.2%}"]
        if "val_top1" in logs:
            parts.append(f"val loss {logs['val_loss']:.4f} acc {logs['val_top1']:.2%}")
        if "val_top5" in logs:
            parts.append(f"top-5 {logs['val_top5']:.2%}")
        parts.append(f"{logs['images_per_s']:.0f} img/s, {logs['epoch_time_s']:.1f}s")
        return " | ".join(parts)

    # -- checkpoints ----------------------------------------------------------------------------
    def training_state(self, all_ranks: bool = True) -> dict:
        """Everything besides the weights that a resumed run needs to continue identically.

        In a distributed run the random generators differ per rank; with ``all_ranks`` (a
        collective: every rank must call it) they are gathered under ``"rank_rngs"``, so a
        resume on the same number of ranks continues each rank's streams.
        """
        own = self._rank_rngs()
        state = {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_metric": self.best_metric,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "train_loader_rng": own["train_loader"],
            "module_rngs": own["modules"],
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks if hasattr(cb, "state_dict")},
        }
        if self.ema is not None:
            # the file's weights are the average (see save); the live ones continue training
            state["ema"] = {"decay": self.ema.decay, "updates": self.ema.updates,
                            "training_weights": {k: v.copy() for k, v in self.model.state_dict().items()}}
        if self.world_size > 1 and all_ranks:
            rngs = [None] * self.world_size
            distributed.all_gather_object(rngs, own)
            state["rank_rngs"] = rngs
        return state

    def _rank_rngs(self) -> dict:
        return {"train_loader": _rng_state(self.train_loader),
                "modules": {name: m.generator.bit_generator.state for name, m in _generator_modules(self.model)}}

    def save(self, path, all_ranks: bool = True) -> Path:
        """Write weights and the full training state atomically to ``path``.

        In a distributed run every rank calls it (``all_ranks``: the ranks' random states are
        gathered) and rank 0 writes; with ``all_ranks=False`` rank 0 alone saves its own.
        With an EMA the file's weights are the averaged ones, the weights to use; the training
        weights go into the training state.
        """
        from .. import io

        path = Path(path)
        with hold_interrupts():  # Ctrl-C now would lose the file (or leave a collective): finish, then stop
            state = self.training_state(all_ranks)
            if self.rank == 0:
                # with an EMA the state already holds a copy of the training weights: put back from it
                weights = nullcontext() if self.ema is None else self.ema.applied(state["ema"]["training_weights"])
                with weights:
                    io.save(self.model, path, training_state=state)
        return path

    def resume(self, path, train_loader=None) -> "Trainer":
        """Load a checkpoint written by ``save`` into this trainer (model, optimizer, scheduler,
        epoch, history, random generators) so ``fit`` continues where that run stopped."""
        from .. import io

        ckpt = io.load_checkpoint(path, model=self.model)
        state = ckpt.training_state
        if state is None:
            raise ValueError(f"{path} holds weights only, not a training state; it cannot be resumed "
                             "(use it with --init to start a new run from these weights)")
        self._resume_ema(path, state.get("ema"))
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = state.get("best_metric")
        self.history = list(state["history"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        loader = train_loader if train_loader is not None else self.train_loader
        loader_rng, module_rngs = state.get("train_loader_rng"), state.get("module_rngs")
        per_rank = state.get("rank_rngs")
        if per_rank and len(per_rank) == self.world_size:  # same number of ranks: each its own streams
            loader_rng, module_rngs = per_rank[self.rank]["train_loader"], per_rank[self.rank]["modules"]
        elif self.rank > 0:  # a different number of ranks: keep this rank's own seeded streams
            loader_rng, module_rngs = None, None
        _set_rng_state(loader, loader_rng)
        modules = dict(_generator_modules(self.model))
        for name, rng_state in (module_rngs or {}).items():
            if name in modules:
                modules[name].generator.bit_generator.state = rng_state
        for cb in self.callbacks:
            saved = (state.get("callbacks") or {}).get(type(cb).__name__)
            if saved is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(saved)
        return self

    def _resume_ema(self, path, saved) -> None:
        """After the checkpoint's weights (the average, with an EMA) are in the model: make them
        the average again and put the training weights back."""
        if saved is None and self.ema is None:
            return
        if saved is None:
            raise ValueError(f"{path} was saved without an EMA of the weights, but this trainer keeps one "
                             f"(decay {self.ema.decay}): resume it without ema")
        if self.ema is None:
            raise ValueError(f"{path} was saved by a run with an EMA of the weights (decay {saved['decay']}): "
                             f"resume it with ema={saved['decay']} (cnnkit train --ema {saved['decay']})")
        self.ema.load_state_dict({"decay": saved["decay"], "updates": saved["updates"],
                                  "average": self.model.state_dict()})
        self.model.load_state_dict(saved["training_weights"])


def fit(model, train_data, val_data=None, epochs: int = 10, optimizer=None, scheduler=None, loss=None,
        callbacks=(), out_dir=None, progress: bool = True, out="stdout") -> list[dict]:
    """Train ``model``; a functional shorthand for ``Trainer(...).fit(...)``.

    With ``out_dir`` the run directory gets ``history.csv``/``history.json`` and ``best.safetensors``/
    ``last.safetensors`` (best by validation top-1 accuracy). Default optimizer: SGD(lr=0.01, momentum=0.9).
    """
    from ..optim import SGD
    from .callbacks import Checkpoint, HistoryWriter

    if optimizer is None:
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    callbacks = list(callbacks)
    if out_dir is not None:
        callbacks = [HistoryWriter(out_dir), Checkpoint(out_dir)] + callbacks
    trainer = Trainer(model, optimizer, loss=loss, scheduler=scheduler, callbacks=callbacks,
                      progress=progress, out=out)
    return trainer.fit(train_data, val_data, epochs)


def predict_proba(models, loader) -> tuple[np.ndarray, np.ndarray]:
    """Average the softmax outputs of one or several models (an ensemble) over ``loader``.

    Returns ``(probabilities (N, classes), labels (N,))``.
    """
    models = models if isinstance(models, (list, tuple)) else [models]
    probs, labels = [], []
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    with no_grad():
        for x, y in loader:
            probs.append(sum(softmax(m(x).astype(np.float64)) for m in models) / len(models))
            labels.append(y)
    for m, mode in zip(models, modes):
        m.train(mode)
    return np.concatenate(probs), np.concatenate(labels)
