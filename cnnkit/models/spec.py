"""Networks from the notes' own notation: the VGG table's vocabulary as a string.

    >>> net = from_spec("conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10", input_shape=(1, 28, 28))

Vocabulary (one word per layer, separated by spaces or commas; case-insensitive):

=================  ===========================================================================
``convF-K``        ``K`` filters of ``F x F``, stride 1, "same" padding ``F // 2`` (``F`` odd),
                   followed by ReLU (with ``batch_norm=True``: conv, BatchNorm2d, ReLU)
``maxpool``        2x2 max pooling, stride 2
``avgpool``        2x2 average pooling, stride 2
``lrn``            local response normalisation across 5 channels, Krizhevsky et al.'s
                   ``k=2, alpha=1e-4, beta=0.75`` (PyTorch divides alpha by the size, so the
                   layer gets ``alpha=5e-4``)
``bn``             BatchNorm2d on feature maps, BatchNorm1d on vectors
``dropout[-P]``    dropout with drop probability ``P`` (default 0.5)
``fc-N``           fully connected layer with ``N`` outputs; ReLU after every fc layer but the
                   last (the last one gives the logits). The flatten is inserted before the first.
``soft-max``       accepted as the last word, as in the paper's table; builds nothing (the loss,
                   ``CrossEntropyLoss``, applies the softmax)
``[words]*n``      the words repeated ``n`` times (``[conv3-64]*2``; groups may nest)
=================  ===========================================================================

The network is a ``Sequential`` with ``features`` (everything before the first fc), ``flatten``
and ``classifier`` (torchvision's layout), and every layer's output shape is checked while it is
built: a spec that breaks names the word, its position and the layer, e.g. ``word 9 'maxpool'
(features.12, MaxPool2d) cannot take an input of shape (512, 1, 1): ...``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from ..nn.activation import ReLU
from ..nn.containers import Sequential
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from ..nn.pooling import AvgPool2d, MaxPool2d
from ._common import he_init_, make_rng
from .registry import register


@dataclass(frozen=True)
class Token:
    """One word of a spec: ``text`` (lower case), ``position`` (1-based, as written)."""

    text: str
    position: int


_LEXEME = re.compile(r"\[|\]\s*(?:[*x]\s*(\d+))?|[^\s,\[\]]+")


def tokenize(spec: str) -> list[Token]:
    """Split ``spec`` into words and expand ``[...]*n`` repetitions (``position`` stays as written)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"from_spec: spec must be a non-empty string, got {spec!r}")
    stack: list[list[Token]] = [[]]
    position = 0
    for match in _LEXEME.finditer(spec):
        lexeme = match.group(0)
        if lexeme == "[":
            stack.append([])
        elif lexeme.startswith("]"):
            if len(stack) == 1:
                raise ValueError(f"from_spec: ']' at character {match.start()} closes no '[' in {spec!r}")
            if match.group(1) is None:
                raise ValueError(
                    f"from_spec: ']' at character {match.start()} must be followed by a repeat count "
                    f"like ']*2' in {spec!r}"
                )
            group = stack.pop()
            stack[-1].extend(group * int(match.group(1)))
        else:
            position += 1
            stack[-1].append(Token(lexeme.lower(), position))
    if len(stack) != 1:
        raise ValueError(f"from_spec: unclosed '[' in {spec!r}")
    return stack[0]


# -- one builder per word, looked up in a registry of (pattern, builder) ------------------------
@dataclass
class _Context:
    shape: tuple
    rng: object
    batch_norm: bool
    is_last_fc: bool


_BUILDERS: list[tuple[re.Pattern, object]] = []


def _word(pattern: str):
    def decorate(fn):
        _BUILDERS.append((re.compile(pattern + r"$"), fn))
        return fn

    return decorate


def _needs_maps(ctx: _Context, word: str) -> int:
    if len(ctx.shape) != 3:
        raise ValueError(f"'{word}' needs feature maps (C, H, W), but the input here is a vector of shape {ctx.shape}")
    return ctx.shape[0]


