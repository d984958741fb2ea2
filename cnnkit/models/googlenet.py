"""GoogLeNet / Inception v1 (Szegedy et al. 2014), built per the paper's Table 1."""
from __future__ import annotations

from collections import OrderedDict

from ..nn.activation import ReLU
from ..nn.containers import Concat, Sequential
from ..nn.conv import Conv2d
from ..nn.dropout import Dropout
from ..nn.flatten import Flatten
from ..nn.linear import Linear
from ..nn.graph import Graph
from ..nn.normalization import BatchNorm2d, LocalResponseNorm
from ..nn.pooling import AdaptiveAvgPool2d, MaxPool2d
from ._common import check_num_classes, he_init_, make_rng
from .registry import register


class BasicConv2d(Sequential):
    """conv -> (BatchNorm, torchvision's variant) -> ReLU, named ``conv``, ``bn``, ``relu``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, *, batch_norm: bool = False, rng=None):
        layers = OrderedDict(conv=Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                         bias=not batch_norm, generator=rng))
        if batch_norm:
            layers["bn"] = BatchNorm2d(out_channels, eps=0.001)
        layers["relu"] = ReLU()
        super().__init__(layers)


class Inception(Concat):
    """The inception module: four parallel branches concatenated along channels.

    ``branch1``: 1x1 conv (``ch1x1``); ``branch2``: 1x1 reduce (``ch3x3red``) then 3x3 (``ch3x3``);
    ``branch3``: 1x1 reduce (``ch5x5red``) then 5x5 (``ch5x5``); ``branch4``: 3x3/1 max pool then
    1x1 projection (``pool_proj``) -- the columns of the paper's table, in order.

    Shape:
        (in_channels, H, W) -> (ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, *, batch_norm: bool = False, branch3_kernel_size: int = 5, rng=None):
        conv = dict(batch_norm=batch_norm, rng=rng)
        k = branch3_kernel_size
        super().__init__(OrderedDict(
            branch1=BasicConv2d(in_channels, ch1x1, 1, **conv),
            branch2=Sequential(BasicConv2d(in_channels, ch3x3red, 1, **conv),
                               BasicConv2d(ch3x3red, ch3x3, 3, padding=1, **conv)),
            branch3=Sequential(BasicConv2d(in_channels, ch5x5red, 1, **conv),
                               BasicConv2d(ch5x5red, ch5x5, k, padding=k // 2, **conv)),
            branch4=Sequential(MaxPool2d(3, 1, 1, ceil_mode=True),
                               BasicConv2d(in_channels, pool_proj, 1, **conv)),
        ))


class InceptionAux(Sequential):
    """Auxiliary classifier (paper section 5): avg pool to 4x4, 1x1 conv 128 + ReLU, FC 1024 + ReLU,
    dropout 70%, linear. Children ``avgpool, conv, flatten, fc1, relu, dropout, fc2`` (torchvision's
    ``conv``/``fc1``/``fc2``).

    The paper pools 5x5 with stride 3 (14x14 -> 4x4); like torchvision this uses
    AdaptiveAvgPool2d(4), the same output size at 224x224 input that also works on smaller inputs.
    """

    def __init__(self, in_channels: int, num_classes: int, *, batch_norm: bool = False, dropout: float = 0.7,
                 rng=None):
        super().__init__(OrderedDict(
            avgpool=AdaptiveAvgPool2d((4, 4)),                                   # N x C x 4 x 4
            conv=BasicConv2d(in_channels, 128, 1, batch_norm=batch_norm, rng=rng),  # N x 128 x 4 x 4
            flatten=Flatten(),                                                  # N x 2048
            fc1=Linear(2048, 1024, generator=rng),
            relu=ReLU(),
            dropout=Dropout(dropout, generator=rng),
            fc2=Linear(1024, num_classes, generator=rng),
        ))


# (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj) from Table 1.
INCEPTION_TABLE = OrderedDict(
    inception3a=(192, 64, 96, 128, 16, 32, 32),        # 28x28x256
    inception3b=(256, 128, 128, 192, 32, 96, 64),      # 28x28x480
    inception4a=(480, 192, 96, 208, 16, 48, 64),       # 14x14x512
    inception4b=(512, 160, 112, 224, 24, 64, 64),      # 14x14x512
    inception4c=(512, 128, 128, 256, 24, 64, 64),      # 14x14x512
    inception4d=(512, 112, 144, 288, 32, 64, 64),      # 14x14x528
    inception4e=(528, 256, 160, 320, 32, 128, 128),    # 14x14x832
    inception5a=(832, 256, 160, 320, 32, 128, 128),    # 7x7x832
    inception5b=(832, 384, 192, 384, 48, 128, 128),    # 7x7x1024
)

# variant -> (batch_norm, branch3 kernel size, LRN after conv1/conv3, maxpool4 kernel size)
_VARIANTS = {"paper": (False, 5, True, 3), "torchvision": (True, 3, False, 2)}


class GoogLeNet(Graph):
    """GoogLeNet as a :class:`~cnnkit.nn.graph.Graph`: the trunk in order, the auxiliary heads
    reading the outputs of inception 4a and 4d.

    In training mode with ``aux_logits=True``, ``forward`` returns ``(logits, aux2, aux1)``
    (torchvision's order) and ``backward`` takes ``(dlogits, daux2, daux1)`` (an entry may be
    ``None``); the graph adds the auxiliary gradients to the trunk's at 4a and 4d. In eval mode,
    or without the auxiliary heads, the heads do not run and it maps images to logits like any
    classifier. ``output_shape`` is the logits' shape.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.4,
                 dropout_aux: float = 0.7, *, variant: str = "paper", rng=None):
        super().__init__(input="image")
        if variant not in _VARIANTS:
            raise ValueError(f"GoogLeNet: variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
        batch_norm, branch3_kernel_size, lrn, last_pool = _VARIANTS[variant]
        conv = dict(batch_norm=batch_norm, rng=rng)
        inc = dict(batch_norm=batch_norm, branch3_kernel_size=branch3_kernel_size, rng=rng)
        self.variant = variant
        self.aux_logits = bool(aux_logits)
        layers = OrderedDict(
            conv1=BasicConv2d(3, 64, 7, stride=2, padding=3, **conv),    # N x 64 x 112 x 112
            maxpool1=MaxPool2d(3, 2, ceil_mode=True),                     # N x 64 x 56 x 56
            norm1=LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0) if lrn else None,
            conv2=BasicConv2d(64, 64, 1, **conv),                         # 3x3 reduce: N x 64 x 56 x 56
            conv3=BasicConv2d(64, 192, 3, padding=1, **conv),             # N x 192 x 56 x 56
            norm2=LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0) if lrn else None,
            maxpool2=MaxPool2d(3, 2, ceil_mode=True),                     # N x 192 x 28 x 28
            inception3a=Inception(*INCEPTION_TABLE["inception3a"], **inc),  # N x 256 x 28 x 28
            inception3b=Inception(*INCEPTION_TABLE["inception3b"], **inc),  # N x 480 x 28 x 28
            maxpool3=MaxPool2d(3, 2, ceil_mode=True),                     # N x 480 x 14 x 14
            inception4a=Inception(*INCEPTION_TABLE["inception4a"], **inc),  # N x 512 x 14 x 14
            inception4b=Inception(*INCEPTION_TABLE["inception4b"], **inc),  # N x 512 x 14 x 14
            inception4c=Inception(*INCEPTION_TABLE["inception4c"], **inc),  # N x 512 x 14 x 14
            inception4d=Inception(*INCEPTION_TABLE["inception4d"], **inc),  # N x 528 x 14 x 14
            inception4e=Inception(*INCEPTION_TABLE["inception4e"], **inc),  # N x 832 x 14 x 14
            maxpool4=MaxPool2d(last_pool, 2, ceil_mode=True),             # N x 832 x 7 x 7
            inception5a=Inception(*INCEPTION_TABLE["inception5a"], **inc),  # N x 832 x 7 x 7
            inception5b=Inception(*INCEPTION_TABLE["inception5b"], **inc),  # N x 1024 x 7 x 7
        )
        x = self.input_name
        for name, module in layers.items():
            if module is not None:
                x = self.add_node(name, module, x)
        trunk_end = x
        if self.aux_logits:  # torchvision's attribute order: the heads after 5b
            self.add_node("aux1", InceptionAux(512, num_classes, batch_norm=batch_norm, dropout=dropout_aux, rng=rng),
                          "inception4a")
            self.add_node("aux2", InceptionAux(528, num_classes, batch_norm=batch_norm, dropout=dropout_aux, rng=rng),
                          "inception4d")
        x = trunk_end
        for name, module in (("avgpool", AdaptiveAvgPool2d((1, 1))),      # N x 1024 x 1 x 1
                             ("flatten", Flatten()),                      # N x 1024
                             ("dropout", Dropout(dropout, generator=rng)),
                             ("fc", Linear(1024, num_classes, generator=rng))):
            x = self.add_node(name, module, x)

    def _outputs(self) -> list[str]:
        if self.aux_logits and self.training:
            return ["fc", "aux2", "aux1"]
        return ["fc"]

    def output_shape(self, input_shape):
        shapes = super().output_shape(input_shape)  # checks every node, the heads included
        return shapes[0] if len(self._outputs()) > 1 else shapes

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, aux_logits={self.aux_logits}"


@register()
def googlenet(num_classes: int = 1000, aux_logits: bool = False, dropout: float = 0.4, *, variant: str = "paper",
              generator=None, seed=None) -> GoogLeNet:
    """GoogLeNet (Inception v1) as in Table 1 of the paper: 6,998,552 parameters with 1000 classes
    (the table rounds its rows and sums to "6.8M"), 1.6 G multiply-adds at 224x224.

    ``conv1`` 7x7/2 -> ``maxpool1`` 3x3/2 -> LRN -> ``conv2`` (1x1, the "3x3 reduce") -> ``conv3``
    3x3 -> LRN -> ``maxpool2`` -> inception 3a, 3b (28x28x256, 28x28x480) -> ``maxpool3`` ->
    4a..4e (14x14x512 ... 14x14x832) -> ``maxpool4`` -> 5a, 5b (7x7x1024) -> ``avgpool`` ->
    ``dropout`` (40%) -> ``fc``. Max pools use ceil mode (Caffe's rule), which gives the table's
    56/28/14/7 maps. Convolutions have biases and ReLU, no BatchNorm (2014).

    ``aux_logits=True`` adds the two auxiliary classifiers on 4a and 4d (their loss is weighted
    0.3 in the paper); see :class:`GoogLeNet` for how forward/backward handle them.

    ``variant="torchvision"`` builds torchvision's GoogLeNet, whose state-dict keys and shapes
    it then matches (6,624,904 parameters without the auxiliary heads): BatchNorm (eps 0.001)
    after every conv and no conv bias, no LRN, a 2x2 ``maxpool4``, and a 3x3 conv in branch3
    where the paper has 5x5 (a known slip torchvision keeps for its checkpoints).

    Init: He (``kaiming_normal_``, fan_out) for convolutions -- a 22-layer net without
    BatchNorm does not train from torchvision's N(0, 0.01) -- PyTorch's default for linear layers.
    """
    num_classes = check_num_classes(num_classes, "googlenet")
    rng = make_rng(generator, seed)
    model = GoogLeNet(num_classes, aux_logits, dropout, variant=variant, rng=rng)
    he_init_(model, rng, mode="fan_out")
    return model
