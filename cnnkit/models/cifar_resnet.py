"""CIFAR-10 ResNets and their plain counterparts (He et al. 2015, section 4.2).

The network: a 3x3 conv with 16 filters, then three stages of ``n`` blocks of two 3x3 convs on
32x32, 16x16 and 8x8 maps with 16, 32 and 64 filters (the first block of stages 2 and 3 has
stride 2), global average pooling and a ``num_classes``-way fc: ``6n + 2`` weighted layers
(``n = 3, 5, 7, 9, 18`` for depths 20, 32, 44, 56, 110).

Shortcuts where the shape changes:

* option A (the paper's choice for CIFAR, default): the identity, subsampled with stride 2 and
  zero-padded with the extra channels; no parameters. ResNet-20/32/44/56/110 then have
  0.27M / 0.46M / 0.66M / 0.85M / 1.7M parameters, as the paper's Table 6.
* option B: a 1x1 conv projection (stride 2) + BatchNorm, as in the ImageNet nets.

``plain20/32/44/56/110`` are the same stacks without shortcuts, for the paper's Figure 6
(deeper plain nets train *worse*; the residual ones do not).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..backend import array_module
from ..functional.memory import LayerMemory
from ..nn.activation import ReLU
from ..nn.containers import Sequential
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.normalization import BatchNorm2d
from ..nn.pooling import AdaptiveAvgPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register
from .resnet import BasicBlock, conv1x1, conv3x3


class PadShortcut(Module):
    """Option A shortcut: ``x[:, :, ::stride, ::stride]`` followed by zero channels.

    Parameter-free. The extra ``out_channels - in_channels`` channels are zeros appended after
    the input's channels. Backward takes the gradient of the kept channels and scatters it back
    to the subsampled positions (the skipped positions and the zero channels get nothing).

    Shape:
        (C_in, H, W) -> (C_out, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"PadShortcut: out_channels ({out_channels}) must be >= in_channels ({in_channels})")
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"PadShortcut: stride must be a positive int, got {stride!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PadShortcut expects (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        xp = array_module(x)
        s = self.stride
        kept = x[:, :, ::s, ::s]
        y = xp.zeros((x.shape[0], self.out_channels) + kept.shape[2:], dtype=x.dtype)
        y[:, : self.in_channels] = kept
        self._save(x.shape)
        return y

    def backward(self, dy, input_grad: bool = True):
        x_shape = self._restore()
        if not input_grad:
            return None
        xp = array_module(dy)
        dx = xp.zeros(x_shape, dtype=dy.dtype)
        s = self.stride
        dx[:, :, ::s, ::s] = dy[:, : self.in_channels]
        return dx

    def output_shape(self, input_shape):
        c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(f"PadShortcut expects {self.in_channels} channels, got input shape {tuple(input_shape)}")
        s = self.stride
        return (self.out_channels, -(-h // s), -(-w // s))

    def macs(self, input_shape, output_shape) -> int:
        return 0  # a strided copy

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the input's shape is cached

    def onnx_export(self, ctx, x, prefix):
        """``x[:, :, ::s, ::s]`` (a Slice), then zero channels appended (a Pad)."""
        s = self.stride
        c, h, w = ctx.shape(x)
        big = np.iinfo(np.int64).max
        inputs = [x] + [ctx.constant(ctx.join(prefix, n), np.array(v, np.int64)) for n, v in
                        (("starts", [0, 0]), ("ends", [big, big]), ("axes", [2, 3]), ("steps", [s, s]))]
        kept = ctx.node("Slice", inputs, ctx.join(prefix, "Slice"), shape=(c, -(-h // s), -(-w // s)))
        pads = ctx.constant(ctx.join(prefix, "pads"),
                            np.array([0, 0, 0, 0, 0, self.out_channels - self.in_channels, 0, 0], np.int64))
        return ctx.node("Pad", [kept, pads], ctx.join(prefix, "Pad"), mode="constant")

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class PlainBlock(Sequential):
    """A residual block without its shortcut: ``conv1 bn1 relu1 conv2 bn2 relu`` (BasicBlock's names)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, rng=None):
        super().__init__(OrderedDict(
            conv1=conv3x3(inplanes, planes, stride, rng=rng), bn1=BatchNorm2d(planes), relu1=ReLU(),
            conv2=conv3x3(planes, planes, rng=rng), bn2=BatchNorm2d(planes), relu=ReLU(),
        ))


class CifarResNet(Sequential):
    """``conv1 bn1 relu layer1 layer2 layer3 avgpool flatten fc`` (32x32 -> 32, 16, 8 -> 1x1)."""

    def __init__(self, depth: int, num_classes: int = 10, *, residual: bool = True, shortcut: str = "A", rng=None):
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding identity) or 'B' (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        stages = OrderedDict()
        inplanes = 16
        for i, planes in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                s = stride if j == 0 else 1
                if not residual:
                    blocks.append(PlainBlock(inplanes, planes, s, rng=rng))
                else:
                    downsample = None
                    if s != 1 or inplanes != planes:
                        downsample = (PadShortcut(inplanes, planes, s) if shortcut == "A" else
                                      Sequential(conv1x1(inplanes, planes, s, rng=rng), BatchNorm2d(planes)))
                    blocks.append(BasicBlock(inplanes, planes, s, downsample, rng=rng))
                inplanes = planes
            stages[f"layer{i + 1}"] = Sequential(*blocks)       # N x 16/32/64 x 32/16/8 x 32/16/8
        super().__init__(OrderedDict(
            conv1=conv3x3(3, 16, rng=rng),                        # N x 16 x 32 x 32
            bn1=BatchNorm2d(16),
            relu=ReLU(),
            **stages,
            avgpool=AdaptiveAvgPool2d((1, 1)),                    # N x 64 x 1 x 1
            flatten=Flatten(),
            fc=Linear(64, num_classes, generator=rng),
        ))
        self.depth = depth
        # The paper initialises as in its ref. [13] (He et al. 2015, "Delving deep"): fan_in.
        he_init_(self, rng, mode="fan_in")


def _cifar(depth: int, residual: bool):
    kind = "resnet" if residual else "plain"
    name = f"{kind}{depth}"

    def constructor(num_classes: int = 10, *, shortcut: str = "A", generator=None, seed=None) -> CifarResNet:
        return CifarResNet(depth, check_num_classes(num_classes, name), residual=residual, shortcut=shortcut,
                           rng=make_rng(generator, seed))

    if not residual:
        def constructor(num_classes: int = 10, *, generator=None, seed=None) -> CifarResNet:  # noqa: F811
            return CifarResNet(depth, check_num_classes(num_classes, name), residual=False,
                               rng=make_rng(generator, seed))

    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = (
        f"CIFAR {'ResNet' if residual else 'plain net'}-{depth} (He et al. 2015, section 4.2): "
        f"n = {(depth - 2) // 6} blocks per stage"
        + (", option A (zero-padding) shortcuts by default, ``shortcut='B'`` for 1x1 projections."
           if residual else ", no shortcuts (the baseline of Figure 6).")
    )
    return register(name, input_shape=(3, 32, 32))(constructor)


resnet20 = _cifar(20, True)
resnet32 = _cifar(32, True)
resnet44 = _cifar(44, True)
resnet56 = _cifar(56, True)
resnet110 = _cifar(110, True)
plain20 = _cifar(20, False)
plain32 = _cifar(32, False)
plain44 = _cifar(44, False)
plain56 = _cifar(56, False)
plain110 = _cifar(110, False)
