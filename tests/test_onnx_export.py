"""ONNX export: zoo models and models built from cnnkit layers give valid files (onnx.checker)
whose onnxruntime output equals cnnkit's; imported graphs export back; the CLI command works."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cnnkit.onnx as conx  # noqa: E402
from cnnkit import models  # noqa: E402
from cnnkit.nn.activation import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh  # noqa: E402
from cnnkit.nn.containers import Concat, Residual, Sequential  # noqa: E402
from cnnkit.nn.conv import Conv2d  # noqa: E402
from cnnkit.nn.dropout import Dropout  # noqa: E402
from cnnkit.nn.flatten import Flatten  # noqa: E402
from cnnkit.nn.graph import Add, Cat, Graph, Mul  # noqa: E402
from cnnkit.nn.linear import Linear  # noqa: E402
from cnnkit.nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm  # noqa: E402
from cnnkit.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d  # noqa: E402


SLOW = pytest.mark.skipif(not os.environ.get("CNNKIT_SLOW_TESTS"), reason="large model; CNNKIT_SLOW_TESTS=1")


def randomize_bn(model, rng):
    for m in model.modules():
        if isinstance(m, (BatchNorm1d, BatchNorm2d)):
            m.running_mean[...] = rng.uniform(-0.5, 0.5, m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
            m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
    return model


def check_export(model, shape, tmp_path, rng, batch=2, opset=13, rtol=1e-4):
    model.eval()
    path = tmp_path / "model.onnx"
    conx.export(model, path, shape, opset=opset)
    onnx.checker.check_model(str(path), full_check=True)
    x = rng.standard_normal((batch,) + tuple(shape)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    y = model(x)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))
    return path, x, ref


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet5", {}, (1, 28, 28)),
    ("resnet18", {"num_classes": 10}, (3, 32, 32)),
    ("resnet50", {"num_classes": 10}, (3, 32, 32)),
    ("resnet20", {}, (3, 32, 32)),
    ("googlenet", {"num_classes": 10}, (3, 64, 64)),
    # 60-130M parameters each: verified, but only run with CNNKIT_SLOW_TESTS=1 (init dominates)
    pytest.param("alexnet", {"num_classes": 10}, (3, 227, 227), marks=SLOW),
    pytest.param("vgg11_bn", {"num_classes": 10}, (3, 32, 32), marks=SLOW),
    pytest.param("vgg16", {"num_classes": 10}, (3, 32, 32), marks=SLOW),
])
def test_zoo_models_export(name, kwargs, shape, tmp_path, rng):
    model = randomize_bn(models.create(name, **kwargs), rng)
    check_export(model, shape, tmp_path, rng, batch=1 if name in ("alexnet", "googlenet") else 2)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet5", {}, (1, 28, 28)),
    ("resnet20", {}, (3, 32, 32)),
    ("resnet18", {"num_classes": 10}, (3, 32, 32)),
    ("googlenet", {"num_classes": 10, "variant": "torchvision"}, (3, 64, 64)),
])
def test_fused_zoo_models_export_what_they_compute(name, kwargs, shape, tmp_path, rng):
    """cnnkit.nn.fuse folds BatchNorm into the convolutions and moves ReLUs inside them
    (fused_relu): the export must carry those ReLUs, which only a numeric comparison can see."""
    from cnnkit.nn import fuse

    model = randomize_bn(models.create(name, seed=0, **kwargs), rng).eval()
    fused = fuse(model, shape)
    assert any(getattr(m, "fused_relu", False) for m in fused.modules())
    _, x, ref = check_export(fused, shape, tmp_path, rng, batch=1)
    np.testing.assert_allclose(model(x), ref, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(ref).max())))


def test_every_layer_and_container_exports(tmp_path, rng):
    model = Sequential(
        Conv2d(3, 8, 3, padding=1, generator=rng), BatchNorm2d(8), ReLU(),
        MaxPool2d(3, 2, padding=1, dilation=1, ceil_mode=True, check_geometry=False), MaxPool2d(2, 1),
        Residual(Sequential(Conv2d(8, 8, 3, padding=1, groups=2, generator=rng), Tanh())),
        Concat(Conv2d(8, 4, 1, generator=rng), AvgPool2d(3, 1, 1, count_include_pad=False), Sigmoid()),
        LocalResponseNorm(5, alpha=1e-3, k=2.0), LPPool2d(2, 2), AdaptiveAvgPool2d((3, 2)),
        Flatten(), Dropout(0.5), Linear(20 * 6, 8, generator=rng), BatchNorm1d(8), LeakyReLU(0.1),
        Linear(8, 5, generator=rng), Softmax(1))
    check_export(randomize_bn(model, rng), (3, 16, 16), tmp_path, rng)
    check_export(Sequential(Flatten(), Linear(12, 3), LogSoftmax(1)), (3, 2, 2), tmp_path, rng)


def test_graph_round_trip(tmp_path, rng):
    g = Graph(input="x")
    g.add_node("conv", Conv2d(3, 4, 3, padding=1, generator=rng), "x")
    g.add_node("relu", ReLU(), "conv")
    g.add_node("gap", AdaptiveAvgPool2d(1), "relu")
    g.add_node("gate", Mul(), ["relu", "gap"])
    g.add_node("sum", Add(), ["gate", "conv", "relu"])
    g.add_node("cat", Cat(1), ["sum", "x"])
    path, x, ref = check_export(g, (3, 6, 5), tmp_path, rng)
    back = conx.load(path).eval()
    np.testing.assert_allclose(back(x), ref, rtol=1e-5, atol=1e-5)
    conx.export(back, tmp_path / "again.onnx", (3, 6, 5))  # an imported graph exports again
    again = ort.InferenceSession(str(tmp_path / "again.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(again, ref, rtol=1e-5, atol=1e-5)


def test_zoo_resnet_imports_back_and_trains(tmp_path, rng):
    model = randomize_bn(models.create("resnet20"), rng)
    path, x, ref = check_export(model, (3, 32, 32), tmp_path, rng)
    g = conx.load(path)
    np.testing.assert_allclose(g.eval()(x), ref, rtol=1e-4, atol=1e-4)
    g.train()
    y = g(x)
    g.backward(np.ones_like(y), input_grad=False)
    assert all(p.grad is not None for p in g.parameters())


def test_unknown_module_names_the_type_and_the_fix(tmp_path):
    from cnnkit.nn.module import Module

    class Mystery(Module):
        pass

    with pytest.raises(NotImplementedError, match=r"Mystery.*'1'.*register_exporter"):
        conx.export(Sequential(ReLU(), Mystery()), tmp_path / "m.onnx", (3,))


def test_cli_export(tmp_path, capsys):
    from cnnkit.cli import export as cli_export

    parser = __import__("argparse").ArgumentParser()
    cli_export.add_arguments(parser)
    args = parser.parse_args(["lenet5", str(tmp_path / "lenet.onnx")])
    assert cli_export.run(args) == 0
    out = capsys.readouterr().out
    assert "onnx.checker: ok" in out and "max abs difference" in out
    onnx.checker.check_model(str(tmp_path / "lenet.onnx"))


@pytest.mark.parametrize("opset", [9, 11, 13])
def test_softmax_over_channels_and_linear_without_bias_at_older_opsets(opset, tmp_path, rng):
    """Before opset 13 ONNX's Softmax normalises over every axis from `axis` on; before 11 Gemm
    needs its C input: both layers export what they compute at every opset."""
    check_export(Sequential(Conv2d(3, 4, 1, generator=rng), Softmax(1)), (3, 5, 6), tmp_path, rng, opset=opset)
    check_export(Sequential(Flatten(), Linear(12, 3, bias=False, generator=rng), LogSoftmax(1)), (3, 2, 2),
                 tmp_path, rng, opset=opset)
