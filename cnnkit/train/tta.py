"""Test-time augmentation: predict from an image and its mirror image together.

A network trained with random horizontal flips has learnt that a mirrored car is still a car, but
its two answers differ a little; averaging them is a two-model ensemble for the price of a second
forward pass (the airbench and DAWNBench CIFAR-10 speed-runs all use it). Only for images whose
classes keep their meaning under a left-right flip (natural photos; not digits or letters).
"""
from __future__ import annotations

import numpy as np

from ..backend import array_module
from ..functional.activation import log_softmax_forward
from ..nn.module import Module


class FlipAveraged(Module):
    """``model`` evaluated on each image and its horizontal mirror, the class probabilities averaged.

    The output is the log of the averaged probabilities, ``log((softmax(f(x)) + softmax(f(flip(x)))) / 2)``,
    computed as ``logaddexp`` of the two log-softmaxes (finite for any finite logits), so it can
    stand wherever logits are expected: its argmax is the averaged prediction, its softmax the
    averaged probabilities, and the cross-entropy of it the loss of the averaged prediction. For
    inference only (no backward).

    Shape:
        (N, C, H, W) -> (N, classes), as ``model``
    """

    def __init__(self, model: Module):
        super().__init__()
        if not isinstance(model, Module):
            raise TypeError(f"FlipAveraged expects a cnnkit Module, got {type(model).__name__}")
        self.model = model

    def forward(self, x):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"FlipAveraged flips images (N, C, H, W), got an input of shape {getattr(x, 'shape', x)}")
        xp = array_module(x)
        plain, _ = log_softmax_forward(self.model(x), axis=1)
        mirrored, _ = log_softmax_forward(self.model(xp.ascontiguousarray(x[..., ::-1])), axis=1)
        return xp.logaddexp(plain, mirrored) - plain.dtype.type(np.log(2.0))

    def backward(self, dy, input_grad: bool = True):
        raise NotImplementedError("FlipAveraged is for evaluation only: train the model it wraps")

    def output_shape(self, input_shape):
        return self.model.output_shape(input_shape)
