"""The model zoo: published parameter counts, per-layer shapes, torchvision key names, a
forward+backward smoke test per model, and the ResNet/Inception blocks against plain torch."""
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
import cnnkit.models as M
from cnnkit.models.cifar_resnet import PadShortcut
from cnnkit.models.googlenet import Inception
from cnnkit.models.resnet import BasicBlock, Bottleneck, conv1x1
from cnnkit.nn.containers import Sequential
from cnnkit.nn.normalization import BatchNorm2d
from cnnkit.summary import ShapeError, summary


def n_params(model) -> int:
    return sum(p.size for p in model.parameters())


PUBLISHED = [
    ("lenet5", {}, 61_706),
    ("alexnet", {}, 62_378_344),
    ("zfnet", {}, 62_357_608),
    ("vgg11", {}, 132_863_336),
    ("vgg13", {}, 133_047_848),
    ("vgg16", {}, 138_357_544),
    ("vgg19", {}, 143_667_240),
    ("vgg16_bn", {}, 138_365_992),            # torchvision's vgg16_bn
    ("googlenet", {}, 6_998_552),             # the paper's table ("6.8M" from rounded rows)
    ("googlenet", {"variant": "torchvision"}, 6_624_904),
    ("googlenet", {"variant": "torchvision", "aux_logits": True}, 13_004_888),
    ("resnet18", {}, 11_689_512),
    ("resnet34", {}, 21_797_672),
    ("resnet50", {}, 25_557_032),
    ("resnet101", {}, 44_549_160),
    ("resnet152", {}, 60_192_808),
    ("resnet50", {"stride_in_1x1": True}, 25_557_032),
]


@pytest.mark.parametrize("name, kwargs, expected", PUBLISHED)
def test_published_parameter_counts(cheap_weights, name, kwargs, expected):
    assert n_params(M.create(name, **kwargs)) == expected


@pytest.mark.parametrize("config, expected", [("A", 132_863_336), ("A-LRN", 132_863_336), ("B", 133_047_848),
                                              ("C", 133_638_952), ("D", 138_357_544), ("E", 143_667_240)])
def test_vgg_configurations(cheap_weights, config, expected):
    model = M.vgg(config)
    assert n_params(model) == expected
    assert model.output_shape((3, 224, 224)) == (1000,)


def test_vgg_c_has_the_papers_1x1_convolutions(cheap_weights):
    kernels = [m.kernel_size for m in M.vgg("C").features if isinstance(m, cnnkit.nn.conv.Conv2d)]
    assert kernels.count((1, 1)) == 3 and kernels[6] == (1, 1)


@pytest.mark.parametrize("name, expected, published", [
    ("resnet20", 269_722, 0.27e6), ("resnet32", 464_154, 0.46e6), ("resnet44", 658_586, 0.66e6),
    ("resnet56", 853_018, 0.85e6), ("resnet110", 1_727_962, 1.7e6),
])
def test_cifar_resnet_counts(name, expected, published):
    model = M.create(name)
    assert n_params(model) == expected
    assert round(expected / published, 1) == 1.0 or abs(expected - published) / published < 0.02
    plain = M.create(name.replace("resnet", "plain"))
    assert n_params(plain) == expected  # option A shortcuts have no parameters
    assert model.output_shape((3, 32, 32)) == (10,)


def test_cifar_option_b_adds_projections():
    # Two stage transitions, each a 1x1 conv (in*out weights) and a BatchNorm (2*out).
    assert n_params(M.resnet20(shortcut="B")) == 269_722 + 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_lenet5_shapes_and_padding():
    model = M.lenet5()
    s = summary(model, (1, 28, 28))
    shapes = {r["name"]: r["output_shape"] for r in s.rows}
    assert shapes["features.0"] == (6, 28, 28) and shapes["features.2"] == (6, 14, 14)
    assert shapes["features.3"] == (16, 10, 10) and shapes["features.5"] == (16, 5, 5)
    assert shapes["classifier.4"] == (10,)
    assert M.lenet5(padding=0).output_shape((1, 32, 32)) == (10,)


ALEXNET_227 = {  # the notes' layer by layer, as (C, H, W)
    "features.0": (96, 55, 55), "features.2": (96, 27, 27), "features.3": (96, 27, 27),
    "features.4": (256, 27, 27), "features.6": (256, 13, 13), "features.7": (256, 13, 13),
    "features.8": (384, 13, 13), "features.10": (384, 13, 13), "features.12": (256, 13, 13),
    "features.14": (256, 6, 6), "flatten": (9216,), "classifier.1": (4096,), "classifier.4": (4096,),
    "classifier.6": (1000,),
}


