"""Errors a person can act on (issue 17, items 8 and 12): every failure the user caused is one line
on stderr naming the file or flag and what to do, with exit code 2 (the command line is wrong) or
1 (the command could not be carried out); --debug or CNNKIT_DEBUG=1 shows the traceback. Hostile
and broken files are generated here, never committed."""
import pickle
import struct
import sys
import zipfile

import pytest

import cnnkit
from cnnkit.cli import main

FAST = ["--no-progress", "--no-report"]


def one_line_error(capsys, argv, code):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"cnnkit {argv[0]}: error: "), err
    return err.strip()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    assert main(["train", "--epochs", "1", "--limit", "300", "--out", str(folder), *FAST]) == 0
    return folder / "best.safetensors"


def _pt_zip(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl)
    return path


# -- item 8: broken and hostile files ---------------------------------------------------------------------
def test_a_broken_safetensors_file_is_one_line(in_tmp, capsys):
    (in_tmp / "bad.safetensors").write_bytes(b"\xff" * 16)
    err = one_line_error(capsys, ["evaluate", "bad.safetensors"], 1)
    assert "bad.safetensors: not a valid .safetensors file" in err and "give a checkpoint written by" in err


def test_a_broken_zip_is_one_line(in_tmp, capsys):
    (in_tmp / "bad.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    err = one_line_error(capsys, ["evaluate", "bad.npz"], 1)
    assert "bad.npz: not a valid .npz file" in err and "zip" in err
    (in_tmp / "bad.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    err = one_line_error(capsys, ["train", "--init", "bad.pt", *FAST], 1)
    assert "bad.pt: damaged zip archive" in err and "--init needs" in err


def test_an_invalid_pickle_and_a_refused_global_are_one_line(in_tmp, capsys):
    _pt_zip(in_tmp / "junk.pt", b"\x80\x02junk")
    err = one_line_error(capsys, ["train", "--init", "junk.pt", *FAST], 1)
    assert "junk.pt" in err
    evil = b"\x80\x02cposix\nsystem\n(X\x04\x00\x00\x00truetR."
    _pt_zip(in_tmp / "evil.pt", evil)
    err = one_line_error(capsys, ["train", "--init", "evil.pt", *FAST], 1)
    assert "evil.pt" in err and "posix" in err
    assert not (in_tmp / "runs").exists()  # nothing trained, no folder


def test_a_truncated_legacy_torch_file_is_one_line(in_tmp, capsys):
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.arange(6.0)}, in_tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    data = (in_tmp / "legacy.pt").read_bytes()
    (in_tmp / "cut.pt").write_bytes(data[: len(data) - 24 - 8 + 3])  # inside the storage's 8-byte count
    err = one_line_error(capsys, ["train", "--init", "cut.pt", *FAST], 1)
    assert "cut.pt: file ends before" in err and "--init needs" in err


@pytest.mark.parametrize("error, words", [
    (MemoryError(), "declares more data than this machine can hold"),
    (struct.error("unpack requires a buffer of 8 bytes"), "truncated or malformed"),
    (pickle.UnpicklingError("global 'os.system' is refused"), "refused"),
    (zipfile.BadZipFile("File is not a zip file"), "not a valid zip archive"),
])
def test_every_kind_of_reader_failure_names_the_file(checkpoint, monkeypatch, capsys, error, words):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cnnkit.io, "load_checkpoint", fail)
    err = one_line_error(capsys, ["evaluate", str(checkpoint)], 1)
    assert str(checkpoint) in err and words in err


def test_a_diverging_run_says_which_flag_to_lower(in_tmp, capsys):
    err = one_line_error(capsys, ["train", "--lr", "1e6", "--epochs", "1", *FAST], 1)
    assert "the loss became nan" in err and "lower --lr (the digits recipe uses 0.05)" in err


def test_running_out_of_memory_during_training_names_the_batch_size(in_tmp, monkeypatch, capsys):
    from cnnkit.train.trainer import Trainer

    def out_of_memory(self, x, y):
        raise MemoryError

    monkeypatch.setattr(Trainer, "train_step", out_of_memory)
    err = one_line_error(capsys, ["train", "--epochs", "1", "--batch-size", "64", *FAST], 1)
    assert "out of memory during epoch 1: lower --batch-size (now 64)" in err


