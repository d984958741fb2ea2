"""Static accounting of a model: shapes, parameters, multiply-adds and memory, without running it.

    >>> s = cnnkit.summary(cnnkit.models.vgg16(), (3, 224, 224), batch_size=32)
    >>> print(s)                     # a table with human units
    >>> s.rows[1]["output_shape"], s.total_params, s.total_macs
    >>> s.to_dict()                  # JSON-ready

How the tree is walked
----------------------
``summary`` calls ``model.output_shape(input_shape)`` once, with every module's
``output_shape`` temporarily wrapped so that each call is recorded: which module, with which
input shape, giving which output shape. Containers (``Sequential``, ``Residual``, ``Concat``) and
custom blocks (ResNet blocks, GoogLeNet) compute their output shape by calling their children's
``output_shape`` in the order forward runs them, so the record is exactly the forward pass on
shapes. A custom block only has to follow that rule -- its ``output_shape`` calls the children's
``output_shape`` in forward order -- to be fully walkable; nothing else to implement. (A module
whose ``output_shape`` does not consult its children still gets its own row; its children are
then reported without shapes.)

The wrapper also knows *which array* each shape stands for: a shape passed on unchanged refers
to the same array (a block hands its input to both the residual path and the shortcut), a
layer's output is a new array, and a layer whose memory rule says so (Flatten, Identity) returns
a view of its input. That identity is what makes the training-memory estimate count an array
kept by two caches once.

A geometry error is re-raised by the innermost module that failed, naming it by its dotted name
(``features.0 (Conv2d) with input (3, 224, 224): Conv2d: width 224 with kernel 11 ...``), as a
:class:`ShapeError` (a ``ValueError``).

Per-layer rules
---------------
Each leaf layer answers for itself (see :mod:`cnnkit.nn.module`): ``macs(in_shape, out_shape)``
-- multiply-adds for one sample; ``step_memory(in_shape, out_shape, batch, dtype)`` -- a
:class:`~cnnkit.functional.memory.LayerMemory` that its kernel states next to its code (the flat
convolution keeps its input, im2col its columns; max pooling keeps the argmax switches;
BatchNorm keeps ``x - mean``; ReLU keeps its output; dropout a boolean mask; Linear its input);
``counts_activation(in_shape, out_shape)`` -- whether the output counts as a new activation in
the notes' forward-memory convention (ReLU and dropout run in place there). For a layer type
defined outside cnnkit, :func:`register_layer` gives the rules instead.

MACs count the multiply-adds of convolutions and fully connected layers, as the papers' FLOP
columns do; pooling, normalisation and activations are not counted (their cost is a few percent
and is memory-bound anyway).

Training memory
---------------
The estimate simulates one training step on the recorded layer sequence: forward keeps each
layer's cache, backward frees them in reverse while parameter gradients appear, the optimizer
then updates with its state (SGD none, momentum one copy of the parameters, Adam two). The peak
of that timeline, with the parameters and the input batch, is ``training_memory(...)["total"]``.
``tests/test_summary.py`` checks it against ``tracemalloc`` on a real training step.
"""
from __future__ import annotations

from .memory import OPTIMIZER_STATE
from .report import Summary, default_input_shape, summary
from .rules import register_layer
from .trace import ShapeError

__all__ = ["summary", "Summary", "ShapeError", "register_layer", "default_input_shape", "OPTIMIZER_STATE"]
