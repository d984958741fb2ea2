"""VGG (Simonyan & Zisserman 2014), its configurations written as the paper's table columns."""
from __future__ import annotations

from collections import OrderedDict

from ..nn.containers import Sequential
from ..nn.flatten import Flatten
from ..nn.pooling import AdaptiveAvgPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register
from .spec import Token, build_layers, split_spec, tokenize

# Table 1 of the paper, one column per configuration, read top to bottom (input 224x224 RGB).
# The paper applies dropout (0.5) to the first two fully connected layers (section 3.1);
# ``vgg`` inserts it after their ReLUs, as torchvision does.
CONFIGS = {
    "A": """
        conv3-64 maxpool
        conv3-128 maxpool
        conv3-256 conv3-256 maxpool
        conv3-512 conv3-512 maxpool
        conv3-512 conv3-512 maxpool
        FC-4096 FC-4096 FC-1000 soft-max""",
    "A-LRN": """
        conv3-64 LRN maxpool
        conv3-128 maxpool
        conv3-256 conv3-256 maxpool
        conv3-512 conv3-512 maxpool
        conv3-512 conv3-512 maxpool
        FC-4096 FC-4096 FC-1000 soft-max""",
    "B": """
        conv3-64 conv3-64 maxpool
        conv3-128 conv3-128 maxpool
        conv3-256 conv3-256 maxpool
        conv3-512 conv3-512 maxpool
        conv3-512 conv3-512 maxpool
        FC-4096 FC-4096 FC-1000 soft-max""",
    "C": """
        conv3-64 conv3-64 maxpool
        conv3-128 conv3-128 maxpool
        conv3-256 conv3-256 conv1-256 maxpool
        conv3-512 conv3-512 conv1-512 maxpool
        conv3-512 conv3-512 conv1-512 maxpool
        FC-4096 FC-4096 FC-1000 soft-max""",
    "D": """
        conv3-64 conv3-64 maxpool
        conv3-128 conv3-128 maxpool
        conv3-256 conv3-256 conv3-256 maxpool
        conv3-512 conv3-512 conv3-512 maxpool
        conv3-512 conv3-512 conv3-512 maxpool
        FC-4096 FC-4096 FC-1000 soft-max""",
    "E": """
        conv3-64 conv3-64 maxpool
        conv3-128 conv3-128 maxpool
        conv3-256 conv3-256 conv3-256 conv3-256 maxpool
        conv3-512 conv3-512 conv3-512 conv3-512 maxpool
        conv3-512 conv3-512 conv3-512 conv3-512 maxpool
        FC-4096 FC-4096 FC-1000 soft-max""",
}


class VGG(Sequential):
    """``features``, ``avgpool`` (AdaptiveAvgPool2d(7)), ``flatten``, ``classifier``: torchvision's
    layout, so ``features.N.weight`` and ``classifier.0/3/6.weight`` load 1:1 from torchvision's
    ``vgg11/13/16/19`` (and their ``_bn`` versions with ``batch_norm=True``)."""


def _classifier_tokens(tokens: list[Token], num_classes: int, dropout: float) -> list[Token]:
    """The table's FC words with the last one resized to ``num_classes`` and dropout after each hidden fc."""
    out = []
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        out.append(Token(f"fc-{num_classes}", token.position) if last else token)
        if not last and dropout > 0:
            out.append(Token(f"dropout-{dropout}", token.position))
    return out


@register()
def vgg(config: str = "D", batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5, *,
        generator=None, seed=None) -> VGG:
    """VGG net of configuration ``config`` (``"A"``, ``"A-LRN"``, ``"B"``, ``"C"``, ``"D"``, ``"E"``).

    Parameters with 1000 classes: A 132,863,336; A-LRN the same; B 133,047,848; C 133,638,952
    (its three 1x1 convolutions); D 138,357,544; E 143,667,240. ``batch_norm=True`` adds a
    BatchNorm2d between each conv and its ReLU (torchvision's ``vgg*_bn``; the paper predates BN).

    ``avgpool`` is AdaptiveAvgPool2d(7) as in torchvision: the identity at 224x224, and it lets
    smaller inputs reach the 7x7x512 the classifier expects. Init as torchvision: He
    (``kaiming_normal_``, fan_out) for the convolutions, ``N(0, 0.01)`` for the linear layers,
    zero biases.
    """
    if config not in CONFIGS:
        raise ValueError(f"vgg: config must be one of {sorted(CONFIGS)}, got {config!r}")
    num_classes = check_num_classes(num_classes, "vgg")
    rng = make_rng(generator, seed)
    feature_tokens, fc_tokens = split_spec(tokenize(CONFIGS[config]))
    features, shape = build_layers(feature_tokens, (3, 224, 224), "features", rng=rng, batch_norm=batch_norm)
    avgpool = AdaptiveAvgPool2d((7, 7))
    flatten = Flatten()
    shape = flatten.output_shape(avgpool.output_shape(shape))               # 25088
    classifier, _ = build_layers(_classifier_tokens(fc_tokens, num_classes, dropout), shape, "classifier", rng=rng)
    model = VGG(OrderedDict(features=features, avgpool=avgpool, flatten=flatten, classifier=classifier))
    model.variant = config
    he_init_(model, rng, mode="fan_out", linear_std=0.01)
    return model


def _alias(name: str, config: str):
    def constructor(batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5, *,
                    generator=None, seed=None) -> VGG:
        return vgg(config, batch_norm, num_classes, dropout, generator=generator, seed=seed)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"VGG configuration {config!r} (see :func:`vgg`)."
    return register(name)(constructor)


def _alias_bn(name: str, config: str):
    def constructor(num_classes: int = 1000, dropout: float = 0.5, *, generator=None, seed=None) -> VGG:
        return vgg(config, True, num_classes, dropout, generator=generator, seed=seed)

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"VGG configuration {config!r} with batch normalisation (torchvision's ``{name}``)."
    return register(name)(constructor)


vgg11 = _alias("vgg11", "A")
vgg13 = _alias("vgg13", "B")
vgg16 = _alias("vgg16", "D")
vgg19 = _alias("vgg19", "E")
vgg11_bn = _alias_bn("vgg11_bn", "A")
vgg13_bn = _alias_bn("vgg13_bn", "B")
vgg16_bn = _alias_bn("vgg16_bn", "D")
vgg19_bn = _alias_bn("vgg19_bn", "E")