def test_a_missing_onnx_names_a_command_that_works_for_a_checkout(in_tmp, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails, as if not installed
    err = one_line_error(capsys, ["export", "digitnet", "d.onnx"], 1)
    assert "pip install onnx onnxruntime" in err and "cnnkit[onnx]" not in err


def test_debug_flag_and_environment_variable_show_the_traceback(in_tmp, monkeypatch, capsys):
    (in_tmp / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(Exception, match="bad.safetensors"):
        main(["evaluate", "bad.safetensors", "--debug"])
    with pytest.raises(Exception, match="bad.safetensors"):
        main(["--debug", "evaluate", "bad.safetensors"])
    monkeypatch.setenv("CNNKIT_DEBUG", "1")
    with pytest.raises(Exception):
        main(["evaluate", "bad.safetensors"])
    monkeypatch.setenv("CNNKIT_DEBUG", "0")
    assert main(["evaluate", "bad.safetensors"]) == 1


def test_usage_errors_are_one_line_with_exit_code_2(in_tmp, capsys):
    err = one_line_error(capsys, ["train", "--no-such-flag"], 2)
    assert "unrecognized arguments: --no-such-flag" in err and "(see cnnkit train --help)" in err
    err = one_line_error(capsys, ["train", "--dataset", "imagenet"], 2)
    assert "argument --dataset: invalid choice: 'imagenet'" in err
    err = one_line_error(capsys, ["viz", "filters"], 2)
    assert "CKPT" in err


def test_an_unexpected_error_is_still_one_line_and_asks_for_a_report(in_tmp, monkeypatch, capsys):
    class Surprise(Exception):
        pass

    def fail(*args, **kwargs):
        raise Surprise("something inside")

    monkeypatch.setattr("cnnkit.cli.summary.run", fail)
    err = one_line_error(capsys, ["summary", "lenet5"], 1)
    assert "internal error Surprise: something inside" in err and "--debug" in err


# -- item 12: messages name flags, data errors name --data-dir, the recorded data folder is the default --
@pytest.mark.parametrize("argv, message", [
    (["--weight-decay", "-1"], "--weight-decay must be a number >= 0, got -1.0"),
    (["--momentum", "-0.5"], "--momentum must be a number >= 0, got -0.5"),
    (["--warmup-epochs", "3", "--epochs", "3"], "--warmup-epochs 3 must be fewer than the run's 3 epochs (--epochs)"),
    (["--warmup-epochs", "2", "--schedule", "onecycle"], "--warmup-epochs cannot be combined with --schedule onecycle"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--lr", "nan"], "argument --lr: must be a finite number, got 'nan'"),
    (["--val-split", "1"], "--val-split must be in [0, 1), got 1.0"),
    (["--num-classes", "3"], "--num-classes 3 is fewer than the 10 classes of digits"),
    (["--freeze", "nothing_here"], "--freeze: pattern 'nothing_here' matches no parameter"),
    (["--freeze", "*"], "freezes every parameter: nothing is left to train"),
    (["--model", "spec"], "--model spec is not a model to build by name"),
])
def test_train_messages_name_the_flag(in_tmp, capsys, argv, message):
    err = one_line_error(capsys, ["train", *argv, *FAST], 2)
    assert message in err
    for internal in ("param_groups_no_decay", "LinearLR", "total_iters", "SGD:"):
        assert internal not in err
    assert not (in_tmp / "runs").exists()


def test_data_not_found_mentions_data_dir(in_tmp, monkeypatch, capsys):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("cnnkit.data.download.urlopen", offline)
    err = one_line_error(capsys, ["train", "--dataset", "mnist", "--data-dir", "empty", *FAST], 1)
    assert "mnist train data not found in the folder --data-dir empty" in err
    assert "Pass --data-dir FOLDER with the official files in FOLDER/mnist/" in err
    assert not (in_tmp / "runs").exists()


def test_evaluate_and_viz_default_to_the_recorded_data_folder(in_tmp, monkeypatch, capsys):
    model = cnnkit.models.create("digitnet")
    model.config = {**model.config, "dataset": "digits", "input_shape": [1, 8, 8],
                    "classes": [str(i) for i in range(10)], "data_dir": "/recorded/data"}
    cnnkit.io.save(model, in_tmp / "best.safetensors")
    roots = []
    real_load = cnnkit.data.load

    def load(name, split="train", root=None, **kwargs):
        roots.append(root)
        return real_load(name, split)

    monkeypatch.setattr(cnnkit.data, "load", load)
    assert main(["evaluate", "best.safetensors"]) == 0
    assert main(["viz", "confusion", "best.safetensors", "--out", "c.png"]) == 0
    assert main(["viz", "activations", "best.safetensors", "test:1", "--out", "a.png", "--max-layers", "2"]) == 0
    assert main(["viz", "report", ".", "--examples", "0"]) == 0
    assert roots == ["/recorded/data"] * 4
    assert main(["evaluate", "best.safetensors", "--data-dir", "/given"]) == 0
    assert roots[-1] == "/given"


def test_a_real_run_records_its_data_folder(shared_data, in_tmp, monkeypatch, capsys):
    assert main(["train", "--dataset", "mnist", "--data-dir", str(shared_data), "--limit", "256", "--epochs", "1",
                 "--out", "r", *FAST]) == 0
    config = cnnkit.io.load("r/best.safetensors").config
    assert config["data_dir"] == str(shared_data.resolve()) and config["train"]["limit"] == 256
    monkeypatch.delenv("CNNKIT_DATA", raising=False)
    (in_tmp / "elsewhere").mkdir()
    monkeypatch.chdir(in_tmp / "elsewhere")
    capsys.readouterr()
    assert main(["evaluate", "../r/best.safetensors"]) == 0  # no --data-dir: the recorded folder
    assert "on mnist test (10000 images)" in capsys.readouterr().out


def test_data_not_found_anywhere_in_the_cli_mentions_data_dir(in_tmp, monkeypatch, capsys):
    from urllib.error import URLError

    monkeypatch.setattr("cnnkit.data.download.urlopen", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    model = cnnkit.models.create("lenet5")
    model.config = {**model.config, "dataset": "mnist", "input_shape": [1, 28, 28],
                    "classes": [str(i) for i in range(10)], "data_dir": str(in_tmp / "gone")}
    cnnkit.io.save(model, in_tmp / "m.safetensors")
    for argv in (["evaluate", "m.safetensors"], ["viz", "activations", "m.safetensors", "test:0"]):
        err = one_line_error(capsys, argv, 1)
        assert "is not in" in err and "--data-dir" in err
