"""The exponential moving average of the weights (cnnkit.train.ema) and the trainer's use of it:
the recurrence, BatchNorm buffers, swapping in and out, validation and checkpoints with the
averaged weights, and a resumed run that continues the live and the averaged weights bit for bit."""
import io as stdio

import numpy as np
import pytest

import cnnkit
from cnnkit import nn
from cnnkit.data import DataLoader
from cnnkit.data.transforms import Normalize
from cnnkit.models import register
from cnnkit.optim import SGD
from cnnkit.train import Checkpoint, Trainer
from cnnkit.train.ema import ExponentialMovingAverage


@register("_ema_test_net")
def _net(num_classes=10, seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, generator=g), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, num_classes, generator=g))


@pytest.fixture(scope="module")
def digits():
    return cnnkit.data.load("digits", "train"), cnnkit.data.load("digits", "test")


def _setup(digits, seed=0, ema=0.9):
    train, test = digits
    model = cnnkit.models.create("_ema_test_net")
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    norm = Normalize.for_dataset("digits")
    loader = DataLoader(train, 64, shuffle=True, transform=norm, seed=seed)
    val = DataLoader(test, 200, transform=norm)
    return model, opt, loader, val


def test_update_follows_the_recurrence_with_warmup_for_parameters_and_buffers(rng):
    model = _net()
    ema = ExponentialMovingAverage(model, 0.9)
    start = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    expected = dict(start)
    for t in range(4):
        for p in model.parameters():
            p.data += rng.standard_normal(p.data.shape).astype(np.float32)
        bn = model[1]
        bn.running_mean += 1.0
        bn.num_batches_tracked += 1
        d = min(0.9, (1 + t) / (10 + t))
        assert ema.current_decay() == pytest.approx(d)
        ema.update()
        live = model.state_dict()
        for key in expected:
            if key.endswith("num_batches_tracked"):
                expected[key] = live[key]
            else:
                expected[key] = d * expected[key] + (1 - d) * live[key].astype(np.float64)
    assert ema.updates == 4
    for key, value in ema.average.items():
        np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert ema.average["1.num_batches_tracked"] == 4 and ema.average["1.num_batches_tracked"].dtype == np.int64
    # without warmup the first update already uses the decay
    plain = ExponentialMovingAverage(_net(), 0.5, warmup=False)
    assert plain.current_decay() == 0.5


def test_applied_swaps_in_place_and_back():
    model = _net()
    ema = ExponentialMovingAverage(model, 0.5, warmup=False)
    weight = model[0].weight.data
    weight += 2.0
    ema.update()
    live = {k: v.copy() for k, v in model.state_dict().items()}
    with ema.applied() as inside:
        assert inside is model
        assert model[0].weight.data is weight  # same array, new values
        np.testing.assert_array_equal(model[0].weight.data, ema.average["0.weight"])
        np.testing.assert_allclose(model[0].weight.data, live["0.weight"] - 1.0, rtol=1e-6)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, live[key], err_msg=key)
    ema.copy_to_model()
    np.testing.assert_array_equal(model[0].weight.data, ema.average["0.weight"])


def test_applied_puts_back_a_copy_the_caller_made():
    model = _net()
    ema = ExponentialMovingAverage(model, 0.5, warmup=False)
    model[0].weight.data[...] += 2.0
    ema.update()
    arrays = dict(model.state_dict())
    live = {k: v.copy() for k, v in arrays.items()}
    with ema.applied(live):
        np.testing.assert_array_equal(model[0].weight.data, ema.average["0.weight"])
    for key, value in model.state_dict().items():
        assert value is arrays[key]  # the model's own arrays, written in place
        np.testing.assert_array_equal(value, live[key], err_msg=key)


def test_trainer_save_leaves_the_training_weights_as_they_were(digits, tmp_path):
    model, opt, loader, _ = _setup(digits)
    trainer = Trainer(model, opt, progress=False, out=None, ema=0.9)
    trainer.fit(loader, None, epochs=1)
    arrays = dict(model.state_dict())
    before = {k: v.copy() for k, v in arrays.items()}
    trainer.save(tmp_path / "a.safetensors")
    for key, value in model.state_dict().items():
        assert value is arrays[key]
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    saved = cnnkit.io.load_checkpoint(tmp_path / "a.safetensors")
    for key, value in saved.model.state_dict().items():
        np.testing.assert_array_equal(value, trainer.ema.average[key], err_msg=key)


def test_constant_weights_stay_exactly_constant():
    model = _net()
    before = {k: v.copy() for k, v in model.state_dict().items()}
    ema = ExponentialMovingAverage(model, 0.999)
    for _ in range(50):
        ema.update()
    for key, value in ema.average.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan"), True, "0.9"])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match=r"EMA decay must be a number in \[0, 1\)"):
        ExponentialMovingAverage(_net(), decay)


