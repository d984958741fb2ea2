"""The model zoo: classic architectures by name (``list_models()``, ``create(name, **kw)``).

Every constructor takes ``num_classes`` and ``generator``/``seed`` (reproducible init) and uses
torchvision's attribute names, so torchvision checkpoints map key for key where the
architecture is the same (VGG, ResNet, GoogLeNet with ``variant="torchvision"``).
"""
from .registry import create, default_input_shape, list_models, register
from . import small  # noqa: F401  (registers digitnet)
from .spec import from_spec
from .lenet import LeNet5, lenet5
from .alexnet import AlexNet, alexnet, zfnet
from .vgg import VGG, vgg, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from .googlenet import GoogLeNet, Inception, InceptionAux, googlenet
from .resnet import BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3, resnet18, resnet34, resnet50, resnet101, resnet152
from .cifar_resnet import (CifarResNet, PadShortcut, PlainBlock, plain20, plain32, plain44, plain56, plain110,
                           resnet20, resnet32, resnet44, resnet56, resnet110)
from .preact_resnet import (PreActProjectionUnit, PreActResNet, PreActUnit, preact_resnet110, preact_resnet152,
                            preact_resnet164, preact_resnet200, preact_resnet1001)
from .fastnet import ConvGroup, FastNet, fastnet, fastnet_learned, whitening_filters

__all__ = [
    "create", "list_models", "register", "default_input_shape", "from_spec",
    "lenet5", "alexnet", "zfnet",
    "vgg", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "plain20", "plain32", "plain44", "plain56", "plain110",
    "preact_resnet110", "preact_resnet164", "preact_resnet1001", "preact_resnet152", "preact_resnet200",
    "fastnet", "fastnet_learned",
    "LeNet5", "AlexNet", "VGG", "GoogLeNet", "Inception", "InceptionAux", "ResNet", "BasicBlock", "Bottleneck",
    "CifarResNet", "PadShortcut", "PlainBlock", "conv1x1", "conv3x3",
    "PreActResNet", "PreActUnit", "PreActProjectionUnit",
    "FastNet", "ConvGroup", "whitening_filters",
]