@_word(r"conv(\d+)-(\d+)")
def _conv(match, ctx):
    size, filters = int(match.group(1)), int(match.group(2))
    if size % 2 == 0:
        raise ValueError(f"'conv{size}-{filters}': same padding needs an odd filter size, got {size}")
    # The conv keeps its bias even before a BatchNorm, as torchvision's vgg*_bn (same state dicts).
    layers = [Conv2d(_needs_maps(ctx, match.group(0)), filters, size, padding=size // 2, generator=ctx.rng)]
    if ctx.batch_norm:
        layers.append(BatchNorm2d(filters))
    return layers + [ReLU()]


@_word(r"maxpool")
def _maxpool(match, ctx):
    _needs_maps(ctx, "maxpool")
    return [MaxPool2d(2, 2)]


@_word(r"avgpool")
def _avgpool(match, ctx):
    _needs_maps(ctx, "avgpool")
    return [AvgPool2d(2, 2)]


@_word(r"lrn")
def _lrn(match, ctx):
    _needs_maps(ctx, "lrn")
    return [LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)]


@_word(r"bn")
def _bn(match, ctx):
    return [BatchNorm2d(ctx.shape[0]) if len(ctx.shape) == 3 else BatchNorm1d(ctx.shape[0])]


@_word(r"dropout(?:-(\d*\.?\d+))?")
def _dropout(match, ctx):
    p = 0.5 if match.group(1) is None else float(match.group(1))
    return [Dropout(p, generator=ctx.rng)]


@_word(r"fc-(\d+)")
def _fc(match, ctx):
    if len(ctx.shape) != 1:
        raise ValueError(f"'fc' needs a vector input, got shape {ctx.shape} (the flatten goes before the first fc)")
    layers = [Linear(ctx.shape[0], int(match.group(1)), generator=ctx.rng)]
    return layers if ctx.is_last_fc else layers + [ReLU()]


def _builder(token: Token):
    for pattern, fn in _BUILDERS:
        match = pattern.match(token.text)
        if match:
            return match, fn
    raise ValueError(
        f"from_spec: word {token.position} {token.text!r} is not in the vocabulary "
        "(convF-K, maxpool, avgpool, lrn, bn, dropout[-P], fc-N, soft-max, [words]*n)"
    )


def _is_softmax(token: Token) -> bool:
    return token.text in ("softmax", "soft-max")


def split_spec(tokens: list[Token]) -> tuple[list[Token], list[Token]]:
    """``(feature words, classifier words)``: the classifier starts at the first ``fc``."""
    if tokens and _is_softmax(tokens[-1]):
        tokens = tokens[:-1]
    for token in tokens:
        if _is_softmax(token):
            raise ValueError(f"from_spec: word {token.position} 'soft-max' may only end the spec")
    first_fc = next((i for i, t in enumerate(tokens) if t.text.startswith("fc-")), len(tokens))
    features, classifier = tokens[:first_fc], tokens[first_fc:]
    for token in classifier:
        if token.text.startswith(("conv", "maxpool", "avgpool", "lrn")):
            raise ValueError(
                f"from_spec: word {token.position} {token.text!r} comes after a fully connected layer; "
                "convolutions and pooling belong before the first fc"
            )
    return features, classifier


def build_layers(tokens: list[Token], input_shape: tuple, prefix: str, *, rng,
                 batch_norm: bool = False) -> tuple[Sequential, tuple]:
    """Build the layers of ``tokens`` into a ``Sequential`` named ``prefix``; return it and its output shape.

    Each layer's ``output_shape`` is checked as soon as it is built, so the first word that
    breaks the geometry is the one named in the error.
    """
    shape = tuple(input_shape)
    layers = []
    fc_indices = [i for i, t in enumerate(tokens) if t.text.startswith("fc-")]
    for i, token in enumerate(tokens):
        match, fn = _builder(token)
        ctx = _Context(shape, rng, batch_norm, is_last_fc=bool(fc_indices) and i == fc_indices[-1])
        try:
            new = fn(match, ctx)
        except ValueError as err:
            raise ValueError(f"from_spec: word {token.position} {token.text!r} ({prefix}.{len(layers)}): {err}") from err
        for module in new:
            where = f"{prefix}.{len(layers)}"
            try:
                shape = tuple(module.output_shape(shape))
            except ValueError as err:
                raise ValueError(
                    f"from_spec: word {token.position} {token.text!r} ({where}, {type(module).__name__}) "
                    f"cannot take an input of shape {shape}: {err}"
                ) from err
            layers.append(module)
    return Sequential(*layers), shape


class SpecNet(Sequential):
    """A network built by :func:`from_spec`: ``features``, ``flatten``, ``classifier``.

    ``spec`` and ``input_shape`` record what it was built from.
    """


@register("spec")
def from_spec(spec: str, input_shape: tuple, *, batch_norm: bool = False,
              generator=None, seed: int | None = None) -> SpecNet:
    """Build the network that ``spec`` describes for one sample of ``input_shape`` (``(C, H, W)``).

    Convolutions get He init (``kaiming_normal_``, fan_out, as torchvision's VGG), fully
    connected layers PyTorch's default. ``batch_norm=True`` puts a BatchNorm2d between every
    conv and its ReLU (the conv keeps its bias, as in torchvision's ``vgg*_bn``).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ValueError(f"from_spec: input_shape must be (C, H, W) or (F,) with positive sizes, got {input_shape!r}")
    rng = make_rng(generator, seed)
    feature_tokens, classifier_tokens = split_spec(tokenize(spec))
    children = OrderedDict()
    if feature_tokens:
        children["features"], shape = build_layers(feature_tokens, shape, "features", rng=rng, batch_norm=batch_norm)
    if classifier_tokens:
        if len(shape) != 1:
            children["flatten"] = Flatten()
            shape = tuple(children["flatten"].output_shape(shape))
        children["classifier"], shape = build_layers(classifier_tokens, shape, "classifier", rng=rng)
    model = SpecNet(children)
    model.spec = spec
    model.input_shape = tuple(int(s) for s in input_shape)
    he_init_(model, rng, mode="fan_out")
    return model
