"""Exporters of the model zoo's custom blocks: ResNet's residual blocks, the CIFAR ResNets' option-A
shortcut and GoogLeNet (whose inception modules are ``Concat`` containers, exported generically).

Each block exports its children and the node that merges them. A zoo module that is missing
(a partial install) simply registers nothing.
"""
from __future__ import annotations

import numpy as np

from .exporter import join, register_exporter

try:
    from ..models.resnet import ResidualBlock
except ImportError:  # pragma: no cover - the zoo is part of cnnkit; tolerate a partial checkout
    ResidualBlock = None

try:
    from ..models.cifar_resnet import PadShortcut
except ImportError:  # pragma: no cover
    PadShortcut = None

try:
    from ..models.googlenet import GoogLeNet
except ImportError:  # pragma: no cover
    GoogLeNet = None


def residual_block(ctx, block, x, prefix):
    """``relu(body(x) + shortcut(x))``: the body layers in order, the shortcut, Add, ReLU."""
    out = x
    for name in block._body:
        out = ctx.export(getattr(block, name), out, join(prefix, name))
    skip = x if block.downsample is None else ctx.export(block.downsample, x, join(prefix, "downsample"))
    summed = ctx.node("Add", [out, skip], join(prefix, "add"), shape=ctx.shape(out))
    return ctx.export(block.relu, summed, join(prefix, "relu"))


def pad_shortcut(ctx, m, x, prefix):
    """``x[:, :, ::s, ::s]`` (a Slice), then zero channels appended (a Pad)."""
    s = m.stride
    c, h, w = ctx.shape(x)
    big = np.iinfo(np.int64).max
    inputs = [x] + [ctx.constant(join(prefix, n), np.array(v, np.int64)) for n, v in
                    (("starts", [0, 0]), ("ends", [big, big]), ("axes", [2, 3]), ("steps", [s, s]))]
    kept = ctx.node("Slice", inputs, join(prefix, "Slice"), shape=(c, -(-h // s), -(-w // s)))
    pads = ctx.constant(join(prefix, "pads"), np.array([0, 0, 0, 0, 0, m.out_channels - m.in_channels, 0, 0],
                                                       np.int64))
    return ctx.node("Pad", [kept, pads], join(prefix, "Pad"), mode="constant")


def googlenet(ctx, model, x, prefix):
    """The inference graph: the trunk in order (the auxiliary heads are training-only)."""
    for name, module in model._trunk():
        x = ctx.export(module, x, join(prefix, name))
    return x


if ResidualBlock is not None:
    register_exporter(ResidualBlock)(residual_block)
if PadShortcut is not None:
    register_exporter(PadShortcut)(pad_shortcut)
if GoogLeNet is not None:
    register_exporter(GoogLeNet)(googlenet)
