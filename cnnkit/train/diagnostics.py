"""Per-layer health checks while training, every ``N`` steps (the notes' babysitting advice).

For each layer with weights (convolution, linear, batch norm) and each ReLU, one training step in
``every`` records:

* ``act_mean``, ``act_std``: statistics of the layer's output over the mini-batch. Activations
  whose standard deviation collapses towards 0 (vanishing) or blows up (exploding) through the
  depth of the network are the classic symptom of a bad initialisation or learning rate.
* ``dead`` (ReLUs): the fraction of units that output 0 for *every* image of the batch: a "dead"
  ReLU gets no gradient and may never recover (too high a learning rate kills them).
* ``grad_norm``: the L2 norm of the weight gradient of the step.
* ``update_ratio``: ``||W_after - W_before|| / ||W_before||`` over the optimizer step; the notes'
  rule of thumb is about ``1e-3``: much larger and the learning rate is probably too high, much
  smaller and too low.

A warning is logged (once per layer and kind) when a layer's activations vanish or explode. Each
epoch's mean of every statistic goes into the history row as ``diag/<layer>/<stat>``; with
``out_dir`` all measurements are written to ``diagnostics.json`` after every epoch, and at the end
of training ``plot(records, path=out_dir / "diagnostics.png")`` draws them when a ``plot`` is
given (``cnnkit.viz.plot_diagnostics``: the trainer sits below the pictures and does not import
them).

Use: ``Trainer(..., callbacks=[Diagnostics(every=50, out_dir=run_dir, plot=cnnkit.viz.plot_diagnostics),
HistoryWriter(run_dir), ...])``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

RELU_TYPES = ("ReLU", "LeakyReLU")


def _is_monitored(module) -> bool:
    has_weight = getattr(getattr(module, "weight", None), "data", None) is not None
    return next(module.named_children(), None) is None and (has_weight or type(module).__name__ in RELU_TYPES)


def activation_stats(y, relu: bool) -> dict:
    """Mean and std of ``y`` (float64 accumulation); for a ReLU also the fraction of units
    (positions of one sample) that are zero for every sample of the batch."""
    y = np.asarray(y)
    stats = {"act_mean": float(np.mean(y, dtype=np.float64)), "act_std": float(np.std(y, dtype=np.float64))}
    if relu and y.ndim >= 2:
        stats["dead"] = float(np.mean(np.all(y <= 0, axis=0)))
    return stats


class Diagnostics:
    """Trainer callback recording per-layer statistics every ``every`` steps (see the module doc).

    Args:
        every: measure on step 1 and every ``every``-th step.
        out_dir: where ``diagnostics.json`` / ``diagnostics.png`` go (optional).
        vanish_below, explode_above: activation standard deviations that trigger a warning
            (non-finite values always do).
        history: add the epoch means to the history rows (``diag/<layer>/<stat>`` keys).
    """

    def __init__(self, every: int = 100, out_dir=None, vanish_below: float = 1e-4, explode_above: float = 1e3,
                 history: bool = True, plot=None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"Diagnostics: every must be a positive int (steps), got {every!r}")
        if not 0 <= vanish_below < explode_above:
            raise ValueError(f"Diagnostics: need 0 <= vanish_below < explode_above, got {vanish_below} and {explode_above}")
        self.every = every
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.vanish_below = vanish_below
        self.explode_above = explode_above
        self.history = history
        self.plot = plot
        self.records: list[dict] = []
        self.warnings: list[str] = []
        self._warned: set = set()
        self._armed = None  # (modules, activation stats, weights before) during a measured step

    # -- measuring one step -------------------------------------------------------------------
    def _measured(self, step: int) -> bool:
        return step == 1 or step % self.every == 0

    def on_step_begin(self, trainer, step):
        if not self._measured(step):
            return
        modules = {name: m for name, m in trainer.model.named_modules() if name and _is_monitored(m)}
        stats = {name: {} for name in modules}
        before = {name: m.weight.data.copy() for name, m in modules.items()
                  if getattr(getattr(m, "weight", None), "data", None) is not None}
        for name, module in modules.items():
            module.forward = self._recording_forward(module, stats[name])
        self._armed = (modules, stats, before)

    @staticmethod
    def _recording_forward(module, into: dict):
        original = module.forward
        relu = type(module).__name__ in RELU_TYPES

        def forward(x):
            y = original(x)
            into.update(activation_stats(y, relu))
            return y

        return forward

    def on_step_end(self, trainer, step):
        if self._armed is None:
            return
        modules, stats, before = self._armed
        self._armed = None
        for module in modules.values():
            if "forward" in vars(module):
                del module.forward
        for name, w_before in before.items():
            weight = modules[name].weight
            if weight.grad is not None:
                stats[name]["grad_norm"] = float(np.linalg.norm(weight.grad.astype(np.float64, copy=False)))
            norm = float(np.linalg.norm(w_before.astype(np.float64, copy=False)))
            delta = float(np.linalg.norm((weight.data - w_before).astype(np.float64, copy=False)))
            stats[name]["update_ratio"] = delta / norm if norm > 0 else math.nan
        self.records.append({"step": int(step), "epoch": int(trainer.epoch) + 1, "layers": stats})
        self._check(trainer, step, stats)

    def _check(self, trainer, step, stats):
        for name, s in stats.items():
            std = s.get("act_std")
            if std is None:
                continue
            if not math.isfinite(std) or std > self.explode_above:
                kind, what = "explode", f"explode (std {std:.3g} > {self.explode_above:g})"
            elif std < self.vanish_below:
                kind, what = "vanish", f"vanish (std {std:.3g} < {self.vanish_below:g})"
            else:
                continue
            if (name, kind) in self._warned:
                continue
            self._warned.add((name, kind))
            message = (f"diagnostics warning: step {step}: the activations of layer {name} "
                       f"({type(dict(trainer.model.named_modules())[name]).__name__}) {what}; check the "
                       "initialisation and the learning rate")
            self.warnings.append(message)
            trainer.log(message)

    # -- per epoch ----------------------------------------------------------------------------
    def epoch_summary(self, epoch: int) -> dict:
        """``{"diag/<layer>/<stat>": mean over the epoch's measurements}``."""
        rows = [r for r in self.records if r["epoch"] == epoch]
        sums: dict = {}
        for r in rows:
            for name, s in r["layers"].items():
                for stat, value in s.items():
                    sums.setdefault(f"diag/{name}/{stat}", []).append(value)
        return {key: float(np.mean(values)) for key, values in sums.items()}

    def on_epoch_end(self, trainer, epoch, logs):
        if self.history:
            logs.update(self.epoch_summary(epoch))
            # a HistoryWriter that already ran this epoch rewrites its files with the new keys
            from .callbacks import HistoryWriter

            for cb in trainer.callbacks:
                if cb is self:
                    break
                if isinstance(cb, HistoryWriter):
                    cb.on_epoch_end(trainer, epoch, logs)
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.out_dir / "diagnostics.json.tmp"
            tmp.write_text(json.dumps(self.records))
            os.replace(tmp, self.out_dir / "diagnostics.json")

    def on_train_end(self, trainer):
        if self._armed is not None:  # training stopped inside a measured step
            for module in self._armed[0].values():
                if "forward" in vars(module):
                    del module.forward
            self._armed = None
        if self.out_dir is not None and self.records and self.plot is not None:
            self.plot(self.records, path=self.out_dir / "diagnostics.png")

    # -- resume -------------------------------------------------------------------------------
    def state_dict(self):
        return {"records": self.records, "warned": sorted(map(list, self._warned))}

    def load_state_dict(self, state):
        self.records = list(state.get("records", []))
        self._warned = {tuple(w) for w in state.get("warned", [])}
