"""Named training recipes (`cnnkit train --recipe NAME`): the help lists each with its measured
time and accuracy, a run records its recipe and every setting, a resumed run keeps them (and its
EMA) bit for bit, and the new flags refuse values no run can use."""
import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import pytest

import cnnkit
from cnnkit.cli import build_parser, main
from cnnkit.train.recipes import RECIPES, all_recipes, get_recipe, recipe
from cnnkit.train.trainer import Trainer

FAST = ["--no-progress", "--no-report"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_lists_every_recipe_with_what_it_was_measured_to_give(capsys):
    text = _help(capsys)
    for r in all_recipes():
        assert f"{r.dataset} {r.name}: {r.about}" in " ".join(r.describe().split()) and r.about
        assert " ".join(r.describe().split()) in text
        assert "% test accuracy" in r.expected and " min on " in r.expected, (r.dataset, r.name)
    fast = get_recipe("cifar10", "fast")
    assert "over 3 seeds" in fast.expected and "full CIFAR-10 (50,000 images)" in fast.expected
    assert "full CIFAR-10 (50,000 images)" in get_recipe("cifar10").expected


def _accuracy_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("_accuracy_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_figures_are_the_measured_ones():
    """The help quotes what benchmarks/accuracy.py measured (its results file), not a guess."""
    bench = _accuracy_benchmark()
    rows = json.loads(bench.RESULTS.read_text())
    for r in all_recipes():
        assert bench.recipe_expectation(rows, r.dataset, r.name) == r.expected, (r.dataset, r.name)


def test_recipes_are_complete_and_lookups_explain_themselves():
    for dataset, recipes in RECIPES.items():
        assert next(iter(recipes)) == "default"
        for name, r in recipes.items():
            assert (r.dataset, r.name) == (dataset, name)
            for key in ("model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule",
                        "augment"):
                assert key in r.settings, (dataset, name, key)
    assert recipe("cifar10", "fast")["model"] == "fastnet"
    assert recipe("mnist") == recipe("mnist", "default")
    with pytest.raises(ValueError, match="no recipe 'slow' for dataset 'cifar10'; its recipes: default, fast"):
        recipe("cifar10", "slow")
    with pytest.raises(ValueError, match="no training recipe for dataset 'imagenet'"):
        recipe("imagenet")


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "slow"], "--recipe slow: no dataset has a recipe of that name"),
    (["--dataset", "mnist", "--recipe", "fast"], "--recipe fast: no such recipe for mnist; its recipes: default"),
    (["--label-smoothing", "1"], r"--label-smoothing must be in \[0, 1\), got 1.0"),
    (["--ema", "1"], r"--ema must be a decay in \[0, 1\) \(e.g. 0.99; 0 for none\), got 1.0"),
    (["--ema", "-0.5"], r"--ema must be a decay in \[0, 1\)"),
    (["--nesterov", "--optimizer", "adam"], "--nesterov needs --optimizer sgd with --momentum > 0"),
    (["--nesterov", "--momentum", "0"], "--nesterov needs --optimizer sgd with --momentum > 0"),
])
def test_bad_recipe_and_flag_values_are_refused(in_tmp, capsys, argv, message):
    assert main(["train", *argv, "--epochs", "1", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    import re
    assert re.search(message, err), err
    assert not any(in_tmp.iterdir())  # nothing written


def _fast_run(shared_data, out, *extra):
    return main(["train", "--recipe", "fast", "--data-dir", str(shared_data), "--limit", "240", "--batch-size", "40",
                 "--epochs", "3", "--seed", "2", "--out", out, *extra, *FAST])


def test_recipe_fast_runs_records_its_settings_and_resumes_bit_for_bit(shared_data, in_tmp, monkeypatch, capsys):
    assert _fast_run(shared_data, "whole") == 0
    text = capsys.readouterr().out
    assert "training fastnet" in text and "on cifar10" in text  # --recipe fast alone picks cifar10
    assert "nesterov, flip TTA, label smoothing 0.2, EMA 0.99" in text
    assert "flip TTA, without it" in text
    train = cnnkit.io.load("whole/last.safetensors").config["train"]
    assert train["recipe"] == "fast" and train["model"] == "fastnet" and train["ema"] == 0.99
    assert train["label_smoothing"] == 0.2 and train["nesterov"] is True and train["tta"] is True
    assert train["batch_size"] == 40  # the flag overrides the recipe

    original = Trainer.train_step

    def interrupted(self, x, y):
        if self.global_step == 8:  # during epoch 2 (6 steps per epoch)
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert _fast_run(shared_data, "cut") == 130
    command = capsys.readouterr().out.split("Continue with: ")[1].strip()
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(shlex.split(command)[1:] + FAST) == 0
    whole, cut = cnnkit.io.load_checkpoint("whole/last.safetensors"), cnnkit.io.load_checkpoint("cut/last.safetensors")
    assert cut.config["train"]["recipe"] == "fast"
    for key, value in whole.model.state_dict().items():  # the averaged weights
        np.testing.assert_array_equal(cut.model.state_dict()[key], value, err_msg=key)
    for key, value in whole.training_state["ema"]["training_weights"].items():  # and the live ones
        np.testing.assert_array_equal(cut.training_state["ema"]["training_weights"][key], value, err_msg=key)
    # a resume that names another recipe (or turns the EMA off) contradicts the run
    assert main(["train", "--resume", "cut/last.safetensors", "--recipe", "default", "--ema", "0", "--epochs", "4",
                 *FAST]) == 2
    err = capsys.readouterr().err
    assert "--recipe default (the run's is fast)" in err and "--ema 0.0 (the run's is 0.99)" in err
