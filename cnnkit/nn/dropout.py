"""``Dropout``: inverted dropout with a mask from an explicit ``np.random.Generator``."""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ..functional.dropout import dropout_backward, dropout_forward, dropout_memory
from ..functional.memory import ArraySpec, LayerMemory
from .activation import check_any_rank
from .module import Module

__all__ = ["Dropout"]  # what cnnkit.nn exports from here


def make_generator(generator, layer: str) -> np.random.Generator:
    """``None`` -> a freshly seeded generator, an int -> ``default_rng(seed)``, a Generator as is."""
    if generator is None or (isinstance(generator, Integral) and not isinstance(generator, bool)):
        return np.random.default_rng(generator)
    if isinstance(generator, np.random.Generator):
        return generator
    raise TypeError(f"{layer}: generator must be an np.random.Generator, an int seed or None, got {type(generator).__name__}")


class Dropout(Module):
    """Zero each element with probability ``p`` in training and scale the rest by ``1/(1-p)``.

    ``p`` is the drop probability (PyTorch's convention), ``0 <= p <= 1``; ``p = 1`` outputs
    zeros, as in PyTorch. In eval mode (or with ``p = 0``) forward and backward are the identity.
    The mask comes from ``self.generator`` (an ``np.random.Generator``; pass one, or an int seed,
    as ``generator=``; ``reseed(seed)`` replaces it), and backward reuses it.
    ``inplace`` is accepted for PyTorch compatibility but cnnkit never works in place.

    Shape:
        input (N, *) -> output (N, *), same shape
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, generator=None):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout: p (the drop probability) must be a number in [0, 1], got {p!r}")
        self.p = float(p)
        self.inplace = bool(inplace)  # accepted for PyTorch compatibility; never used
        self.generator = make_generator(generator, "Dropout")

    def reseed(self, seed) -> "Dropout":
        """Replace the generator by ``np.random.default_rng(seed)``; returns ``self``."""
        self.generator = np.random.default_rng(seed)
        return self

    def forward(self, x):
        check_any_rank(x, "Dropout")
        y, cache = dropout_forward(x, self.p, self.generator, training=self.training)
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return dropout_backward(dy, cache) if input_grad else None

    def macs(self, input_shape, output_shape) -> int:
        return 0  # element-wise: not counted

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return dropout_memory(ArraySpec((batch_size,) + tuple(input_shape), dtype), self.p, self.training)

    def counts_activation(self, input_shape, output_shape) -> bool:
        return False  # in place, in the notes' convention

    def onnx_export(self, ctx, x, prefix):
        return x  # the inference graph: dropout is the identity

    def extra_repr(self) -> str:
        return f"p={self.p}"
