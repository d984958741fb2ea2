"""Checkpoints that say what they are (issue 17, item 9): mismatches name the checkpoint's model,
dataset, shape and classes; ensembles must agree; --init must fit; export uses the recorded input
shape; summary takes specs and refuses the generic registry names; --list shows only models."""
import json

import pytest

import cnnkit
from cnnkit.cli import main

FAST = ["--no-progress", "--no-report"]


def save(path, name, dataset, shape, classes=10, **kwargs):
    model = cnnkit.models.create(name, seed=0, **kwargs)
    model.config = {**model.config, "dataset": dataset, "input_shape": list(shape),
                    "classes": [str(i) for i in range(classes)]}
    cnnkit.io.save(model, path)
    return str(path)


@pytest.fixture
def lenet_mnist(tmp_path):
    return save(tmp_path / "lenet.safetensors", "lenet5", "mnist", (1, 28, 28))


@pytest.fixture
def digitnet_digits(tmp_path):
    return save(tmp_path / "digitnet.safetensors", "digitnet", "digits", (1, 8, 8))


def error_of(capsys, argv, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_a_mismatch_says_what_the_checkpoint_is(lenet_mnist, capsys):
    err = error_of(capsys, ["evaluate", lenet_mnist, "--dataset", "digits"])
    assert f"{lenet_mnist} is lenet5 trained on mnist (1x28x28, 10 classes); --dataset digits gives 1x8x8 images" in err
    assert "Conv2d" not in err and "channels" not in err


def test_a_mismatch_in_classes_is_named_too(tmp_path, capsys):
    path = save(tmp_path / "five.safetensors", "digitnet", "digits", (1, 8, 8), classes=5, num_classes=5)
    err = error_of(capsys, ["evaluate", path, "--dataset", "digits"])
    assert "(1x8x8, 5 classes); --dataset digits gives 10 classes" in err


def test_an_ensemble_of_different_datasets_is_refused(lenet_mnist, digitnet_digits, capsys):
    for command in (["evaluate", digitnet_digits, lenet_mnist], ["predict", digitnet_digits, lenet_mnist, "x.png"]):
        err = error_of(capsys, command)
        assert "cannot form an ensemble" in err
        assert "digitnet trained on digits (1x8x8, 10 classes)" in err and "lenet5 trained on mnist" in err


def test_init_that_fits_no_weight_is_an_error(tmp_path, lenet_mnist, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = error_of(capsys, ["train", "--init", lenet_mnist, *FAST])
    assert f"--init {lenet_mnist}: none of its 10 arrays fits digitnet" in err
    cnnkit.io.save_state_dict({"something.weight": cnnkit.models.create("digitnet").state_dict()["0.weight"]},
                              tmp_path / "renamed.safetensors")
    err = error_of(capsys, ["train", "--init", "renamed.safetensors", *FAST])
    assert "none of its 1 arrays fits digitnet" in err
    assert not (tmp_path / "runs").exists()
    # a partial fit is fine and says what stayed fresh
    source = save(tmp_path / "nine.safetensors", "digitnet", "digits", (1, 8, 8), classes=9, num_classes=9)
    assert main(["train", "--init", source, "--epochs", "1", "--limit", "100", *FAST]) == 0
    assert "initialised 6 of 8 arrays from" in capsys.readouterr().out


def test_export_uses_the_recorded_input_shape(tmp_path, monkeypatch, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "conv3-4 maxpool fc-10", "--epochs", "1", "--limit", "100", "--out", "r",
                 *FAST]) == 0
    capsys.readouterr()
    assert main(["export", "r/best.safetensors", "spec.onnx"]) == 0
    assert "input (N, 1, 8, 8)" in capsys.readouterr().out
    dims = onnx.load("spec.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [1, 8, 8]


def test_summary_takes_a_spec_and_refuses_generic_names(capsys):
    assert main(["summary", "conv3-8 maxpool fc-10", "--input", "1x8x8"]) == 0
    assert "SpecNet: input 1x8x8" in capsys.readouterr().out
    for name, advice in (("spec", "give the spec itself"), ("vgg", "name a configuration: vgg11")):
        err = error_of(capsys, ["summary", name])
        assert f"'{name}' is not a model to build by name: {advice}" in err
    err = error_of(capsys, ["summary", "conv3-8 maxpool fc-10"])
    assert "needs --input" in err


def test_list_shows_only_models_one_can_name(capsys):
    assert main(["summary", "--list"]) == 0
    names = capsys.readouterr().out.split()
    assert "spec" not in names and "vgg" not in names
    assert {"digitnet", "lenet5", "vgg16", "vgg16_bn", "resnet20", "googlenet"} <= set(names)


def test_summary_optimizer_flag_changes_the_training_memory_estimate(capsys):
    sizes = {}
    for optimizer in ("sgd", "adam"):
        assert main(["summary", "lenet5", "--json", "--optimizer", optimizer]) == 0
        sizes[optimizer] = json.loads(capsys.readouterr().out)["training_memory"]["optimizer_state"]
    assert sizes == {"sgd": 0, "adam": 2 * 61_706 * 4}
