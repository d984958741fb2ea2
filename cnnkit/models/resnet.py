"""ResNets for ImageNet (He et al. 2015), torchvision's layout and attribute names.

A block computes ``relu(F(x) + shortcut(x))``: a :class:`~cnnkit.nn.containers.Residual` whose
body layers and ``downsample`` shortcut are its own children (torchvision's state-dict keys,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight``). Its backward is the container's:
the ReLU's backward, the same gradient handed to both paths, the two input gradients added::

    dsum = relu.backward(dy)
    dx   = F.backward(dsum) + (downsample.backward(dsum) if downsample else dsum)
"""
from __future__ import annotations

from collections import OrderedDict

from ..nn import init
from ..nn.activation import ReLU
from ..nn.containers import Residual, Sequential
from ..nn.conv import Conv2d
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.module import Module
from ..nn.normalization import BatchNorm2d
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, *, rng=None) -> Conv2d:
    """3x3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, generator=rng)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, *, rng=None) -> Conv2d:
    """1x1 convolution without bias (a BatchNorm follows)."""
    return Conv2d(in_planes, out_planes, 1, stride=stride, bias=False, generator=rng)


def _shortcut(downsample: Module | None):
    return None if downsample is None else {"downsample": downsample}


class BasicBlock(Residual):
    """Two 3x3 convs (ResNet-18/34): ``conv1 bn1 relu1 conv2 bn2`` + shortcut, then ``relu``.

    Shape:
        (inplanes, H, W) -> (planes, ceil(H/stride), ceil(W/stride))
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Module | None = None, *, rng=None):
        super().__init__(OrderedDict(
            conv1=conv3x3(inplanes, planes, stride, rng=rng), bn1=BatchNorm2d(planes), relu1=ReLU(),
            conv2=conv3x3(planes, planes, rng=rng), bn2=BatchNorm2d(planes),
        ), _shortcut(downsample), ReLU())
        self.stride = stride


class Bottleneck(Residual):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152): ``conv1 bn1 relu1 conv2 bn2 relu2 conv3 bn3``.

    Where the stride sits: the paper (and Caffe's released models) put the stride-2 of a stage's
    first block in ``conv1`` (the 1x1); torchvision puts it in ``conv2`` (the 3x3), "ResNet v1.5",
    which sees every input pixel and is about 0.5% more accurate but costs more (ResNet-50:
    4.1 G multiply-adds instead of the paper's 3.8 G). The default follows torchvision;
    ``stride_in_1x1=True`` gives the paper's placement. Same parameters either way.

    Shape:
        (inplanes, H, W) -> (planes * 4, ceil(H/stride), ceil(W/stride))
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Module | None = None, *,
                 stride_in_1x1: bool = False, rng=None):
        super().__init__(OrderedDict(
            conv1=conv1x1(inplanes, planes, stride if stride_in_1x1 else 1, rng=rng), bn1=BatchNorm2d(planes),
            relu1=ReLU(),
            conv2=conv3x3(planes, planes, 1 if stride_in_1x1 else stride, rng=rng), bn2=BatchNorm2d(planes),
            relu2=ReLU(),
            conv3=conv1x1(planes, planes * self.expansion, rng=rng), bn3=BatchNorm2d(planes * self.expansion),
        ), _shortcut(downsample), ReLU())
        self.stride = stride


class ResNet(Sequential):
    """``conv1 bn1 relu maxpool layer1..layer4 avgpool flatten fc``: torchvision's names, so its
    ``resnet*`` state dicts load 1:1 (``flatten`` has no parameters).

    Shape (224x224 input): 112x112x64 after ``conv1`` (7x7/2), 56x56 after ``maxpool`` (3x3/2),
    then 56, 28, 14, 7 for ``layer1..4`` (64, 128, 256, 512 planes times ``block.expansion``),
    1x1 after ``avgpool``.
    """

    def __init__(self, block, layers, num_classes: int = 1000, *, zero_init_residual: bool = False,
                 stride_in_1x1: bool = False, rng=None):
        self.inplanes = 64
        self._block_kwargs = {"stride_in_1x1": stride_in_1x1} if block is Bottleneck else {}
        stem = OrderedDict(
            conv1=Conv2d(3, 64, 7, stride=2, padding=3, bias=False, generator=rng),   # N x 64 x 112 x 112
            bn1=BatchNorm2d(64),
            relu=ReLU(),
            maxpool=MaxPool2d(3, 2, padding=1),                                      # N x 64 x 56 x 56
        )
        stages = OrderedDict(
            layer1=self._make_layer(block, 64, layers[0], rng=rng),                  # N x 64e x 56 x 56
            layer2=self._make_layer(block, 128, layers[1], stride=2, rng=rng),       # N x 128e x 28 x 28
            layer3=self._make_layer(block, 256, layers[2], stride=2, rng=rng),       # N x 256e x 14 x 14
            layer4=self._make_layer(block, 512, layers[3], stride=2, rng=rng),       # N x 512e x 7 x 7
        )
        head = OrderedDict(
            avgpool=AdaptiveAvgPool2d((1, 1)),                                       # N x 512e x 1 x 1
            flatten=Flatten(),
            fc=Linear(512 * block.expansion, num_classes, generator=rng),
        )
        super().__init__(OrderedDict(**stem, **stages, **head))
        del self._block_kwargs
        he_init_(self, rng, mode="fan_out")
        if zero_init_residual:
            # Each block then starts as the identity (Goyal et al. 2017).
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, *, rng=None) -> Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = Sequential(conv1x1(self.inplanes, planes * block.expansion, stride, rng=rng),
                                    BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, rng=rng, **self._block_kwargs)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, rng=rng, **self._block_kwargs))
        return Sequential(*layers)


