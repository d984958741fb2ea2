"""Pre-activation ResNets (He, Zhang, Ren and Sun 2016, "Identity Mappings in Deep Residual Networks",
arXiv:1603.05027): BatchNorm and ReLU come *before* each convolution and nothing follows the
addition, so the shortcut path from any unit to any later one is a clean identity,
``x_L = x_l + sum_{i=l}^{L-1} F(x_i)``, and ``dE/dx_l = dE/dx_L (1 + d/dx_l sum F)``: the gradient of
the loss reaches every unit directly, whatever the depth (the paper's eqs. 4-5).

=====================  ==========================  ==========  ======================================
constructor            units                       parameters  the paper's error (Tables 3-5)
=====================  ==========================  ==========  ======================================
``preact_resnet110``   basic, 3 x 18               1,727,962   CIFAR-10 6.37%
``preact_resnet164``   bottleneck, 3 x 18          1,703,258   CIFAR-10 5.46%
``preact_resnet1001``  bottleneck, 3 x 111         10,327,706  CIFAR-10 4.92% (4.62% mini-batch 64)
``preact_resnet152``   bottleneck, [3, 8, 36, 3]   60,185,128  ImageNet 21.1% top-1 (320x320 crop)
``preact_resnet200``   bottleneck, [3, 24, 36, 3]  64,666,152  ImageNet 20.7% top-1 (320x320 crop)
=====================  ==========================  ==========  ======================================

How a unit is built from the shared containers
----------------------------------------------
Most units keep their input on the shortcut and pre-activate the residual branch only::

    PreActUnit = Residual({bn1, relu1, conv1, bn2, relu2, conv2}, shortcut=None)

Where the shortcut projects (a 1x1 convolution when the width or the stride changes) the paper
pre-activates the projection too (its appendix), with the *same* BN-ReLU as the residual branch:
the authors' released code (github.com/KaimingHe/resnet-1k-layers) applies one "common BN, ReLU"
before splitting into the two paths::

    PreActProjectionUnit = Residual({conv1, bn2, relu2, conv2}, {downsample: conv1x1},
                                    before={bn1, relu1})

The two ends of the network follow the appendix too: the first unit's activation sits right after
the stem's conv1, before the split (the stem's ``bn1, relu``), so its branch starts with ``conv1``
and its shortcut sees the activated stem output; the last unit gets one extra activation right after
its addition (``bn_final, relu_final``), before the pooling.

Bottleneck units put [1x1, w; 3x3, w; 1x1, 4w] in place of [3x3, w; 3x3, w] (``bn3, relu3, conv3``
added). The stride of a stage's first bottleneck unit sits in its first 1x1 convolution, as in the
paper and its released code (``stride_in_1x1=False`` moves it to the 3x3, as fb.resnet.torch and
torchvision's "v1.5" do: same parameters, more multiply-adds). ``preact_resnet110`` keeps the
original CIFAR ResNets' parameter-free option-A shortcuts (zero-padded identity, on the raw input)
by default; ``shortcut="B"`` gives pre-activated 1x1 projections. On ImageNet the stem's ``bn1,
relu`` come before the max pooling, as in fb.resnet.torch's pre-activation nets; implementations
derived from MXNet's (gluon-cv, imgclsmob) give ``layer1.0`` a second BN-ReLU after the pooling,
128 parameters more (60,185,256 for ResNet-152).

State-dict keys
---------------
torchvision's names, as in the rest of the zoo: the stem's ``conv1``, ``bn1``, the stages
``layer1``.., ``fc``; inside a unit the layers are the ``Residual``'s own children (the containers'
dict form), named ``bn1, conv1, bn2, conv2 [, bn3, conv3]`` in the order they run, and the
shortcut is ``downsample`` (a bare 1x1 convolution: its BatchNorm is the shared one before it)::

    conv1.weight                               stem convolution (3x3 CIFAR, 7x7/2 ImageNet)
    bn1.{weight,bias,running_mean,...}         stem BN: the first unit's pre-activation
    layer1.0.conv1.weight                      first unit: no BN of its own
    layer1.0.downsample.weight                 ... its projection, where it has one (bottleneck)
    layer2.0.bn1.weight                        a projection unit's shared pre-activation (``before``)
    layer2.0.conv1.weight                      ... its residual branch (conv1, bn2, conv2, bn3, conv3)
    layer2.0.downsample.weight                 ... its 1x1 projection
    layer2.1.bn1.weight                        every other unit: bn1, conv1, bn2, conv2 [, bn3, conv3]
    bn_final.weight                            the activation after the last addition
    fc.weight, fc.bias

The shared BN-ReLU of a projection unit is the ``Residual``'s ``before`` chain, so every unit has
flat names, those of the common PyTorch pre-activation ResNets (which call ``downsample``
``shortcut``).

Initialisation as in the authors' code: convolutions ``N(0, 2 / (k*k*out_channels))`` (He et al.
2015, fan-out), BatchNorm weight 1 and bias 0, the classifier's bias 0.
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
from .cifar_resnet import PadShortcut
from .registry import register
from .resnet import conv1x1, conv3x3

EXPANSION = 4  # a bottleneck unit's output width over its inner width


class PreActUnit(Residual):
    """``x + F(x)``: the shortcut sees the unit's input (the identity, an option-A zero-padded
    identity, or -- in the first unit only -- a projection of the already activated stem output).

    ``branch``: F's layers by name (see :func:`residual_branch`); ``downsample``: the shortcut
    module, ``None`` for the identity.

    Shape:
        (C_in, H, W) -> (C_out, ceil(H / stride), ceil(W / stride)); branch and shortcut agree.
    """

    def __init__(self, branch: OrderedDict, downsample: Module | None = None):
        super().__init__(branch, None if downsample is None else {"downsample": downsample})


class PreActProjectionUnit(Residual):
    """``bn1 -> relu1``, then ``F + projection``: one BN-ReLU shared by the residual branch and the
    1x1 projection (the ``Residual``'s ``before`` chain).

    Shape:
        (C_in, H, W) -> (C_out, ceil(H / stride), ceil(W / stride))
    """

    def __init__(self, in_channels: int, branch: OrderedDict, projection: Module):
        super().__init__(branch, {"downsample": projection},
                         before=OrderedDict(bn1=BatchNorm2d(in_channels), relu1=ReLU()))


def residual_branch(inplanes: int, planes: int, stride: int = 1, *, bottleneck: bool, preactivate: bool,
                    stride_in_1x1: bool = True, rng=None) -> OrderedDict:
    """The residual function F by layer name: ``[bn1 relu1] conv1 bn2 relu2 conv2 [bn3 relu3 conv3]``.

    ``preactivate=False`` leaves out ``bn1 relu1`` (their input is already activated).

    Shape:
        (inplanes, H, W) -> (planes * (4 if bottleneck else 1), ceil(H / stride), ceil(W / stride))
    """
    layers = OrderedDict()
    if preactivate:
        layers.update(bn1=BatchNorm2d(inplanes), relu1=ReLU())
    if bottleneck:
        stride1, stride2 = (stride, 1) if stride_in_1x1 else (1, stride)
        layers.update(
            conv1=conv1x1(inplanes, planes, stride1, rng=rng), bn2=BatchNorm2d(planes), relu2=ReLU(),
            conv2=conv3x3(planes, planes, stride2, rng=rng), bn3=BatchNorm2d(planes), relu3=ReLU(),
            conv3=conv1x1(planes, planes * EXPANSION, rng=rng),
        )
    else:
        layers.update(
            conv1=conv3x3(inplanes, planes, stride, rng=rng), bn2=BatchNorm2d(planes), relu2=ReLU(),
            conv2=conv3x3(planes, planes, rng=rng),
        )
    return layers


def preact_unit(inplanes: int, planes: int, stride: int = 1, *, bottleneck: bool = False, shortcut: str = "B",
                first: bool = False, stride_in_1x1: bool = True, rng=None) -> Module:
    """One pre-activation residual unit, composed from the containers (see the module docstring).

    ``first``: the unit right after the stem, whose input is already activated (no ``bn1 relu1``).
    ``shortcut``: where the shape changes, ``"B"`` projects with a pre-activated 1x1 convolution,
    ``"A"`` zero-pads the subsampled raw input (parameter-free).
    """
    if shortcut not in ("A", "B"):
        raise ValueError(f"shortcut must be 'A' (zero-padding identity) or 'B' (1x1 projection), got {shortcut!r}")
    out = planes * (EXPANSION if bottleneck else 1)
    same_shape = stride == 1 and inplanes == out

    def branch(preactivate: bool) -> OrderedDict:
        return residual_branch(inplanes, planes, stride, bottleneck=bottleneck, preactivate=preactivate,
                               stride_in_1x1=stride_in_1x1, rng=rng)

    if same_shape:
        return PreActUnit(branch(preactivate=not first))
    if shortcut == "A":
        return PreActUnit(branch(preactivate=not first), PadShortcut(inplanes, out, stride))
    projection = conv1x1(inplanes, out, stride, rng=rng)
    if first:
        return PreActUnit(branch(preactivate=False), projection)
    return PreActProjectionUnit(inplanes, branch(preactivate=False), projection)


class PreActResNet(Sequential):
    """``conv1 bn1 relu [maxpool] layer1..layerS bn_final relu_final avgpool flatten fc``.

    ``layers``: units per stage. CIFAR stem (``imagenet=False``): a 3x3 conv with 16 filters, stages
    of width 16, 32, 64 on 32x32, 16x16, 8x8 maps. ImageNet stem: 7x7/2 conv with 64 filters and
    3x3/2 max pooling, stages of width 64, 128, 256, 512 on 56, 28, 14, 7 (at 224x224). Bottleneck
    stages output 4x their width.
    """

    def __init__(self, layers, num_classes: int = 10, *, bottleneck: bool, imagenet: bool = False,
                 shortcut: str = "B", stride_in_1x1: bool = True, rng=None):
        if not layers or any(not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"PreActResNet: layers must be a non-empty list of positive ints, got {layers!r}")
        base = 64 if imagenet else 16
        if imagenet:
            stem = OrderedDict(
                conv1=Conv2d(3, base, 7, stride=2, padding=3, bias=False, generator=rng),  # N x 64 x 112 x 112
                bn1=BatchNorm2d(base),                      # the first unit's pre-activation
                relu=ReLU(),
                maxpool=MaxPool2d(3, 2, padding=1),                                     # N x 64 x 56 x 56
            )
        else:
            stem = OrderedDict(
                conv1=conv3x3(3, base, rng=rng),                                          # N x 16 x 32 x 32
                bn1=BatchNorm2d(base),                      # the first unit's pre-activation
                relu=ReLU(),
            )
        stages = OrderedDict()
        inplanes = base
        for i, count in enumerate(layers):
            planes = base * 2 ** i
            units = []
            for j in range(count):
                units.append(preact_unit(inplanes, planes, 2 if i > 0 and j == 0 else 1, bottleneck=bottleneck,
                                         shortcut=shortcut, first=i == 0 and j == 0,
                                         stride_in_1x1=stride_in_1x1, rng=rng))
                inplanes = planes * (EXPANSION if bottleneck else 1)
            # CIFAR: N x (16, 32, 64) * e x 32/16/8 x 32/16/8; ImageNet: N x (64..512) * e x 56/28/14/7
            stages[f"layer{i + 1}"] = Sequential(*units)
        head = OrderedDict(
            bn_final=BatchNorm2d(inplanes),                 # the extra activation after the last addition
            relu_final=ReLU(),
            avgpool=AdaptiveAvgPool2d((1, 1)),                                            # N x C x 1 x 1
            flatten=Flatten(),
            fc=Linear(inplanes, num_classes, generator=rng),
        )
        super().__init__(OrderedDict(**stem, **stages, **head))
        self.depth = (3 if bottleneck else 2) * sum(layers) + 2
        # The authors' code (fb.resnet.torch's ConvInit): N(0, 2 / (k*k*out_channels)); fc bias 0.
        he_init_(self, rng, mode="fan_out")
        init.zeros_(self.fc.bias)


def _cifar_units(depth: int, bottleneck: bool) -> list[int]:
    per_unit = 9 if bottleneck else 6
    if (depth - 2) % per_unit != 0 or depth < per_unit + 2:
        raise ValueError(f"CIFAR pre-activation ResNet depth must be {per_unit}n + 2, got {depth}")
    return [(depth - 2) // per_unit] * 3


def _build(name: str, layers, num_classes, generator, seed, **kwargs) -> PreActResNet:
    num_classes = check_num_classes(num_classes, name)
    return PreActResNet(layers, num_classes, rng=make_rng(generator, seed), **kwargs)


@register(input_shape=(3, 32, 32))
def preact_resnet110(num_classes: int = 10, *, shortcut: str = "A", generator=None, seed=None) -> PreActResNet:
    """Pre-activation ResNet-110 for CIFAR: 3 stages of 18 basic units (16, 32, 64 filters);
    1,727,962 parameters (1.7M, the paper's Table 4) and 253M multiply-adds at 32x32.

    CIFAR-10 test error in the paper: **6.37%** (Table 3; 6.61% with the original units).
    ``shortcut="A"`` (default): zero-padded identity shortcuts as the original CIFAR ResNets;
    ``"B"``: pre-activated 1x1 projections (+2,560 parameters).
    """
    return _build("preact_resnet110", _cifar_units(110, False), num_classes, generator, seed,
                  bottleneck=False, shortcut=shortcut)


@register(input_shape=(3, 32, 32))
def preact_resnet164(num_classes: int = 10, *, stride_in_1x1: bool = True, generator=None,
                     seed=None) -> PreActResNet:
    """Pre-activation ResNet-164 for CIFAR: 3 stages of 18 bottleneck units [1x1, w; 3x3, w; 1x1, 4w]
    with w = 16, 32, 64; 1,703,258 parameters (1.7M, the paper's Table 4), 245M multiply-adds at 32x32.

    CIFAR-10 test error in the paper: **5.46%** (Table 3; 5.93% with the original units);
    CIFAR-100: 24.33%.
    """
    return _build("preact_resnet164", _cifar_units(164, True), num_classes, generator, seed,
                  bottleneck=True, stride_in_1x1=stride_in_1x1)


@register(input_shape=(3, 32, 32))
def preact_resnet1001(num_classes: int = 10, *, stride_in_1x1: bool = True, generator=None,
                      seed=None) -> PreActResNet:
    """Pre-activation ResNet-1001 for CIFAR: 3 stages of 111 bottleneck units (w = 16, 32, 64);
    10,327,706 parameters (10.2M, the paper's Table 4), 1.49G multiply-adds at 32x32.

    CIFAR-10 test error in the paper: **4.92%** with mini-batch 128 (Table 3; 7.61% with the
    original units), 4.62% with mini-batch 64 (Table 4, the released code); CIFAR-100: 22.71%.
    """
    return _build("preact_resnet1001", _cifar_units(1001, True), num_classes, generator, seed,
                  bottleneck=True, stride_in_1x1=stride_in_1x1)


@register()
def preact_resnet152(num_classes: int = 1000, *, stride_in_1x1: bool = True, generator=None,
                     seed=None) -> PreActResNet:
    """Pre-activation ResNet-152 for ImageNet: bottleneck units [3, 8, 36, 3]; 60,185,128 parameters;
    11.3G multiply-adds at 224x224 with the paper's stride placement (11.5G with ``stride_in_1x1=False``).

    ImageNet single-crop (320x320) error in the paper: 21.1% top-1, 5.5% top-5 (Table 5; 21.3% / 5.5%
    with the original units).
    """
    return _build("preact_resnet152", [3, 8, 36, 3], num_classes, generator, seed,
                  bottleneck=True, imagenet=True, stride_in_1x1=stride_in_1x1)


@register()
def preact_resnet200(num_classes: int = 1000, *, stride_in_1x1: bool = True, generator=None,
                     seed=None) -> PreActResNet:
    """Pre-activation ResNet-200 for ImageNet: bottleneck units [3, 24, 36, 3]; 64,666,152 parameters;
    14.8G multiply-adds at 224x224 with the paper's stride placement (15.0G with ``stride_in_1x1=False``).

    ImageNet single-crop (320x320) error in the paper: 20.7% top-1, 5.3% top-5 (Table 5; 21.8% / 6.0%
    with the original units; 20.1% / 4.8% with scale and aspect-ratio augmentation).
    """
    return _build("preact_resnet200", [3, 24, 36, 3], num_classes, generator, seed,
                  bottleneck=True, imagenet=True, stride_in_1x1=stride_in_1x1)
