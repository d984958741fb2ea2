"""cnnkit.summary: rows per module, MACs and activation figures from the notes and papers, the
layer-naming shape errors, and the training-memory estimate against tracemalloc."""
import json
import tracemalloc

import numpy as np
import pytest

import cnnkit
import cnnkit.models as M
from cnnkit.functional.workspace import clear_scratch
from cnnkit.nn.activation import ReLU
from cnnkit.nn.containers import Concat, Residual, Sequential
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.linear import Linear
from cnnkit.nn.module import Module, Parameter
from cnnkit.optim import SGD, Adam
from cnnkit.cli import main as cli_main
from cnnkit.summary import ShapeError, register_layer, summary
from memory_helpers import measured_step_peak


def test_rows_cover_every_module_with_depth_and_totals_count_leaves_once(cheap_weights):
    model = M.resnet18()
    s = summary(model, (3, 224, 224))
    names = [r["name"] for r in s.rows]
    assert names[0] == "(model)" and len(names) == len(list(model.named_modules()))
    row = {r["name"]: r for r in s.rows}
    assert row["layer1"]["depth"] == 1 and row["layer1.0"]["depth"] == 2 and row["layer1.0.conv1"]["depth"] == 3
    assert row["layer1.0"]["type"] == "BasicBlock" and not row["layer1.0"]["leaf"]
    assert row["layer2.0.downsample.0"]["output_shape"] == (128, 28, 28)
    assert row["layer4"]["output_shape"] == (512, 7, 7) and row["fc"]["output_shape"] == (1000,)
    leaves = [r for r in s.rows if r["leaf"]]
    assert sum(r["params"] for r in leaves) == s.total_params == 11_689_512 == row["(model)"]["params"]
    assert sum(r["macs"] for r in leaves) == s.total_macs == row["(model)"]["macs"]
    assert row["layer1"]["macs"] == sum(r["macs"] for r in leaves if r["name"].startswith("layer1."))
    for key in ("name", "type", "depth", "output_shape", "params", "macs", "activations", "activation_bytes"):
        assert key in s.rows[5]


def test_vgg16_activation_memory_is_the_true_sum(cheap_weights):
    s = summary(M.vgg16(), (3, 224, 224))
    # The notes' per-layer memory column sums to ~15.2M values (not the "24M, ~93MB" it states):
    notes = [150_528, 3_211_264, 3_211_264, 802_816, 1_605_632, 1_605_632, 401_408] + [802_816] * 3 + \
        [200_704] + [401_408] * 3 + [100_352] + [100_352] * 3 + [25_088, 4096, 4096, 1000]
    assert s.total_activations == sum(notes) == 15_237_608
    assert s.forward_bytes == 15_237_608 * 4  # 61 MB per image (forward only), not 93 MB
    assert abs(s.total_macs - 15.47e9) / 15.47e9 < 0.01
    assert "15,237,608 values = 61.0 MB" in str(s)


@pytest.mark.parametrize("name, kwargs, paper_gmacs", [
    ("resnet18", {}, 1.8), ("resnet34", {}, 3.6), ("resnet50", {"stride_in_1x1": True}, 3.8),
    ("resnet50", {}, 4.1), ("resnet101", {"stride_in_1x1": True}, 7.6), ("resnet152", {"stride_in_1x1": True}, 11.3),
    ("resnet101", {}, 7.6), ("resnet152", {}, 11.3),
])
def test_resnet_flops_table(cheap_weights, name, kwargs, paper_gmacs):
    s = summary(M.create(name, **kwargs), (3, 224, 224))
    assert abs(s.total_macs / 1e9 - paper_gmacs) / paper_gmacs < 0.03


def test_cifar_resnet_macs():
    # ResNet-20 on 32x32: about 41M multiply-adds (the usual figure for this network).
    s = summary(M.resnet20(), (3, 32, 32))
    assert 40e6 < s.total_macs < 42e6


def test_shape_error_names_the_layer(cheap_weights):
    with pytest.raises(ShapeError, match=r"^features\.0 \(Conv2d\) with input \(3, 224, 224\): .*54\.25") as err:
        summary(M.alexnet(), (3, 224, 224))
    assert err.value.layer == "features.0"
    with pytest.raises(ShapeError, match=r"^features\.30 \(MaxPool2d\) with input \(512, 1, 1\)"):
        summary(M.vgg16(), (3, 16, 16))
    # A block whose two paths disagree is named as the block.
    broken = M.resnet18()
    broken.layer3[0].conv2.padding = (0, 0)
    with pytest.raises(ShapeError, match=r"^layer3\.0 \(BasicBlock\) with input \(128, 28, 28\): .*\(256, 12, 12\)"):
        summary(broken, (3, 224, 224))
    with pytest.raises(ShapeError, match=r"^inception4a\.branch3\.1\.conv \(Conv2d\)"):
        _broken_inception()


