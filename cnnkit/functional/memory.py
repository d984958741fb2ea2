"""What a kernel holds during a training step: the rule ``cnnkit.summary`` adds up.

Every kernel states, next to its code, the bytes its forward keeps for backward and the
temporaries it makes, as a :class:`LayerMemory` for a whole batch. The rule must follow the
code: ``tests/test_summary.py`` holds the sum of the rules of a model against the peak that
``tracemalloc`` measures on a real training step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass
class LayerMemory:
    """Bytes one layer holds during a training step, for a whole batch.

    ``keeps_input``/``keeps_output``: the cache references the input/output array itself (no copy);
    ``aliases_input``: the output *is* the input (a view: Flatten, Identity);
    ``saved``: new arrays the cache holds until backward (im2col columns, switches, masks);
    ``forward_temp``/``backward_temp``: short-lived arrays at the layer's forward/backward peak,
    beyond its input and output (forward) or ``dy`` and ``dx`` (backward);
    ``scratch``: bytes per name of the shared scratch buffers the kernel uses
    (:func:`cnnkit.functional.workspace.scratch`): they outlive the step, and each name holds as
    much as its largest request, so the model counts the maximum per name once, all step long.
    """

    keeps_input: bool = False
    keeps_output: bool = False
    aliases_input: bool = False
    saved: int = 0
    forward_temp: int = 0
    backward_temp: int = 0
    scratch: dict = field(default_factory=dict)


class ArraySpec(NamedTuple):
    """An array known only by its shape and dtype: what kernels' ``decline`` and ``memory``
    rules are asked with when there is no data (``cnnkit.summary`` plans a model statically)."""

    shape: tuple
    dtype: object

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def itemsize(self) -> int:
        import numpy as np

        return np.dtype(self.dtype).itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize


def numel(shape) -> int:
    return int(math.prod(shape))
