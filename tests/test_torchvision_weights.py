"""torchvision state dicts (layouts written here in plain torch, random weights and BatchNorm
statistics, saved with ``torch.save``) load into the zoo unchanged and give the same logits."""
from collections import OrderedDict

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip
nn = torch.nn

import cnnkit.io
from cnnkit import models
from cnnkit.nn.activation import ReLU
from cnnkit.nn.containers import Sequential
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.dropout import Dropout
from cnnkit.nn.flatten import Flatten
from cnnkit.nn.linear import Linear
from cnnkit.nn.pooling import AdaptiveAvgPool2d, MaxPool2d


# ---- torchvision's layouts, in plain torch ----------------------------------------------------
class TVBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(block, 64, layers[0])
        self.layer2 = self._make(block, 128, layers[1], 2)
        self.layer3 = self._make(block, 256, layers[2], 2)
        self.layer4 = self._make(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make(self, block, planes, blocks, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tv_vgg16(num_classes=1000):
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, c = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(*layers), avgpool=nn.AdaptiveAvgPool2d(7), flatten=nn.Flatten(),
        classifier=nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                 nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))))
    return model


def tv_alexnet(num_classes=1000):
    return nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                               nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                               nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1),
                               nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2)),
        avgpool=nn.AdaptiveAvgPool2d(6), flatten=nn.Flatten(),
        classifier=nn.Sequential(nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(), nn.Dropout(),
                                 nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))))


def cnnkit_tv_alexnet(num_classes=1000):
    """torchvision's AlexNet layout built from cnnkit layers (the zoo's alexnet() is the notes' variant)."""
    return Sequential(OrderedDict(
        features=Sequential(Conv2d(3, 64, 11, 4, 2, check_geometry=False), ReLU(), MaxPool2d(3, 2),
                            Conv2d(64, 192, 5, padding=2), ReLU(), MaxPool2d(3, 2),
                            Conv2d(192, 384, 3, padding=1), ReLU(), Conv2d(384, 256, 3, padding=1), ReLU(),
                            Conv2d(256, 256, 3, padding=1), ReLU(), MaxPool2d(3, 2)),
        avgpool=AdaptiveAvgPool2d(6), flatten=Flatten(),
        classifier=Sequential(Dropout(), Linear(256 * 36, 4096), ReLU(), Dropout(), Linear(4096, 4096), ReLU(),
                              Linear(4096, num_classes))))


def randomize(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def round_trip(tmp_path, torch_model, cnnkit_model, x):
    path = tmp_path / "weights.pth"
    torch.save(torch_model.state_dict(), path)
    state = cnnkit.io.load_state_dict(path)
    cnnkit_model.load_state_dict(state)  # strict: every key and shape must match
    cnnkit_model.eval()
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(cnnkit_model(x), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, build", [
    ("resnet18", lambda: TVResNet(TVBasicBlock, [2, 2, 2, 2])),
    ("resnet50", lambda: TVResNet(TVBottleneck, [3, 4, 6, 3])),
])
def test_torchvision_resnets_load_unchanged(name, build, tmp_path, rng):
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    round_trip(tmp_path, randomize(build()), models.create(name), x)


def test_torchvision_vgg16_loads_unchanged(tmp_path, rng):
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)  # AdaptiveAvgPool2d(7) takes 1x1 to 7x7
    round_trip(tmp_path, randomize(tv_vgg16()), models.create("vgg16"), x)


def test_torchvision_alexnet_loads_into_its_layout_and_mismatch_is_reported(tmp_path, rng):
    tv = randomize(tv_alexnet(10))
    x = rng.standard_normal((1, 3, 63, 63)).astype(np.float32)
    round_trip(tmp_path, tv, cnnkit_tv_alexnet(10), x)
    # the zoo's alexnet() is the notes' 227x227 variant: same keys, other shapes, reported by key
    with pytest.raises(ValueError, match=r"features\.0\.weight: checkpoint has shape \(64, 3, 11, 11\), "
                                         r"model has \(96, 3, 11, 11\)"):
        models.alexnet(10).load_state_dict(cnnkit.io.load_state_dict(tmp_path / "weights.pth"))


def test_missing_key_is_reported(tmp_path):
    tv = TVResNet(TVBasicBlock, [2, 2, 2, 2])
    state = tv.state_dict()
    del state["layer1.0.bn1.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(KeyError, match=r"layer1\.0\.bn1\.running_var"):
        models.resnet18().load_state_dict(cnnkit.io.load_state_dict(tmp_path / "partial.pth"))