def _broken_inception():
    from cnnkit.models.googlenet import Inception

    model = Sequential()
    model.inception4a = Inception(4, 2, 2, 2, 2, 2, 2)
    model.inception4a.branch3[1].conv.padding = (0, 0)  # 5x5 without padding on a 4x4 map
    return summary(model, (4, 4, 4))


class Doubler(Module):
    """A custom block with no container base class: ``y = g(f(x)) + f(x)``."""

    def __init__(self):
        super().__init__()
        self.f = Conv2d(2, 3, 3, padding=1)
        self.g = ReLU()

    def output_shape(self, input_shape):
        return self.g.output_shape(self.f.output_shape(input_shape))


def test_custom_blocks_are_walkable():
    model = Sequential(Doubler(), Concat(Conv2d(3, 4, 1), Sequential(Conv2d(3, 2, 3, padding=1), ReLU())),
                       Residual(Sequential(Conv2d(6, 6, 3, padding=1), ReLU())))
    s = summary(model, (2, 5, 5))
    row = {r["name"]: r for r in s.rows}
    assert row["0.f"]["output_shape"] == (3, 5, 5) and row["0.f"]["macs"] == 3 * 25 * 2 * 9
    assert row["1"]["output_shape"] == (6, 5, 5) and row["1.1.0"]["input_shape"] == (3, 5, 5)
    assert row["2.body.0"]["macs"] == 6 * 25 * 6 * 9
    assert s.total_macs == 3 * 25 * 18 + 4 * 25 * 3 + 2 * 25 * 27 + 6 * 25 * 54


def test_mac_rules_are_a_registry():
    class Bilinear(Module):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(np.zeros((4, 3, 3), np.float32))

        def output_shape(self, input_shape):
            return (4,)

    register_layer(Bilinear, macs=lambda m, i, o: 4 * 3 * 3)
    s = summary(Sequential(Bilinear(), Linear(4, 2)), (3,))
    assert s.total_macs == 36 + 8 and s.total_params == 36 + 10


def test_table_and_json(cheap_weights):
    s = summary(M.resnet20(), (3, 32, 32), batch_size=128)
    text = str(s)
    assert "layer1" in text and "BasicBlock" in text and "Total params: 269,722" in text
    assert "batch 128" in text
    data = json.loads(s.to_json())
    assert data["total_params"] == 269_722 and data["rows"][1]["name"] == "conv1"
    assert data["training_memory"]["batch_size"] == 128
    assert summary(M.lenet5(), (1, 28, 28)).to_dict()["output_shape"] == [10]


def test_summary_command_prints_a_table(capsys):
    assert cli_main(["summary", "lenet5", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 61,706" in out and "features" in out
    assert cli_main(["summary", "resnet20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [3, 32, 32]


def test_optimizer_state_and_batch_scaling():
    s = summary(M.lenet5(), (1, 28, 28), batch_size=8, optimizer="sgd")
    sgd, adam = s.training_memory(optimizer="sgd"), s.training_memory(optimizer="adam")
    assert sgd["optimizer_state"] == 0 and adam["optimizer_state"] == 2 * 61_706 * 4
    big = s.training_memory(batch_size=80)
    assert big["activations"] == 10 * sgd["activations"]
    with pytest.raises(ValueError, match="optimizer must be one of"):
        summary(M.lenet5(), (1, 28, 28), optimizer="lbfgs")


@pytest.mark.parametrize("name, shape, batch, optimizer", [
    ("lenet5", (1, 28, 28), 32, "momentum"), ("lenet5", (1, 28, 28), 16, "adam"),
    ("resnet20", (3, 32, 32), 16, "momentum"),
])
def test_training_memory_estimate_matches_tracemalloc(name, shape, batch, optimizer):
    clear_scratch()  # kernels' shared work buffers left by earlier tests would hide this model's
    tracemalloc.start()  # before the model, so parameters and optimizer state are in the peak
    try:
        model = M.create(name, seed=0)
        if optimizer == "adam":
            measured = measured_step_peak(model, shape, batch, Adam, lr=1e-3)
        else:
            measured = measured_step_peak(model, shape, batch, SGD, lr=0.01, momentum=0.9)
    finally:
        tracemalloc.stop()
    estimate = summary(model, shape, batch_size=batch, optimizer=optimizer).training["total"]
    assert abs(estimate - measured) / measured < 0.25, (estimate, measured)