def test_alexnet_shapes_at_227_and_the_error_at_224(cheap_weights):
    model = M.alexnet()
    s = summary(model, (3, 227, 227))
    shapes = {r["name"]: r["output_shape"] for r in s.rows}
    for name, shape in ALEXNET_227.items():
        assert shapes[name] == shape, name
    with pytest.raises(ShapeError, match=r"features\.0 \(Conv2d\).*224.*11"):
        summary(model, (3, 224, 224))
    zf = {r["name"]: r["output_shape"] for r in summary(M.zfnet(), (3, 224, 224)).rows}
    assert zf["features.0"] == (96, 110, 110) and zf["features.2"] == (96, 55, 55)
    assert zf["features.4"] == (256, 26, 26) and zf["features.6"] == (256, 13, 13) and zf["features.14"] == (256, 6, 6)


# The notes' VGG-16 table: (layer, output (H, W, C) as printed there, weights without biases).
VGG16_TABLE = [
    ("CONV3-64", (224, 224, 64), 1_728), ("CONV3-64", (224, 224, 64), 36_864), ("POOL2", (112, 112, 64), 0),
    ("CONV3-128", (112, 112, 128), 73_728), ("CONV3-128", (112, 112, 128), 147_456), ("POOL2", (56, 56, 128), 0),
    ("CONV3-256", (56, 56, 256), 294_912), ("CONV3-256", (56, 56, 256), 589_824),
    ("CONV3-256", (56, 56, 256), 589_824), ("POOL2", (28, 28, 256), 0),
    ("CONV3-512", (28, 28, 512), 1_179_648), ("CONV3-512", (28, 28, 512), 2_359_296),
    ("CONV3-512", (28, 28, 512), 2_359_296), ("POOL2", (14, 14, 512), 0),
    ("CONV3-512", (14, 14, 512), 2_359_296), ("CONV3-512", (14, 14, 512), 2_359_296),
    ("CONV3-512", (14, 14, 512), 2_359_296), ("POOL2", (7, 7, 512), 0),
    ("FC", (1, 1, 4096), 102_760_448), ("FC", (1, 1, 4096), 16_777_216), ("FC", (1, 1, 1000), 4_096_000),
]


def test_vgg16_reproduces_the_notes_table_row_by_row(cheap_weights):
    model = M.vgg16()
    s = summary(model, (3, 224, 224))
    modules = dict(model.named_modules())
    rows = [r for r in s.rows if r["type"] in ("Conv2d", "MaxPool2d", "Linear")]
    assert len(rows) == len(VGG16_TABLE)
    for row, (layer, (h, w, c), weights) in zip(rows, VGG16_TABLE):
        expected_shape = (c, h, w) if layer != "FC" else (c,)
        assert row["output_shape"] == expected_shape, (row["name"], layer)
        module = modules[row["name"]]
        assert (module.weight.size if weights else row["params"]) == weights, row["name"]
    assert s.total_params == 138_357_544  # "TOTAL params: 138M parameters"


