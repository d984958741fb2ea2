"""The profiler: per-layer timings, FLOP rates, algorithm and data-movement/GEMM split; the CLI."""
import argparse
import json

import numpy as np
import pytest

import cnnkit
from cnnkit import profile as profile_module
from cnnkit.cli import profile as profile_cli
from cnnkit.nn import Linear, Sequential
from cnnkit.nn.activation import ReLU
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.flatten import Flatten
from cnnkit.profile import forward_flops, profile, section

# These tests are about which NumPy kernel `auto` picks: run them without oneDNN.
pytestmark = pytest.mark.usefixtures("numpy_backend")


def small_net(rng):
    return Sequential(
        Conv2d(3, 8, 3, padding=1, generator=rng), ReLU(),          # first layer: im2col
        Conv2d(8, 8, 3, padding=1, generator=rng), ReLU(),          # flat
        Flatten(), Linear(8 * 6 * 6, 5, generator=rng),
    )


def test_profile_reports_every_leaf_with_times_flops_and_algorithm(rng):
    model = small_net(rng)
    result = profile(model, (3, 6, 6), batch_size=4, repeat=2, sgemm_gflops=100.0)
    names = [r.name for r in result.layers]
    assert names == ["0", "1", "2", "3", "4", "5"]
    conv0, conv2, linear = result.layers[0], result.layers[2], result.layers[5]
    assert conv0.algorithm == "im2col" and conv2.algorithm == "flat"
    assert conv0.forward_flops == 2 * 4 * 8 * 3 * 9 * 36
    # the first layer computes no input gradient (input_grad=False): its backward is one GEMM
    assert conv0.backward_flops == conv0.forward_flops
    assert conv2.backward_flops == 2 * conv2.forward_flops
    assert linear.forward_flops == 2 * 4 * 288 * 5
    assert all(r.forward_ms > 0 and r.backward_ms > 0 for r in result.layers if r.type != "Flatten")
    movement, gemm, other = conv2.split_ms()
    assert movement > 0 and gemm > 0 and other >= 0
    assert set(conv2.sections_ms["forward"]) >= {"im2col", "gemm"}
    assert set(conv2.sections_ms["backward"]) >= {"im2col", "gemm"}  # stride 1: dx comes out of the GEMM chunks
    assert result.step_ms > 0 and result.backward


def test_profile_leaves_the_model_as_it_was(rng):
    model = small_net(rng).eval()
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    with cnnkit.no_grad():
        before = model(x)
    profile(model, (3, 6, 6), batch_size=2, repeat=1)
    assert not model.training
    assert all("forward" not in vars(m) and "backward" not in vars(m) for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    with cnnkit.no_grad():
        np.testing.assert_array_equal(model(x), before)


def test_inference_profile_has_no_backward(rng):
    result = profile(small_net(rng), (3, 6, 6), batch_size=2, repeat=1, backward=False, sgemm_gflops=50.0)
    assert all(r.backward_ms == 0 for r in result.layers)
    text = str(result)
    assert "inference" in text and "flat" in text and "% sgemm" in text


def test_table_and_json(rng):
    result = profile(small_net(rng), (3, 6, 6), batch_size=2, repeat=1, sgemm_gflops=50.0)
    data = json.loads(result.to_json())
    assert [row["name"] for row in data["layers"]] == [r.name for r in result.layers]
    assert data["layers"][2]["algorithm"] == "flat" and data["layers"][2]["percent_of_sgemm"] > 0
    assert "training step" in str(result)


def test_section_is_a_no_op_outside_a_profile():
    with section("gemm"):
        pass
    assert not profile_module.enabled()


def test_forward_flops_of_other_layers_is_zero():
    assert forward_flops(ReLU(), (2, 3), (2, 3)) == 0.0


def _args(**kw):
    base = dict(model="lenet5", input=None, batch_size=2, num_classes=None, repeat=1, warmup=0, inference=False,
                algorithm=None, json=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_prints_the_table_and_json(capsys):
    assert profile_cli.run(_args()) == 0
    out = capsys.readouterr().out
    assert "features.0" in out and "training step" in out
    assert profile_cli.run(_args(json=True, algorithm="im2col", inference=True)) == 0
    data = json.loads(capsys.readouterr().out)
    assert {row["algorithm"] for row in data["layers"] if row["type"] == "Conv2d"} == {"im2col"}


def test_cli_arguments_and_errors():
    parser = argparse.ArgumentParser()
    profile_cli.add_arguments(parser)
    args = parser.parse_args(["resnet20", "--input", "3x32x32", "--batch-size", "4"])
    assert args.input == (3, 32, 32) and args.batch_size == 4
    with pytest.raises(ValueError, match="--batch-size"):
        profile_cli.run(_args(batch_size=0))
    with pytest.raises(ValueError, match="needs --input"):
        profile_cli.run(_args(model="conv3-4 fc-2"))
