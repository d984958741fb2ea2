import io as stdio
import json

import numpy as np
import pytest

import cnnkit
from cnnkit import nn
from cnnkit.data import DataLoader
from cnnkit.data.transforms import Normalize
from cnnkit.models import register
from cnnkit.optim import SGD
from cnnkit.optim.lr_scheduler import StepLR
from cnnkit.train import Checkpoint, EarlyStopping, HistoryWriter, Trainer


@register("_trainer_test_mlp")
def _mlp(num_classes=10, seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32, generator=g), nn.ReLU(),
                         nn.Dropout(0.2, generator=np.random.default_rng(seed + 1)),
                         nn.Linear(32, num_classes, generator=g))


@pytest.fixture(scope="module")
def digits():
    train = cnnkit.data.load("digits", "train")
    test = cnnkit.data.load("digits", "test")
    return train, test


def _setup(digits, seed=0):
    train, test = digits
    model = cnnkit.models.create("_trainer_test_mlp")
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = StepLR(opt, step_size=2, gamma=0.5)
    norm = Normalize.for_dataset("digits")
    train_loader = DataLoader(train, 64, shuffle=True, transform=norm, seed=seed)
    val_loader = DataLoader(test, 200, transform=norm)
    return model, opt, sched, train_loader, val_loader


def test_fit_learns_digits_and_writes_run_dir(digits, tmp_path):
    model, opt, sched, train_loader, val_loader = _setup(digits)
    out = stdio.StringIO()
    trainer = Trainer(model, opt, scheduler=sched, callbacks=[HistoryWriter(tmp_path), Checkpoint(tmp_path)],
                      progress=False, out=out)
    history = trainer.fit(train_loader, val_loader, epochs=4)
    assert len(history) == 4
    assert history[-1]["val_top1"] > 0.9
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.05, 0.025, 0.025])
    assert (tmp_path / "best.safetensors").exists() and (tmp_path / "last.safetensors").exists()
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved[-1]["epoch"] == 4
    assert "epoch 4/4" in out.getvalue()
    best = cnnkit.io.load(tmp_path / "best.safetensors")
    result = Trainer(best, opt, out=None).evaluate(val_loader)
    assert result["top1"] == pytest.approx(max(h["val_top1"] for h in history))


def test_resume_gives_exactly_the_uninterrupted_weights(digits, tmp_path):
    model, opt, sched, train_loader, val_loader = _setup(digits)
    Trainer(model, opt, scheduler=sched, progress=False, out=None).fit(train_loader, val_loader, epochs=4)

    model2, opt2, sched2, train_loader2, val_loader2 = _setup(digits)
    first = Trainer(model2, opt2, scheduler=sched2, progress=False, out=None,
                    callbacks=[Checkpoint(tmp_path)])
    first.fit(train_loader2, val_loader2, epochs=2)

    model3, opt3, sched3, train_loader3, val_loader3 = _setup(digits, seed=123)  # wrong seed on purpose
    # scramble the fresh model so only the checkpoint can make it right
    for p in model3.parameters():
        p.data[...] = 0
    resumed = Trainer(model3, opt3, scheduler=sched3, progress=False, out=None)
    resumed.resume(tmp_path / "last.safetensors", train_loader3)
    assert resumed.epoch == 2
    resumed.fit(train_loader3, val_loader3, epochs=4)
    for (name, a), (_, b) in zip(model.state_dict().items(), model3.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in first.history] + [0.025, 0.025]


def test_nan_loss_stops_with_step_and_lr(digits):
    model, opt, sched, train_loader, val_loader = _setup(digits)
    for p in model.parameters():
        p.data[...] = np.nan
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 with learning rate 0.05"):
        Trainer(model, opt, progress=False, out=None).fit(train_loader, epochs=1)


def test_early_stopping_stops(digits):
    model, opt, sched, train_loader, val_loader = _setup(digits)
    for group in opt.param_groups:
        group["lr"] = 0.0  # nothing improves
    trainer = Trainer(model, opt, callbacks=[EarlyStopping(patience=2)], progress=False, out=None)
    history = trainer.fit(train_loader, val_loader, epochs=10)
    assert len(history) == 3


def test_ensemble_predict_proba_averages(digits):
    from cnnkit.train import predict_proba

    model, opt, sched, train_loader, val_loader = _setup(digits)
    other = cnnkit.models.create("_trainer_test_mlp", seed=5)
    p1, labels = predict_proba([model], val_loader)
    p2, _ = predict_proba([other], val_loader)
    pe, _ = predict_proba([model, other], val_loader)
    np.testing.assert_allclose(pe, (p1 + p2) / 2, rtol=1e-6)
    np.testing.assert_allclose(pe.sum(axis=1), 1.0, rtol=1e-6)
    assert len(labels) == len(pe)