def test_state_dict_keys_are_torchvisions(cheap_weights):
    keys = list(M.vgg16().state_dict())
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert keys == [f"features.{i}.{p}" for i in convs for p in ("weight", "bias")] + \
        [f"classifier.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias")]
    r18 = M.resnet18().state_dict()
    assert len(r18) == 122
    assert list(r18)[:6] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                             "bn1.num_batches_tracked"]
    assert r18["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert "layer2.0.downsample.1.running_var" in r18 and r18["fc.weight"].shape == (1000, 512)
    r50 = M.resnet50().state_dict()
    assert len(r50) == 320 and r50["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    g = M.googlenet(variant="torchvision", aux_logits=True).state_dict()
    assert g["inception3a.branch3.1.conv.weight"].shape == (32, 16, 3, 3)  # torchvision's 3x3
    assert g["inception5b.branch4.1.bn.running_var"].shape == (128,)
    assert g["aux1.fc1.weight"].shape == (1024, 2048) and g["aux2.conv.conv.weight"].shape == (128, 528, 1, 1)
    assert M.googlenet().state_dict()["inception3a.branch3.1.conv.weight"].shape == (32, 16, 5, 5)


def test_googlenet_follows_the_papers_table(cheap_weights):
    s = summary(M.googlenet(aux_logits=True), (3, 224, 224))
    shapes = {r["name"]: r["output_shape"] for r in s.rows}
    expected = {"conv1": (64, 112, 112), "maxpool1": (64, 56, 56), "conv3": (192, 56, 56), "maxpool2": (192, 28, 28),
                "inception3a": (256, 28, 28), "inception3b": (480, 28, 28), "maxpool3": (480, 14, 14),
                "inception4a": (512, 14, 14), "inception4b": (512, 14, 14), "inception4c": (512, 14, 14),
                "inception4d": (528, 14, 14), "inception4e": (832, 14, 14), "maxpool4": (832, 7, 7),
                "inception5a": (832, 7, 7), "inception5b": (1024, 7, 7), "avgpool": (1024, 1, 1),
                "fc": (1000,), "aux1.fc2": (1000,), "aux2.conv": (128, 4, 4)}
    for name, shape in expected.items():
        assert shapes[name] == shape, name
    # Table 1's "ops" column (multiply-adds). Its 5a entry (54M) is 6% above what its own filter
    # counts give (51M); its "params" column does not follow from them at all (3a: 159K vs 164K).
    ops = {"conv1": 118, "inception3a": 128, "inception3b": 304, "inception4a": 73, "inception4b": 88,
           "inception4c": 100, "inception4d": 119, "inception4e": 170, "inception5a": 54, "inception5b": 71,
           "fc": 1}
    macs = {r["name"]: r["macs"] for r in s.rows}
    for name, millions in ops.items():
        assert abs(macs[name] / 1e6 - millions) / millions < 0.07, name
    assert abs((macs["conv2"] + macs["conv3"]) / 1e6 - 360) < 2
    trunk = s.total_macs - macs["aux1"] - macs["aux2"]
    assert abs(trunk - 1.5e9) / 1.5e9 < 0.06  # the paper: "1.5 billion multiply-adds" at inference


def test_registry_create_num_classes_and_seed():
    names = M.list_models()
    for name in ("lenet5", "alexnet", "zfnet", "vgg", "vgg16", "googlenet", "resnet18", "resnet152", "resnet20",
                 "resnet110", "plain56", "spec"):
        assert name in names
    model = M.create("resnet20", num_classes=7, seed=3)
    assert model.config == {"name": "resnet20", "kwargs": {"num_classes": 7, "seed": 3}}
    assert model.fc.weight.shape == (7, 64)
    again = M.create("resnet20", num_classes=7, seed=3)
    other = M.create("resnet20", num_classes=7, seed=4)
    assert np.array_equal(model.conv1.weight.data, again.conv1.weight.data)
    assert np.array_equal(model.fc.weight.data, again.fc.weight.data)
    assert not np.array_equal(model.conv1.weight.data, other.conv1.weight.data)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        M.lenet5(num_classes=0)
    with pytest.raises(ValueError, match="config must be one of"):
        M.vgg("F")


def test_he_init_and_batchnorm_init():
    model = M.resnet20(seed=0)
    w = model.layer3[1].conv2.weight.data  # (64, 64, 3, 3), fan_in = 576 (the paper's init)
    assert abs(w.std() - np.sqrt(2 / 576)) / np.sqrt(2 / 576) < 0.05
    assert np.all(model.bn1.weight.data == 1) and np.all(model.bn1.bias.data == 0)
    r18 = M.resnet18(seed=0)
    w = r18.layer1[0].conv1.weight.data  # torchvision: fan_out = 64 * 9
    assert abs(w.std() - np.sqrt(2 / 576)) / np.sqrt(2 / 576) < 0.05
    assert np.all(M.resnet18(seed=0, zero_init_residual=True).layer1[0].bn2.weight.data == 0)


# -- forward + backward on every model, at a reduced input size ----------------------------------
SMOKE = [  # name, kwargs, input shape, cheap weights
    ("lenet5", {}, (1, 28, 28), False),
    ("alexnet", {}, (3, 67, 67), True),
    ("zfnet", {}, (3, 63, 63), True),
    ("vgg11", {"num_classes": 5}, (3, 32, 32), True),
    ("vgg16_bn", {"num_classes": 5}, (3, 32, 32), True),
    ("googlenet", {"num_classes": 5}, (3, 48, 48), False),
    ("resnet18", {"num_classes": 5}, (3, 32, 32), False),
    ("resnet50", {"num_classes": 5}, (3, 32, 32), True),
    # resnet34/101/152 repeat resnet18's and resnet50's blocks and _make_layer; running them costs
    # 15 s here, so they are checked statically (parameter counts, summaries, state-dict keys).
    ("resnet20", {}, (3, 32, 32), False),
    ("resnet20", {"shortcut": "B"}, (3, 16, 16), False),
    ("resnet110", {}, (3, 8, 8), False),
    ("plain20", {}, (3, 16, 16), False),
]


@pytest.mark.parametrize("name, kwargs, shape, cheap", SMOKE, ids=[f"{s[0]}-{s[2][1]}" for s in SMOKE])
def test_forward_backward_smoke(request, name, kwargs, shape, cheap):
    if cheap:
        request.getfixturevalue("cheap_weights")
    model = M.create(name, **kwargs)
    for m in model.modules():  # the 25088x4096 fc's 400 MB gradient is not the point here
        if isinstance(m, cnnkit.nn.linear.Linear) and m.weight.size > 10_000_000:
            m.requires_grad_(False)
    batch = 2
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
    y = model(x)
    assert y.shape == (batch,) + model.output_shape(shape)
    assert np.all(np.isfinite(y))
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape and np.all(np.isfinite(dx))
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    if not cheap:
        assert np.abs(dx).max() > 0


def test_googlenet_auxiliary_heads_forward_backward():
    model = M.googlenet(num_classes=4, aux_logits=True, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 48)).astype(np.float32)
    logits, aux2, aux1 = model(x)
    assert logits.shape == aux1.shape == aux2.shape == (2, 4)
    ones = np.ones((2, 4), np.float32)
    model.backward((ones, None, ones))
    assert model.aux1.fc2.weight.grad is not None and model.aux2.fc2.weight.grad is None
    assert model.conv1.conv.weight.grad is not None
    model.eval()
    assert model(x).shape == (2, 4)  # eval mode: logits only


# -- blocks against the same block written in plain torch ---------------------------------------
def _torch_state(module):
    return {k: torch.from_numpy(np.array(v)) for k, v in module.state_dict().items()}


class TorchBlock(torch.nn.Module):
    """BasicBlock / Bottleneck in plain torch with the same attribute names."""

    def __init__(self, inplanes, planes, stride, bottleneck, stride_in_1x1=False, downsample=True):
        super().__init__()
        nn = torch.nn
        width, out = planes, planes * (4 if bottleneck else 1)
        if bottleneck:
            s1, s2 = (stride, 1) if stride_in_1x1 else (1, stride)
            self.conv1 = nn.Conv2d(inplanes, width, 1, s1, bias=False)
            self.conv2 = nn.Conv2d(width, width, 3, s2, 1, bias=False)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
        else:
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
        self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out)) if downsample else None
        self.bottleneck = bottleneck

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(torch.relu(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


def _compare_with_torch(block, torch_block, x, rng):
    torch_block.load_state_dict(_torch_state(block))
    torch_block.double().train()
    y = block(x)
    dy = rng.standard_normal(y.shape)
    dx = block.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch_block(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-10)
    torch_params = dict(torch_block.named_parameters())
    for name, p in block.named_parameters():
        np.testing.assert_allclose(p.grad, torch_params[name].grad.numpy(), rtol=1e-8, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("bottleneck, stride, stride_in_1x1, downsample", [
    (False, 1, False, False), (False, 2, False, True), (True, 2, False, True), (True, 2, True, True),
    (True, 1, False, True),
])
def test_resnet_blocks_match_torch(rng, bottleneck, stride, stride_in_1x1, downsample):
    inplanes, planes = (8, 4) if bottleneck else (4, 4 if not downsample else 6)
    out = planes * (4 if bottleneck else 1)
    ds = Sequential(conv1x1(inplanes, out, stride, rng=rng), BatchNorm2d(out)) if downsample else None
    if bottleneck:
        block = Bottleneck(inplanes, planes, stride, ds, stride_in_1x1=stride_in_1x1, rng=rng)
    else:
        block = BasicBlock(inplanes, planes, stride, ds, rng=rng)
    block.double()
    x = rng.standard_normal((2, inplanes, 7, 6))
    _compare_with_torch(block, TorchBlock(inplanes, planes, stride, bottleneck, stride_in_1x1, downsample), x, rng)


class TorchInception(torch.nn.Module):
    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
        super().__init__()
        nn = torch.nn

        def conv(i, o, k):
            m = nn.Module()
            m.conv = nn.Conv2d(i, o, k, padding=k // 2)
            return m

        self.branch1 = conv(cin, c1, 1)
        self.branch2 = nn.ModuleList([conv(cin, c3r, 1), conv(c3r, c3, 3)])
        self.branch3 = nn.ModuleList([conv(cin, c5r, 1), conv(c5r, c5, 5)])
        self.branch4 = nn.ModuleList([nn.Identity(), conv(cin, pp, 1)])

    def forward(self, x):
        def run(m, t):
            return torch.relu(m.conv(t))

        b1 = run(self.branch1, x)
        b2 = run(self.branch2[1], run(self.branch2[0], x))
        b3 = run(self.branch3[1], run(self.branch3[0], x))
        b4 = run(self.branch4[1], torch.nn.functional.max_pool2d(x, 3, 1, 1, ceil_mode=True))
        return torch.cat([b1, b2, b3, b4], 1)


def test_inception_module_matches_torch(rng):
    block = Inception(6, 3, 2, 4, 2, 3, 2, rng=rng).double()
    assert block.output_shape((6, 7, 5)) == (12, 7, 5)
    x = rng.standard_normal((2, 6, 7, 5))
    _compare_with_torch(block, TorchInception(6, 3, 2, 4, 2, 3, 2), x, rng)


def test_pad_shortcut_matches_torch_and_gradcheck(rng):
    layer = PadShortcut(3, 8, stride=2)
    x = rng.standard_normal((2, 3, 5, 6))
    y = layer(x)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.pad(tx[:, :, ::2, ::2], (0, 0, 0, 0, 0, 5))
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(layer.backward(dy), tx.grad.numpy())
    assert layer.output_shape((3, 5, 6)) == y.shape[1:] == (8, 3, 3)
    assert cnnkit.gradcheck(PadShortcut(2, 4), rng.standard_normal((2, 2, 4, 4))) < 1e-8


def test_cifar_block_gradcheck(rng):
    model = M.resnet20(seed=0)
    block = model.layer2[0]  # stride 2 with the option-A shortcut
    assert cnnkit.gradcheck(block, rng.standard_normal((2, 16, 4, 4)), max_checks=200) < 1e-6


# -- from_spec ------------------------------------------------------------------------------------
def test_from_spec_builds_the_notes_example():
    net = M.from_spec("conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10", input_shape=(1, 28, 28), seed=0)
    s = summary(net, (1, 28, 28))
    shapes = {r["name"]: r["output_shape"] for r in s.rows}
    # same padding: 28 -> 28 -> 14 -> 14 -> 7, then 16*7*7 = 784 -> 120 -> 84 -> 10
    assert shapes["features.0"] == (6, 28, 28) and shapes["features.3"] == (16, 14, 14)
    assert shapes["flatten"] == (784,) and shapes["classifier.4"] == (10,)
    types = [type(m).__name__ for m in net.classifier]
    assert types == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]  # no ReLU after the last fc
    y = net(np.zeros((2, 1, 28, 28), np.float32))
    assert y.shape == (2, 10)
    assert M.create("spec", spec="fc-3", input_shape=(4,)).output_shape((4,)) == (3,)


def test_from_spec_repetition_vocabulary_and_batch_norm():
    net = M.from_spec("[conv3-8]*2 lrn maxpool [conv3-16 bn]*2 avgpool dropout-0.25 fc-32 bn dropout fc-5 soft-max",
                      (3, 16, 16), seed=1)
    names = [type(m).__name__ for m in net.features]
    assert names == ["Conv2d", "ReLU", "Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d", "Conv2d", "ReLU",
                     "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "AvgPool2d", "Dropout"]
    assert net.features[13].p == 0.25
    assert [type(m).__name__ for m in net.classifier] == ["Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert net.output_shape((3, 16, 16)) == (5,)
    bn = M.from_spec("[conv3-4]*2 maxpool fc-2", (1, 4, 4), batch_norm=True)
    assert [type(m).__name__ for m in bn.features][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]


def test_vgg_specs_equal_the_models(cheap_weights):
    from cnnkit.models.vgg import CONFIGS
    for config in ("A", "C"):
        net = M.from_spec(CONFIGS[config], (3, 224, 224))
        # from_spec has no avgpool: the first fc sees 7x7x512 directly at 224, same weights.
        assert n_params(net) == n_params(M.vgg(config))


@pytest.mark.parametrize("spec, shape, pattern", [
    ("conv3-8 [maxpool]*4 fc-2", (1, 8, 8), r"word 2 'maxpool' \(features\.5, MaxPool2d\).*\(8, 1, 1\)"),
    ("conv3-8 fc-2 conv3-4", (1, 8, 8), r"word 3 'conv3-4' comes after a fully connected layer"),
    ("conv4-8", (1, 8, 8), r"word 1 'conv4-8'.*odd filter size"),
    ("conv3-8 pool", (1, 8, 8), r"word 2 'pool' is not in the vocabulary"),
    ("[conv3-8 maxpool", (1, 8, 8), r"unclosed '\['"),
    ("conv3-8] maxpool", (1, 8, 8), r"closes no '\['"),
    ("maxpool maxpool", (1, 6, 6), r"word 2 'maxpool' \(features\.1, MaxPool2d\).*\(1, 3, 3\).*unused"),
])
def test_from_spec_names_the_word_that_breaks(spec, shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        M.from_spec(spec, shape)
