"""`cnnkit train` runs one can trust (issue 17, items 4-7): --seed reproduces the weights of every
recipe's model; --resume needs only the checkpoint; Ctrl-C never loses a checkpoint; runs never
overwrite each other; interrupted writes leave nothing behind; checkpoints get the usual file mode.

All on the bundled digits (no download), one or two epochs, in-process."""
import os
import shlex
import signal

import numpy as np
import pytest

import cnnkit
from cnnkit.cli import main
from cnnkit.train.trainer import Trainer

FAST = ["--no-progress", "--no-report"]


def train(*argv):
    return main(["train", *argv, *FAST])


def weights(path):
    return cnnkit.io.load_state_dict(path)


def assert_same_weights(a, b):
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- item 4: --seed seeds the initial weights of every recipe's model --------------------------------
@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion-mnist", "cifar10"])
def test_seed_gives_identical_weights_for_every_recipe_model(dataset):
    from cnnkit.cli.common import build_model
    from cnnkit.train.recipes import recipe

    shape = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}[dataset]
    name = recipe(dataset)["model"]
    first, again, other = (build_model(name, shape, 10, seed=s) for s in (3, 3, 4))
    assert_same_weights(first.state_dict(), again.state_dict())
    assert any(not np.array_equal(first.state_dict()[k], other.state_dict()[k]) for k in first.state_dict())
    # and one training step from there stays identical
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    y = np.arange(4) % 10
    for model in (first, again):
        trainer = Trainer(model, cnnkit.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), out=None)
        trainer.train_step(x, y)
    assert_same_weights(first.state_dict(), again.state_dict())


def test_same_seed_same_command_gives_bit_identical_runs(in_tmp):
    for out in ("a", "b", "c"):
        assert train("--epochs", "1", "--seed", "3" if out != "c" else "4", "--out", out, "--limit", "400") == 0
    assert_same_weights(weights("a/last.safetensors"), weights("b/last.safetensors"))
    a, c = weights("a/last.safetensors"), weights("c/last.safetensors")
    assert not np.array_equal(a["0.weight"], c["0.weight"])  # digitnet follows --seed now
    assert cnnkit.io.load("a/last.safetensors").config["train"]["seed"] == 3


# -- item 5: --resume is self-contained ----------------------------------------------------------------
def _interrupt_at_step(monkeypatch, step):
    original = Trainer.train_step

    def train_step(self, x, y):
        if self.global_step == step:
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    return original


def test_the_printed_resume_command_works_and_matches_an_uninterrupted_run(in_tmp, monkeypatch, capsys):
    settings = ["--epochs", "3", "--limit", "300", "--seed", "5", "--lr", "0.03", "--batch-size", "16"]
    assert train(*settings, "--out", "whole") == 0
    original = _interrupt_at_step(monkeypatch, 25)  # during epoch 2 (17 steps per epoch)
    assert train(*settings, "--out", "cut") == 130
    text = capsys.readouterr().out
    command = text.split("Continue with: ")[1].strip()
    assert command == "cnnkit train --resume cut/last.safetensors"
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(shlex.split(command)[1:] + FAST) == 0  # exactly as printed: no dataset, model or epochs flags
    text = capsys.readouterr().out
    assert "resumed from cut/last.safetensors after epoch 1" in text and "epoch 3/3" in text
    assert_same_weights(weights("whole/last.safetensors"), weights("cut/last.safetensors"))


def test_resume_refuses_flags_that_contradict_the_checkpoint(in_tmp, capsys):
    assert train("--epochs", "1", "--out", "r", "--limit", "200") == 0
    before = (in_tmp / "r" / "last.safetensors").read_bytes()
    code = main(["train", "--resume", "r/last.safetensors", "--dataset", "mnist", "--lr", "0.2", "--model", "lenet5",
                 "--out", "elsewhere", *FAST])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "r/last.safetensors is digitnet trained on digits (1x8x8, 10 classes)" in err
    for part in ("--dataset mnist (the run's is digits)", "--lr 0.2 (the run's is 0.05)",
                 "--model lenet5 (the run's is digitnet)", "--out elsewhere"):
        assert part in err
    assert (in_tmp / "r" / "last.safetensors").read_bytes() == before and not (in_tmp / "elsewhere").exists()
    # flags equal to the recorded ones are no conflict; --epochs sets a new total
    assert main(["train", "--resume", "r/last.safetensors", "--lr", "0.05", "--limit", "200", "--epochs", "2",
                 *FAST]) == 0


