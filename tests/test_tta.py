"""Flip test-time augmentation (cnnkit.train.tta.FlipAveraged) and `cnnkit evaluate --tta`."""
import numpy as np
import pytest

import cnnkit
from cnnkit import nn
from cnnkit.cli import main
from cnnkit.train import predict_proba
from cnnkit.train.tta import FlipAveraged


def _softmax64(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _net(seed=0):
    g = np.random.default_rng(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, generator=g), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 6, 7, generator=g)).eval()


def test_output_is_the_log_of_the_averaged_probabilities(rng):
    model = _net()
    x = rng.standard_normal((5, 3, 5, 6)).astype(np.float32)  # non-square: the flip is along the width
    expected = (_softmax64(model(x)) + _softmax64(model(x[:, :, :, ::-1].copy()))) / 2
    y = FlipAveraged(model)(x)
    assert y.shape == (5, 7) and y.dtype == np.float32
    np.testing.assert_allclose(np.exp(y.astype(np.float64)), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_softmax64(y), expected, rtol=1e-5, atol=1e-7)  # usable as logits
    assert FlipAveraged(model).output_shape((3, 5, 6)) == (7,)


def test_a_mirror_symmetric_input_changes_nothing_but_the_normalisation(rng):
    model = _net()
    half = rng.standard_normal((2, 3, 5, 3)).astype(np.float32)
    x = np.concatenate([half, half[:, :, :, ::-1]], axis=3)  # each image equals its mirror
    np.testing.assert_allclose(np.exp(FlipAveraged(model)(x)), _softmax64(model(x)), rtol=1e-5, atol=1e-7)


def test_huge_logits_stay_finite():
    class Huge(nn.Module):
        def forward(self, x):
            return np.stack([x[:, 0, 0, 0] * 1e30, -x[:, 0, 0, -1] * 1e30], axis=1).astype(np.float32)

    x = np.ones((2, 1, 1, 3), np.float32)
    x[:, 0, 0, -1] = -1
    y = FlipAveraged(Huge())(x)
    assert np.all(np.isfinite(y))


def test_misuse_is_refused(rng):
    wrapped = FlipAveraged(_net())
    with pytest.raises(ValueError, match=r"flips images \(N, C, H, W\), got an input of shape \(2, 3\)"):
        wrapped(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="expects a cnnkit Module"):
        FlipAveraged(lambda x: x)
    y = wrapped(rng.standard_normal((1, 3, 5, 6)).astype(np.float32))
    with pytest.raises(NotImplementedError, match="evaluation only"):
        wrapped.backward(np.ones_like(y))


def test_evaluate_tta_prints_both_accuracies(tmp_path, capsys, shared_data):
    model = cnnkit.models.create("fastnet", seed=0)
    test = cnnkit.data.load("cifar10", "test", root=shared_data)
    model.init_from_data(cnnkit.data.transforms.Normalize.for_dataset("cifar10")(test.images[:200] / np.float32(255)))
    model.config.update(dataset="cifar10", input_shape=[3, 32, 32], classes=list(test.classes),
                        data_dir=str(shared_data))
    path = tmp_path / "m.safetensors"
    cnnkit.io.save(model, path)
    assert main(["evaluate", str(path), "--tta"]) == 0
    out = capsys.readouterr().out
    loader = cnnkit.data.DataLoader(test, 500, transform=cnnkit.data.transforms.Normalize.for_dataset("cifar10"))
    with_tta, labels = predict_proba([FlipAveraged(cnnkit.io.load(path))], loader)
    plain, _ = predict_proba([cnnkit.io.load(path)], loader)
    assert f"accuracy with flip TTA {np.mean(with_tta.argmax(1) == labels):.2%}" in out
    assert f"without TTA: {np.mean(plain.argmax(1) == labels):.2%}" in out
