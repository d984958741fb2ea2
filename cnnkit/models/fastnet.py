"""FastNet: a small CIFAR-10 network built for accuracy per CPU-minute, after airbench (Jordan 2024,
"94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv:2404.00498).

The layout is airbench's: a frozen *whitening* layer, then three groups of two 3x3 convolutions
with a 2x2 max pool after the first convolution of each group (pooling before BatchNorm and ReLU
gives the same result as after, on a quarter of the values), then a global pool and a linear
classifier without bias::

    whiten  conv 2x2, 3 -> 24, frozen filters      # N x 24 x 31 x 31
    relu
    layer1  conv3x3 -> w1, maxpool 2, bn, relu,
            conv3x3 w1 -> w1, bn, relu             # N x w1 x 15 x 15
    layer2  likewise -> w2                         # N x w2 x 7 x 7
    layer3  likewise -> w3                         # N x w3 x 3 x 3
    pool    global average                         # N x w3 x 1 x 1
    flatten, fc w3 -> classes (no bias)

airbench uses widths 64/256/256 on a GPU; on two CPU cores the same time buys several times more
epochs of a narrower net, which wins on a small training set (measured in BENCHMARKS.md). airbench
pools the last 3x3 maps with a max; the average did as well in the search (BENCHMARKS.md).

**The whitening layer.** Its filters come from the training images, not from SGD
(``init_from_data``): the 2x2x3 patches of the normalised images have a 12x12 covariance
``C = V diag(lambda) V^T``; the filters are the rows of ``diag(1/sqrt(lambda + eps)) V^T``, so the
layer's 12 outputs are decorrelated unit-variance components of every patch (PCA whitening), and
their negatives make 24 channels so the ReLU after it drops no information. The network then
starts from features in which every direction of pixel space is equally loud, instead of being
dominated by the brightness component. The filters stay frozen (``requires_grad=False``); the bias
trains. A model built without data (``cnnkit summary fastnet``) has random frozen filters until
``init_from_data`` is called; ``cnnkit train`` calls it for a new run.

**Geometry.** The 2x2 valid convolution makes 31x31 maps; each 2x2/2 pool then leaves out the last
row and column (31 -> 15 -> 7 -> 3), as airbench does in PyTorch: the pools are built with
``check_geometry=False``, the explicit opt-out cnnkit asks for when real input is skipped.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..nn.activation import ReLU
from ..nn.containers import Sequential
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.normalization import BatchNorm2d
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register

WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4  # airbench's: on normalised CIFAR images the smallest patch variances are ~1e-3


def whitening_filters(images, kernel_size: int = WHITEN_KERNEL, eps: float = WHITEN_EPS) -> np.ndarray:
    """PCA-whitening filters of the ``kernel_size`` x ``kernel_size`` patches of ``images``, and
    their negatives.

    ``images`` are normalised float images ``(N, C, H, W)``. With ``d = C * k * k`` and the patch
    covariance ``V diag(lambda) V^T`` (float64), the first ``d`` filters are the rows of
    ``diag(1 / sqrt(lambda + eps)) V^T`` reshaped to ``(C, k, k)``, the last ``d`` their negatives.

    Shape:
        images (N, C, H, W) -> filters (2 * C * k * k, C, k, k)
    """
    x = np.asarray(images)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"whitening_filters expects float images (N, C, H, W), got {x.dtype} {x.shape}")
    n, c, h, w = x.shape
    k = int(kernel_size)
    if n < 1 or h < k or w < k:
        raise ValueError(f"whitening_filters needs at least one image of at least {k}x{k} pixels, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("whitening_filters: the images hold NaN or infinite values")
    d = c * k * k
    # (N, C, H', W', k, k) -> (N, H', W', C, k, k): each patch flattened in the filter layout (C, kh, kw)
    patches = sliding_window_view(x, (k, k), axis=(2, 3)).transpose(0, 2, 3, 1, 4, 5).reshape(-1, d)
    patches = patches.astype(np.float64)
    patches -= patches.mean(axis=0)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    filters = (eigenvectors.T / np.sqrt(np.maximum(eigenvalues, 0) + eps)[:, None]).reshape(d, c, k, k)
    return np.concatenate([filters, -filters])


class ConvGroup(Sequential):
    """``conv1 pool bn1 relu1 conv2 bn2 relu2``: two 3x3 convolutions (no bias: BatchNorm follows),
    the first followed by a 2x2 max pool.

    Shape:
        (C_in, H, W) -> (C_out, floor(H / 2), floor(W / 2))
    """

    def __init__(self, in_channels: int, out_channels: int, *, rng=None):
        super().__init__(OrderedDict(
            conv1=Conv2d(in_channels, out_channels, 3, padding=1, bias=False, generator=rng),
            pool=MaxPool2d(2, check_geometry=False),   # an odd side loses its last row/column
            bn1=BatchNorm2d(out_channels), relu1=ReLU(),
            conv2=Conv2d(out_channels, out_channels, 3, padding=1, bias=False, generator=rng),
            bn2=BatchNorm2d(out_channels), relu2=ReLU(),
        ))


class FastNet(Sequential):
    """``whiten relu layer1 layer2 layer3 pool flatten fc`` (see the module docstring).

    Args:
        widths: the output channels of the three groups.
        num_classes: outputs of the classifier.
        whiten: True (default): the first layer's filters are frozen and meant to be set by
            ``init_from_data``; False: they are ordinary trained weights (the ablation).
    """

    def __init__(self, widths=(32, 64, 128), num_classes: int = 10, *, whiten: bool = True, rng=None):
        widths = tuple(widths)
        if len(widths) != 3 or not all(isinstance(w, (int, np.integer)) and w >= 1 for w in widths):
            raise ValueError(f"FastNet widths must be three positive ints, got {widths!r}")
        stem_channels = 2 * 3 * WHITEN_KERNEL ** 2
        groups = OrderedDict()
        channels = stem_channels
        for i, width in enumerate(widths):
            groups[f"layer{i + 1}"] = ConvGroup(channels, int(width), rng=rng)  # N x w x 15/7/3 x 15/7/3
            channels = int(width)
        super().__init__(OrderedDict(
            whiten=Conv2d(3, stem_channels, WHITEN_KERNEL, generator=rng),      # N x 24 x 31 x 31
            relu=ReLU(),
            **groups,
            pool=AdaptiveAvgPool2d((1, 1)),                                     # N x w3 x 1 x 1
            flatten=Flatten(),
            fc=Linear(channels, num_classes, bias=False, generator=rng),
        ))
        self.widths = widths
        self.whitened = bool(whiten)
        he_init_(self, rng, mode="fan_in")
        self.whiten.weight.requires_grad = not whiten

    def init_from_data(self, images) -> None:
        """Set the whitening filters from normalised training images ``(N, 3, H, W)`` (a few
        thousand are plenty); the bias starts at zero. Does nothing for ``whiten=False``."""
        if not self.whitened:
            return
        filters = whitening_filters(images)
        self.whiten.weight.data[...] = filters.astype(self.whiten.weight.data.dtype)
        self.whiten.bias.data[...] = 0


@register(input_shape=(3, 32, 32))
def fastnet(num_classes: int = 10, *, widths=(32, 64, 128), whiten: bool = True, generator=None,
            seed=None) -> FastNet:
    """FastNet (airbench's layout at CPU widths): the model of ``cnnkit train --recipe fast``."""
    return FastNet(widths, check_num_classes(num_classes, "fastnet"), whiten=whiten, rng=make_rng(generator, seed))


@register(input_shape=(3, 32, 32))
def fastnet_learned(num_classes: int = 10, *, widths=(32, 64, 128), generator=None, seed=None) -> FastNet:
    """FastNet whose first layer is trained like the others instead of whitened (``whiten=False``):
    the ablation that shows what the whitening gives."""
    return FastNet(widths, check_num_classes(num_classes, "fastnet_learned"), whiten=False,
                   rng=make_rng(generator, seed))
