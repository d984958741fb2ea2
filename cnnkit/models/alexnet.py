"""AlexNet (the notes' one-tower version for 227x227 input) and ZFNet."""
from __future__ import annotations

from collections import OrderedDict

from ..nn.activation import ReLU
from ..nn.containers import Sequential
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.normalization import LocalResponseNorm
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register


def _lrn() -> LocalResponseNorm:
    # Krizhevsky et al.: k=2, n=5, alpha=1e-4, beta=0.75 with alpha multiplying the plain sum of
    # squares. PyTorch (and Caffe) divide alpha by n, so the same layer needs alpha = 5 * 1e-4.
    return LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)


def _classifier(num_classes: int, dropout: float, rng) -> Sequential:
    # torchvision's layout (classifier.1/4/6 are the Linear layers): FC6, FC7, FC8.
    return Sequential(
        Dropout(dropout, generator=rng),
        Linear(256 * 6 * 6, 4096, generator=rng),   # FC6
        ReLU(),
        Dropout(dropout, generator=rng),
        Linear(4096, 4096, generator=rng),          # FC7
        ReLU(),
        Linear(4096, num_classes, generator=rng),   # FC8
    )


class AlexNet(Sequential):
    """``features``, ``avgpool``, ``flatten``, ``classifier`` (torchvision's attribute names)."""


@register(input_shape=(3, 227, 227))
def alexnet(num_classes: int = 1000, dropout: float = 0.5, *, generator=None, seed=None) -> AlexNet:
    """AlexNet as the notes lay it out: one tower, 227x227x3 input, 62,378,344 parameters.

    ======  =====================================  ==============
    CONV1   96 11x11 filters, stride 4, pad 0      55x55x96
    POOL1   3x3 max, stride 2                      27x27x96
    NORM1   local response normalisation           27x27x96
    CONV2   256 5x5, stride 1, pad 2               27x27x256
    POOL2   3x3 max, stride 2                      13x13x256
    NORM2                                          13x13x256
    CONV3   384 3x3, pad 1                         13x13x384
    CONV4   384 3x3, pad 1                         13x13x384
    CONV5   256 3x3, pad 1                         13x13x256
    POOL3   3x3 max, stride 2                      6x6x256
    FC6     4096 (dropout before it)               4096
    FC7     4096 (dropout before it)               4096
    FC8     ``num_classes``                        1000
    ======  =====================================  ==============

    ReLU after every conv and hidden fc layer. 224x224 input does not fit: (224 - 11)/4 + 1 is
    not an integer, and the shape check says so at ``features.0``.

    How it differs from the paper: Krizhevsky et al. split CONV1-5 over two GPUs (two towers of
    48/128/192/192/128 filters; CONV2, CONV4 and CONV5 only see their own tower, so those layers
    have half the weights, 60,965,224 parameters in all) and normalised before pooling; the notes,
    like CaffeNet, pool then normalise and use one tower.

    How it differs from torchvision's ``alexnet`` (61,100,840 parameters): torchvision follows
    the "one weird trick" paper (Krizhevsky 2014): 64/192/384/256/256 filters, CONV1 with
    padding 2 so 224x224 input fits, and no LRN. Attribute names are the same (``features.N``,
    ``avgpool`` = AdaptiveAvgPool2d(6), which is the identity at 227, ``classifier.1/4/6``), but the
    weight shapes differ, so torchvision checkpoints do not load into this variant.

    Init: He (``kaiming_normal_``, fan_out) for the convolutions, PyTorch's default for the linear
    layers.
    """
    num_classes = check_num_classes(num_classes, "alexnet")
    rng = make_rng(generator, seed)
    features = Sequential(
        Conv2d(3, 96, 11, stride=4, generator=rng),       # CONV1: N x 96 x 55 x 55
        ReLU(),
        MaxPool2d(3, 2),                                   # POOL1: N x 96 x 27 x 27
        _lrn(),                                            # NORM1
        Conv2d(96, 256, 5, padding=2, generator=rng),      # CONV2: N x 256 x 27 x 27
        ReLU(),
        MaxPool2d(3, 2),                                   # POOL2: N x 256 x 13 x 13
        _lrn(),                                            # NORM2
        Conv2d(256, 384, 3, padding=1, generator=rng),     # CONV3: N x 384 x 13 x 13
        ReLU(),
        Conv2d(384, 384, 3, padding=1, generator=rng),     # CONV4: N x 384 x 13 x 13
        ReLU(),
        Conv2d(384, 256, 3, padding=1, generator=rng),     # CONV5: N x 256 x 13 x 13
        ReLU(),
        MaxPool2d(3, 2),                                   # POOL3: N x 256 x 6 x 6
    )
    model = AlexNet(OrderedDict(
        features=features,
        avgpool=AdaptiveAvgPool2d((6, 6)),
        flatten=Flatten(),                                 # N x 9216
        classifier=_classifier(num_classes, dropout, rng),
    ))
    he_init_(model, rng, mode="fan_out")
    return model