def test_state_dict_round_trip_and_mismatch():
    model = _net()
    ema = ExponentialMovingAverage(model, 0.9)
    model[0].weight.data += 1
    ema.update()
    other = ExponentialMovingAverage(_net(seed=5), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.9 and other.updates == 1
    for key in ema.average:
        np.testing.assert_array_equal(other.average[key], ema.average[key])
    small = ExponentialMovingAverage(_net(num_classes=3), 0.9)
    with pytest.raises(ValueError, match=r"4\.weight has shape \(10, 256\), the model's is \(3, 256\)"):
        small.load_state_dict(ema.state_dict())
    with pytest.raises(TypeError, match="expects a cnnkit Module"):
        ExponentialMovingAverage(object(), 0.9)


@pytest.mark.parametrize("updates", [-9, 2.5, True, "3"])
def test_a_file_with_a_bad_update_count_is_refused_and_changes_nothing(updates):
    ema = ExponentialMovingAverage(_net(), 0.9)
    before = {key: value.copy() for key, value in ema.average.items()}
    state = dict(ExponentialMovingAverage(_net(seed=5), 0.5).state_dict(), updates=updates)
    with pytest.raises(ValueError, match="updates must be a non-negative integer"):
        ema.load_state_dict(state)
    assert ema.decay == 0.9 and ema.updates == 0
    for key, value in before.items():
        np.testing.assert_array_equal(ema.average[key], value, err_msg=key)


def test_trainer_validates_and_saves_the_averaged_weights(digits, tmp_path):
    model, opt, loader, val = _setup(digits)
    trainer = Trainer(model, opt, callbacks=[Checkpoint(tmp_path)], progress=False, out=stdio.StringIO(), ema=0.9)
    history = trainer.fit(loader, val, epochs=2)
    assert trainer.ema.updates == trainer.global_step == 2 * len(loader)
    saved = cnnkit.io.load_checkpoint(tmp_path / "last.safetensors")
    for key, value in saved.model.state_dict().items():  # the file's weights are the average
        np.testing.assert_array_equal(value, trainer.ema.average[key], err_msg=key)
    live = saved.training_state["ema"]["training_weights"]
    for key, value in model.state_dict().items():  # and the live ones are in the training state
        np.testing.assert_array_equal(live[key], value, err_msg=key)
    assert not np.array_equal(live["0.weight"], trainer.ema.average["0.weight"])
    # the validation figure is the averaged model's
    averaged = Trainer(saved.model, opt, out=None).evaluate(val)
    assert averaged["top1"] == pytest.approx(history[-1]["val_top1"])
    assert averaged["top1"] > 0.8


def test_resume_continues_live_and_averaged_weights_bit_for_bit(digits, tmp_path):
    model, opt, loader, val = _setup(digits)
    whole = Trainer(model, opt, progress=False, out=None, ema=0.95)
    whole.fit(loader, val, epochs=3)

    model2, opt2, loader2, val2 = _setup(digits)
    Trainer(model2, opt2, callbacks=[Checkpoint(tmp_path)], progress=False, out=None, ema=0.95).fit(loader2, val2, 1)
    model3, opt3, loader3, val3 = _setup(digits, seed=99)
    for p in model3.parameters():
        p.data[...] = 0  # only the checkpoint can make it right
    resumed = Trainer(model3, opt3, progress=False, out=None, ema=0.95)
    resumed.resume(tmp_path / "last.safetensors", loader3)
    resumed.fit(loader3, val3, epochs=3)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(model3.state_dict()[key], value, err_msg=key)
        np.testing.assert_array_equal(resumed.ema.average[key], whole.ema.average[key], err_msg=key)
    assert resumed.ema.updates == whole.ema.updates


def test_resume_with_and_without_an_average_must_agree(digits, tmp_path):
    model, opt, loader, val = _setup(digits)
    Trainer(model, opt, callbacks=[Checkpoint(tmp_path / "ema")], progress=False, out=None, ema=0.9).fit(loader, val, 1)
    Trainer(model, opt, callbacks=[Checkpoint(tmp_path / "plain")], progress=False, out=None).fit(loader, val, 1)
    with pytest.raises(ValueError, match=r"with an EMA of the weights \(decay 0.9\): resume it with ema=0.9"):
        Trainer(model, opt, out=None).resume(tmp_path / "ema" / "last.safetensors", loader)
    with pytest.raises(ValueError, match="saved without an EMA of the weights"):
        Trainer(model, opt, out=None, ema=0.9).resume(tmp_path / "plain" / "last.safetensors", loader)
    with pytest.raises(ValueError, match="must average the model being trained"):
        Trainer(model, opt, out=None, ema=ExponentialMovingAverage(_net(), 0.9))
