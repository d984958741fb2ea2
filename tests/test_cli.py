import subprocess
import sys

import numpy as np
import pytest

import cnnkit
from cnnkit.cli import main


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["train", "--epochs", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_train_default_is_digits_and_writes_checkpoints(trained_run, capsys):
    assert (trained_run / "best.safetensors").exists()
    assert (trained_run / "last.safetensors").exists()
    assert (trained_run / "history.csv").read_text().startswith("epoch,")


def test_evaluate_single_and_ensemble(trained_run, capsys):
    ckpt = str(trained_run / "best.safetensors")
    assert main(["evaluate", ckpt]) == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "digits test (359 images)" in text
    assert main(["evaluate", ckpt, str(trained_run / "last.safetensors")]) == 0
    assert "ensemble of 2 models" in capsys.readouterr().out


def test_predict_on_png(trained_run, tmp_path, capsys):
    from PIL import Image

    ds = cnnkit.data.load("digits", "test")
    image = tmp_path / "digit.png"
    Image.fromarray(ds.images[0, 0]).resize((32, 32)).save(image)
    assert main(["predict", str(trained_run / "best.safetensors"), str(image), "--top", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and line.count("%") == 2


def test_resume_continues(trained_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run")  # a resumed run continues in its own folder
    code = main(["train", "--epochs", "4", "--resume", str(run / "last.safetensors"), "--no-progress", "--no-report"])
    assert code == 0
    text = capsys.readouterr().out
    assert "resumed from" in text and "epoch 4/4" in text and "epoch 3/4" not in text


def test_bad_arguments_give_one_clear_line(capsys):
    assert main(["train", "--epochs", "0"]) == 2  # usage
    assert "argument --epochs: must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["evaluate", "/nonexistent.ckpt"]) == 1  # runtime
    assert "/nonexistent.ckpt" in capsys.readouterr().err


def test_help_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "cnnkit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "summary"):
        assert command in result.stdout


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, monkeypatch, capsys):
    from cnnkit.train.trainer import Trainer

    original = Trainer.train_epoch

    def interrupted_in_epoch_two(self, loader):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return original(self, loader)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_two)
    assert main(["train", "--epochs", "3", "--out", str(tmp_path), "--no-progress"]) == 130
    text = capsys.readouterr().out
    assert "interrupted during epoch 2" in text and "--resume" in text
    assert (tmp_path / "interrupted.safetensors").exists()
    state = cnnkit.io.load_checkpoint(tmp_path / "last.safetensors").training_state
    assert state["epoch"] == 1