def _resnet(name: str, block, layers, num_classes, generator, seed, **kwargs) -> ResNet:
    num_classes = check_num_classes(num_classes, name)
    return ResNet(block, layers, num_classes, rng=make_rng(generator, seed), **kwargs)


@register()
def resnet18(num_classes: int = 1000, *, zero_init_residual: bool = False, generator=None, seed=None) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]; 11,689,512 parameters, 1.8 G multiply-adds at 224x224."""
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], num_classes, generator, seed,
                   zero_init_residual=zero_init_residual)


@register()
def resnet34(num_classes: int = 1000, *, zero_init_residual: bool = False, generator=None, seed=None) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]; 21,797,672 parameters, 3.6 G multiply-adds."""
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], num_classes, generator, seed,
                   zero_init_residual=zero_init_residual)


@register()
def resnet50(num_classes: int = 1000, *, stride_in_1x1: bool = False, zero_init_residual: bool = False,
             generator=None, seed=None) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]; 25,557,032 parameters; 4.1 G multiply-adds with
    torchvision's stride placement (default), 3.8 G (the paper's figure) with ``stride_in_1x1=True``."""
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], num_classes, generator, seed,
                   stride_in_1x1=stride_in_1x1, zero_init_residual=zero_init_residual)


@register()
def resnet101(num_classes: int = 1000, *, stride_in_1x1: bool = False, zero_init_residual: bool = False,
              generator=None, seed=None) -> ResNet:
    """ResNet-101: Bottlenecks [3, 4, 23, 3]; 44,549,160 parameters; 7.8 G / 7.6 G (paper) multiply-adds."""
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], num_classes, generator, seed,
                   stride_in_1x1=stride_in_1x1, zero_init_residual=zero_init_residual)


@register()
def resnet152(num_classes: int = 1000, *, stride_in_1x1: bool = False, zero_init_residual: bool = False,
              generator=None, seed=None) -> ResNet:
    """ResNet-152: Bottlenecks [3, 8, 36, 3]; 60,192,808 parameters; 11.5 G / 11.3 G (paper) multiply-adds."""
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], num_classes, generator, seed,
                   stride_in_1x1=stride_in_1x1, zero_init_residual=zero_init_residual)
