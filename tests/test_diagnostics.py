"""Per-layer training diagnostics: the step hooks of the trainer, statistics, warnings, history."""
import io
import json

import numpy as np
import pytest

from cnnkit.nn import Linear, Sequential
from cnnkit.nn.activation import ReLU, Tanh
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.flatten import Flatten
from cnnkit.optim import SGD
from cnnkit.train.callbacks import HistoryWriter
from cnnkit.train.diagnostics import Diagnostics, activation_stats
from cnnkit.train.trainer import Trainer
from cnnkit.viz.curves import plot_diagnostics


def batches(rng, n=6, batch=8):
    return [(rng.standard_normal((batch, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, batch)) for _ in range(n)]


def small_model(rng):
    return Sequential(Conv2d(1, 4, 3, padding=1, generator=rng), ReLU(), Flatten(), Linear(4 * 36, 3, generator=rng))


class StepSpy:
    def __init__(self):
        self.calls = []

    def on_step_begin(self, trainer, step):
        self.calls.append(("begin", step, trainer.global_step))

    def on_step_end(self, trainer, step):
        grads = [p.grad is not None for p in trainer.model.parameters()]
        self.calls.append(("end", step, trainer.global_step, all(grads)))


def test_trainer_calls_step_hooks_around_each_update(rng):
    spy = StepSpy()
    trainer = Trainer(small_model(rng), SGD(small_model(rng).parameters(), lr=0.1), callbacks=[spy], out=None)
    trainer.optimizer = SGD(trainer.model.parameters(), lr=0.1)
    trainer.fit(batches(rng, n=3), epochs=1)
    assert spy.calls == [("begin", 1, 0), ("end", 1, 1, True), ("begin", 2, 1), ("end", 2, 2, True),
                         ("begin", 3, 2), ("end", 3, 3, True)]


def test_activation_stats_dead_units():
    y = np.zeros((4, 2, 3))
    y[1, 0, 0] = 2.0  # one unit alive in one image of the batch: not dead
    s = activation_stats(y, relu=True)
    assert s["dead"] == pytest.approx(5 / 6)
    assert s["act_mean"] == pytest.approx(2 / 24) and "dead" not in activation_stats(y, relu=False)


def test_diagnostics_records_stats_and_history(tmp_path, rng):
    model = small_model(rng)
    optimizer = SGD(model.parameters(), lr=0.05)
    diag = Diagnostics(every=2, out_dir=tmp_path, plot=plot_diagnostics)
    trainer = Trainer(model, optimizer, callbacks=[HistoryWriter(tmp_path), diag], out=None)
    data = batches(rng, n=5)
    snapshot = {}

    class Before:  # the weights of step 4 before its update, to check the update ratio
        def on_step_begin(self, trainer, step):
            if step == 4:
                snapshot["w"] = model[3].weight.data.copy()

        def on_step_end(self, trainer, step):
            if step == 4:
                snapshot["grad"] = model[3].weight.grad.copy()
                snapshot["w_after"] = model[3].weight.data.copy()

    trainer.callbacks.insert(0, Before())
    trainer.fit(data, epochs=2)
    assert [r["step"] for r in diag.records] == [1, 2, 4, 6, 8, 10]
    assert [r["epoch"] for r in diag.records] == [1, 1, 1, 2, 2, 2]
    step4 = diag.records[2]["layers"]
    assert set(step4) == {"0", "1", "3"}
    assert set(step4["1"]) == {"act_mean", "act_std", "dead"}
    assert step4["3"]["grad_norm"] == pytest.approx(np.linalg.norm(snapshot["grad"]), rel=1e-5)
    ratio = np.linalg.norm(snapshot["w_after"] - snapshot["w"]) / np.linalg.norm(snapshot["w"])
    assert step4["3"]["update_ratio"] == pytest.approx(ratio, rel=1e-5)
    # the ReLU's input is the conv's output: their statistics agree
    x = data[3][0]
    y = model[0](x)  # weights have moved since; only check the recorded figures are plausible
    assert 0 <= step4["1"]["dead"] <= 1 and step4["0"]["act_std"] > 0 and y.shape == (8, 4, 6, 6)
    assert all("forward" not in vars(m) for m in model.modules())  # nothing left patched
    history = json.loads((tmp_path / "history.json").read_text())
    means = np.mean([r["layers"]["3"]["update_ratio"] for r in diag.records if r["epoch"] == 2])
    assert history[1]["diag/3/update_ratio"] == pytest.approx(means)
    assert "diag/1/dead" in (tmp_path / "history.csv").read_text().splitlines()[0]
    assert len(json.loads((tmp_path / "diagnostics.json").read_text())) == 6
    assert (tmp_path / "diagnostics.png").stat().st_size > 1000


def test_diagnostics_warns_when_activations_vanish(rng):
    # a deep tanh net with tiny weights: the notes' example of vanishing activations
    layers = []
    for _ in range(6):
        lin = Linear(20, 20, generator=rng)
        lin.weight.data *= 0.01
        lin.bias.data[:] = 0
        layers += [lin, Tanh()]
    model = Sequential(Flatten(), *layers, Linear(20, 3, generator=rng))
    out = io.StringIO()
    diag = Diagnostics(every=100)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), callbacks=[diag], out=out, progress=False)
    data = [(rng.standard_normal((16, 1, 4, 5)).astype(np.float32), rng.integers(0, 3, 16)) for _ in range(2)]
    trainer.fit(data, epochs=1)
    assert diag.warnings and all("vanish" in w for w in diag.warnings)
    assert "diagnostics warning: step 1: the activations of layer" in out.getvalue()
    assert any("layer 11 (Linear)" in w for w in diag.warnings)  # the 6th Linear
    assert len(diag.warnings) == len(set(diag.warnings))  # once per layer
    with pytest.raises(ValueError, match="every must be a positive int"):
        Diagnostics(every=0)
