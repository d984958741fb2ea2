"""An exponential moving average (EMA) of a model's weights, the cheap ensemble of the speed-runs.

After every optimizer step ``ExponentialMovingAverage.update()`` moves a shadow copy of every
floating parameter and buffer (BatchNorm's running statistics included) towards the live one::

    average <- d * average + (1 - d) * weight,   d = min(decay, (1 + t) / (10 + t))

where ``t`` counts the updates made so far. The second term of the ``min`` (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``) lets the average forget the random initial
weights quickly: without it a decay of 0.999 would still remember them after a few hundred
steps, longer than a whole short run. Integer buffers (``num_batches_tracked``) are copied, not
averaged. The averaged weights wander less than the last SGD iterate around the minimum, so they
usually test better, most of all when the learning rate stays high until the end.

``with ema.applied():`` puts the averaged weights into the model for evaluation or saving and
puts the training weights back afterwards. The arrays are copied in place (the model's arrays
keep their identity, as after an optimizer step), so nothing holding on to them goes stale.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from numbers import Real

import numpy as np

from ..nn.module import Module, Parameter


class ExponentialMovingAverage:
    """Keeps ``average`` (a dict like ``model.state_dict()``) of ``model``'s weights.

    Args:
        model: the cnnkit ``Module`` being trained.
        decay: the weight of the old average per update, in ``[0, 1)``; the average then spans
            about ``1 / (1 - decay)`` steps (0.99: the last hundred or so).
        warmup: use ``min(decay, (1 + t) / (10 + t))`` for the ``t``-th update (see the module
            docstring); ``False`` uses ``decay`` from the first update on.
    """

    def __init__(self, model: Module, decay: float, *, warmup: bool = True):
        if not isinstance(model, Module):
            raise TypeError(f"ExponentialMovingAverage expects a cnnkit Module, got {type(model).__name__}")
        self.decay = check_decay(decay)
        self.warmup = bool(warmup)
        self.model = model
        self.updates = 0
        # (owner module, attribute, is_parameter) per state-dict entry: the arrays are fetched at
        # every use, since a layer may replace a buffer array rather than write into it.
        self._slots = {}
        for prefix, module in model.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter):
                    self._slots[f"{prefix}.{name}" if prefix else name] = (module, name, True)
            for name in module._buffer_names:
                self._slots[f"{prefix}.{name}" if prefix else name] = (module, name, False)
        self.average = {key: np.array(self._live(key), copy=True) for key in self._slots}

    def _live(self, key):
        module, name, is_parameter = self._slots[key]
        value = getattr(module, name)
        return value.data if is_parameter else value

    def current_decay(self) -> float:
        """The ``d`` the next ``update()`` uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self) -> None:
        """Move the average one step towards the model's current weights."""
        d = self.current_decay()
        for key, average in self.average.items():
            live = self._live(key)
            if np.issubdtype(average.dtype, np.floating):
                # average += (1 - d) * (live - average): one temporary, no drift for constant weights
                step = live - average
                step *= average.dtype.type(1 - d)
                average += step
            else:
                average[...] = live
        self.updates += 1

    @contextmanager
    def applied(self, training: dict | None = None):
        """Inside the block the model holds the averaged weights; afterwards the training ones
        again (``average`` itself is not changed).

        ``training``: a copy of the model's current weights by state-dict key, already made by the
        caller (a checkpoint's training state holds one), put back afterwards instead of a new copy.
        """
        if training is None:
            training = {key: np.array(self._live(key), copy=True) for key in self.average}
        self.copy_to_model()
        try:
            yield self.model
        finally:
            for key in self.average:
                self._live(key)[...] = training[key]

    def copy_to_model(self) -> None:
        """Overwrite the model's weights with the average for good (e.g. at the end of training)."""
        for key, average in self.average.items():
            self._live(key)[...] = average

    def state_dict(self) -> dict:
        """``decay``, ``updates`` and the ``average`` arrays (copies)."""
        return {"decay": self.decay, "updates": self.updates,
                "average": {key: value.copy() for key, value in self.average.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` returned; the keys and shapes must be this model's."""
        average = state["average"]
        if set(average) != set(self.average):
            missing = sorted(set(self.average) - set(average))[:5]
            unexpected = sorted(set(average) - set(self.average))[:5]
            raise ValueError(f"ExponentialMovingAverage.load_state_dict: the average does not fit the model "
                             f"(missing {missing}, unexpected {unexpected})")
        for key, value in average.items():
            value = np.asarray(value)
            if value.shape != self.average[key].shape:
                raise ValueError(f"ExponentialMovingAverage.load_state_dict: {key} has shape {value.shape}, the "
                                 f"model's is {self.average[key].shape}")
        updates = state["updates"]
        if isinstance(updates, bool) or not isinstance(updates, (int, np.integer)) or updates < 0:
            # a file's count: a negative one would divide by zero in the warm-up decay (1 + t) / (10 + t)
            raise ValueError(f"ExponentialMovingAverage.load_state_dict: updates must be a non-negative integer, "
                             f"got {updates!r}")
        self.decay = check_decay(state["decay"])
        self.updates = int(updates)
        for key, value in average.items():
            self.average[key][...] = value

    def __repr__(self) -> str:
        return f"ExponentialMovingAverage(decay={self.decay}, updates={self.updates}, warmup={self.warmup})"


def check_decay(decay) -> float:
    """``decay`` as a float, or a ``ValueError`` saying what a decay must be."""
    if isinstance(decay, bool) or not isinstance(decay, Real) or not math.isfinite(decay) or not 0 <= decay < 1:
        raise ValueError(f"EMA decay must be a number in [0, 1) (e.g. 0.99), got {decay!r}")
    return float(decay)
