"""The PyTorch reference networks of the speed benchmark, written in plain torch (no torchvision).

Module names follow cnnkit's model zoo (torchvision's names), so a cnnkit ``state_dict`` loads into
these 1:1 and both frameworks run the very same weights: ``load_cnnkit_weights`` does that, and the
benchmark checks that the two forward passes agree before timing them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class LeNet5(nn.Module):
    """conv5-6 (pad 2) relu maxpool2, conv5-16 relu maxpool2, fc 400-120-84-10 (cnnkit.models.lenet5)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, padding: int = 2):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


class PadShortcut(nn.Module):
    """CIFAR option A shortcut: subsample by ``stride`` and append zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x):
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(y + skip)


class CifarResNet(nn.Module):
    """ResNet-20/32/... for 32x32 inputs, option A shortcuts (cnnkit.models.resnet20)."""

    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        inplanes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                down = PadShortcut(inplanes, planes, stride) if (stride != 1 or inplanes != planes) else None
                blocks.append(BasicBlock(inplanes, planes, stride, down))
                inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (7x7/2 stem, 3x3/2 max pool, 4 stages of 2 BasicBlocks)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                blocks.append(BasicBlock(inplanes, planes, stride, down))
                inplanes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


TORCH_MODELS = {"lenet5": LeNet5, "resnet20": CifarResNet, "resnet18": ResNet18}


def load_cnnkit_weights(torch_model: nn.Module, cnnkit_model) -> list[str]:
    """Copy every parameter and buffer of ``cnnkit_model`` into ``torch_model`` by key.

    Returns the torch keys that found no cnnkit value (should be empty); raises on a shape mismatch.
    """
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in cnnkit_model.state_dict().items()}
    own = torch_model.state_dict()
    missing = [k for k in own if k not in state]
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            if own[k].numel() != v.numel():
                raise ValueError(f"{k}: cnnkit {tuple(v.shape)} vs torch {tuple(own[k].shape)}")
            state[k] = v.reshape(own[k].shape)  # e.g. num_batches_tracked: (1,) vs ()
    torch_model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k in own}, strict=False)
    return missing