def test_resume_of_a_finished_run_asks_for_more_epochs(in_tmp, capsys):
    assert train("--epochs", "1", "--out", "r", "--limit", "200") == 0
    capsys.readouterr()
    assert main(["train", "--resume", "r/last.safetensors", *FAST]) == 2
    assert "already completed 1 of its 1 epochs; give --epochs N with N > 1" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_that_does_not_record_a_run(in_tmp, capsys):
    cnnkit.io.save(cnnkit.models.create("digitnet"), in_tmp / "plain.safetensors")
    assert main(["train", "--resume", "plain.safetensors", *FAST]) == 2
    err = capsys.readouterr().err
    assert "not written by `cnnkit train`" in err and "--init plain.safetensors" in err


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step"])
def test_a_schedule_continued_past_its_end_does_not_send_the_lr_back_up(in_tmp, schedule, capsys):
    assert train("--epochs", "2", "--out", "r", "--limit", "200", "--schedule", schedule) == 0
    end_lr = cnnkit.io.load_checkpoint("r/last.safetensors").training_state["optimizer"]["param_groups"][0]["lr"]
    assert main(["train", "--resume", "r/last.safetensors", "--epochs", "5", *FAST]) == 0
    assert "note: the " + schedule + " schedule was made for 2 epochs" in capsys.readouterr().out
    history = cnnkit.io.load_checkpoint("r/last.safetensors").training_state["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["lr"] for h in history[2:]] == pytest.approx([end_lr] * 3)


def test_trainer_schedule_steps_holds_the_rate(rng):
    from cnnkit.optim.lr_scheduler import CosineAnnealingLR

    model = cnnkit.nn.Linear(2, 2, generator=rng)
    opt = cnnkit.optim.SGD(model.parameters(), lr=1.0)
    trainer = Trainer(model, opt, scheduler=CosineAnnealingLR(opt, T_max=2), schedule_steps=2, out=None)
    lrs = []
    for _ in range(5):
        trainer._step_scheduler()
        lrs.append(trainer.lr)
    assert lrs == pytest.approx([0.5, 0.0, 0.0, 0.0, 0.0])  # without the hold: 0.5, 0, 0.5, 1, 0.5
    with pytest.raises(ValueError, match="schedule_steps must be a positive integer"):
        Trainer(model, opt, schedule_steps=0)


# -- item 6: Ctrl-C never loses a checkpoint ----------------------------------------------------------
def test_ctrl_c_in_the_first_epoch_saves_a_resumable_checkpoint(in_tmp, monkeypatch, capsys):
    _interrupt_at_step(monkeypatch, 2)
    assert train("--epochs", "2", "--limit", "200") == 130
    text = capsys.readouterr().out
    run = in_tmp / "runs" / "digits-digitnet"
    assert "interrupted during epoch 1" in text and "the last complete epoch (0)" in text
    assert (run / "interrupted.safetensors").exists()
    assert cnnkit.io.load_checkpoint(run / "last.safetensors").training_state["epoch"] == 0
    monkeypatch.undo()
    assert main(["train", "--resume", str(run / "last.safetensors"), *FAST]) == 0


def test_ctrl_c_while_a_checkpoint_is_written_finishes_the_write(in_tmp, monkeypatch, capsys):
    from cnnkit.io import containers

    write = containers._WRITERS[".safetensors"]
    calls = []

    def write_then_ctrl_c(temporary, arrays, metadata):
        calls.append(temporary)
        write(temporary, arrays, metadata)
        if len(calls) == 3:  # epoch 1's best.safetensors: Ctrl-C lands mid-checkpoint
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setitem(containers._WRITERS, ".safetensors", write_then_ctrl_c)
    assert train("--epochs", "3", "--limit", "200", "--out", "r") == 130
    assert "interrupted during epoch 2" in capsys.readouterr().out
    state = cnnkit.io.load_checkpoint("r/last.safetensors").training_state
    assert state["epoch"] == 1  # the epoch's last.safetensors was written too, after the Ctrl-C
    assert cnnkit.io.load_checkpoint("r/best.safetensors").training_state["epoch"] == 1
    assert not list((in_tmp / "r").glob("*.tmp"))


def test_hold_interrupts_delivers_after_the_block():
    from cnnkit.train.trainer import hold_interrupts

    done = []
    with pytest.raises(KeyboardInterrupt):
        with hold_interrupts():
            with hold_interrupts():  # nested: delivered once, by the outermost
                os.kill(os.getpid(), signal.SIGINT)
                done.append("inner")
            done.append("outer")
    assert done == ["inner", "outer"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# -- item 7: runs never overwrite each other ------------------------------------------------------------
def test_default_run_folders_are_numbered_not_overwritten(in_tmp, capsys):
    assert train("--epochs", "1", "--limit", "100") == 0
    first = (in_tmp / "runs/digits-digitnet/last.safetensors").read_bytes()
    assert train("--epochs", "1", "--limit", "100", "--seed", "1") == 0
    spec = "conv3-8 maxpool fc-10"
    assert train("--epochs", "1", "--limit", "100", "--model", spec) == 0
    assert train("--epochs", "1", "--limit", "100", "--model", "conv3-4 fc-10") == 0
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == [
        "digits-digitnet", "digits-digitnet-2", "digits-spec", "digits-spec-2"]
    assert (in_tmp / "runs/digits-digitnet/last.safetensors").read_bytes() == first
    assert "run directory runs/digits-digitnet-2" in capsys.readouterr().out


def test_explicit_out_reuses_a_folder_and_says_so(in_tmp, capsys):
    assert train("--epochs", "1", "--limit", "100", "--out", "mine") == 0
    assert train("--epochs", "1", "--limit", "100", "--out", "mine") == 0
    assert "reusing the run folder mine (--out)" in capsys.readouterr().out
    assert not (in_tmp / "runs").exists()


def test_a_failed_run_removes_its_own_folder_only(in_tmp, capsys):
    assert train("--epochs", "1", "--limit", "100") == 0
    assert train("--epochs", "1", "--limit", "100", "--lr", "1e6") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lower --lr (the digits recipe uses 0.05)" in err and "run folder was removed" in err
    assert sorted(p.name for p in (in_tmp / "runs").iterdir()) == ["digits-digitnet"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--limit", "-5"], "argument --limit: must be an integer >= 1, got -5"),
    (["train", "--limit", "0"], "argument --limit: must be an integer >= 1, got 0"),
    (["train", "--limit", "1"], "--limit 1 with --val-split 0.1 leaves no training images"),
    (["predict", "x.safetensors", "y.png", "--top", "0"], "argument --top: must be an integer >= 1, got 0"),
    (["viz", "patches", "x.safetensors", "--layer", "1", "--channel", "0", "-k", "-1"],
     "argument -k/--top: must be an integer >= 1, got -1"),
    (["viz", "confusion", "x.safetensors", "--limit", "0"], "argument --limit: must be an integer >= 1, got 0"),
])
def test_limit_and_top_reject_nonsense(in_tmp, capsys, argv, message):
    assert main(argv + (FAST if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (in_tmp / "runs").exists()


def test_conv_demo_does_not_write_into_the_current_folder(in_tmp, capsys):
    assert main(["viz", "conv-demo", "--size", "3", "--channels", "1", "--filters", "1"]) == 0
    assert capsys.readouterr().out.strip() == "runs/viz/conv-demo.png"
    assert [p.name for p in in_tmp.iterdir()] == ["runs"]


def test_stale_temporary_files_are_removed_and_nothing_else(in_tmp):
    run = in_tmp / "r"
    run.mkdir()
    stale = [".last.safetensors.0123456789ab.tmp", ".best.safetensors.a1b2c3d4e5f6.tmp", "history.json.tmp",
             "history.csv.tmp"]
    kept = ["notes.tmp", ".my.safetensors.0123456789ab.tmp", "data.csv"]
    for name in stale + kept:
        (run / name).write_bytes(b"x")
    assert train("--epochs", "1", "--limit", "100", "--out", "r") == 0
    left = {p.name for p in run.iterdir()}
    assert not left & set(stale) and set(kept) <= left


def test_checkpoints_get_the_same_file_mode_as_everything_else(in_tmp):
    old = os.umask(0o022)
    try:
        assert train("--epochs", "1", "--limit", "100", "--out", "r") == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (in_tmp / "r").iterdir()}
    assert modes["last.safetensors"] == modes["best.safetensors"] == modes["history.json"] == 0o644