@register()
def zfnet(num_classes: int = 1000, dropout: float = 0.5, *, generator=None, seed=None) -> AlexNet:
    """ZFNet (Zeiler & Fergus 2013): AlexNet with a 7x7 stride-2 first layer, for 224x224 input.

    ======  ===================================================  ==============
    CONV1   96 7x7, stride 2, pad 1                              110x110x96
    POOL1   3x3 max, stride 2 (ceil)                             55x55x96
    NORM1                                                        55x55x96
    CONV2   256 5x5, stride 2                                    26x26x256
    POOL2   3x3 max, stride 2 (ceil)                             13x13x256
    NORM2                                                        13x13x256
    CONV3   384 3x3, pad 1;  CONV4 384 3x3, pad 1;  CONV5 256     13x13x256
    POOL3   3x3 max, stride 2                                    6x6x256
    FC6 4096, FC7 4096, FC8 ``num_classes``
    ======  ===================================================  ==============

    The paper's smaller first-layer filters and stride (AlexNet: 11x11/4) keep more mid-frequency
    information and avoid aliasing (section 4.1). The paper gives the map sizes, not the padding;
    CONV1 padding 1 and ceil-mode pooling (Caffe's rule) reproduce them. CONV3-5 are 384/384/256
    as in AlexNet (the paper's best model widened them to 512/1024/512). 62,357,608 parameters.
    """
    num_classes = check_num_classes(num_classes, "zfnet")
    rng = make_rng(generator, seed)
    features = Sequential(
        Conv2d(3, 96, 7, stride=2, padding=1, generator=rng),   # N x 96 x 110 x 110
        ReLU(),
        MaxPool2d(3, 2, ceil_mode=True),                         # N x 96 x 55 x 55
        _lrn(),
        Conv2d(96, 256, 5, stride=2, generator=rng),             # N x 256 x 26 x 26
        ReLU(),
        MaxPool2d(3, 2, ceil_mode=True),                         # N x 256 x 13 x 13
        _lrn(),
        Conv2d(256, 384, 3, padding=1, generator=rng),           # N x 384 x 13 x 13
        ReLU(),
        Conv2d(384, 384, 3, padding=1, generator=rng),           # N x 384 x 13 x 13
        ReLU(),
        Conv2d(384, 256, 3, padding=1, generator=rng),           # N x 256 x 13 x 13
        ReLU(),
        MaxPool2d(3, 2),                                         # N x 256 x 6 x 6
    )
    model = AlexNet(OrderedDict(
        features=features,
        avgpool=AdaptiveAvgPool2d((6, 6)),
        flatten=Flatten(),
        classifier=_classifier(num_classes, dropout, rng),
    ))
    he_init_(model, rng, mode="fan_out")
    return model
