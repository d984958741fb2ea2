"""LeNet-5, the common modern variant."""
from __future__ import annotations

from collections import OrderedDict

from ..nn.activation import ReLU
from ..nn.containers import Sequential
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.pooling import MaxPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register


class LeNet5(Sequential):
    """conv 6@5x5 - pool - conv 16@5x5 - pool - fc 120 - fc 84 - fc ``num_classes``: ``features``,
    ``flatten``, ``classifier``."""


@register(input_shape=(1, 28, 28))
def lenet5(num_classes: int = 10, in_channels: int = 1, padding: int = 2, *, generator=None, seed=None) -> LeNet5:
    """LeNet-5 as it is usually built today (61,706 parameters with 10 classes).

    For 28x28 MNIST digits the first convolution uses ``padding=2``, which gives the 32x32 input
    LeCun et al. (1998) designed for; for 32x32 inputs pass ``padding=0``. Either way the maps are
    28x28x6 -> 14x14x6 -> 10x10x16 -> 5x5x16 -> 400 -> 120 -> 84 -> ``num_classes``.

    How it differs from the 1998 paper:

    * C3 connects each of its 16 maps to *all* 6 maps of S2; LeCun's connection table linked each
      to a subset of 3, 4 or 6 (60 of 96 pairs, 1,516 weights instead of 2,416) to break symmetry
      and save computation.
    * S2/S4 are 2x2 max pools; the paper's subsampling added the 4 inputs, multiplied by a
      trainable coefficient, added a trainable bias and applied a sigmoid.
    * ReLU instead of the scaled tanh ``1.7159 tanh(2x/3)``.
    * The output is a linear layer giving logits for softmax cross-entropy; the paper used 10
      Euclidean RBF units with fixed +-1 7x12 bitmap prototypes.

    Convolutions get He init (``kaiming_normal_``, fan_out); linear layers PyTorch's default.
    """
    num_classes = check_num_classes(num_classes, "lenet5")
    rng = make_rng(generator, seed)
    features = Sequential(
        Conv2d(in_channels, 6, 5, padding=padding, generator=rng),  # N x 6 x 28 x 28
        ReLU(),
        MaxPool2d(2, 2),                                            # N x 6 x 14 x 14
        Conv2d(6, 16, 5, generator=rng),                            # N x 16 x 10 x 10
        ReLU(),
        MaxPool2d(2, 2),                                            # N x 16 x 5 x 5
    )
    classifier = Sequential(
        Linear(16 * 5 * 5, 120, generator=rng),
        ReLU(),
        Linear(120, 84, generator=rng),
        ReLU(),
        Linear(84, num_classes, generator=rng),
    )
    model = LeNet5(OrderedDict(features=features, flatten=Flatten(), classifier=classifier))
    he_init_(model, rng, mode="fan_out")
    return model
