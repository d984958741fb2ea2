"""A small ConvNet for the bundled 8x8 digits: the default model of ``cnnkit train``."""
from __future__ import annotations

import numpy as np

from ..nn import Linear, Sequential
from ..nn.activation import ReLU
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.pooling import MaxPool2d
from .registry import register


@register("digitnet", input_shape=(1, 8, 8))
def digitnet(num_classes: int = 10, in_channels: int = 1, seed: int | None = 0):
    """conv3-16, conv3-32, maxpool, fc-64, fc-num_classes for 8x8 inputs (~38K parameters).

    Shape:
        (N, in_channels, 8, 8) -> 16x8x8 -> 32x8x8 -> 32x4x4 -> 512 -> 64 -> (N, num_classes)
    """
    g = np.random.default_rng(seed)
    return Sequential(
        Conv2d(in_channels, 16, 3, padding=1, generator=g), ReLU(),   # N x 16 x 8 x 8
        Conv2d(16, 32, 3, padding=1, generator=g), ReLU(),            # N x 32 x 8 x 8
        MaxPool2d(2),                                                 # N x 32 x 4 x 4
        Flatten(),                                                    # N x 512
        Linear(32 * 4 * 4, 64, generator=g), ReLU(),                  # N x 64
        Linear(64, num_classes, generator=g),                         # N x num_classes
    )
