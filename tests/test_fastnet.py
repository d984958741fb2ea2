"""FastNet, the model of the fast CIFAR-10 recipe: its whitening filters decorrelate patches (and
sit in the convolution's weight layout), the layer is frozen, shapes and counts follow the layout,
summary and ONNX export work."""
import numpy as np
import pytest

import cnnkit
from cnnkit import models
from cnnkit.models.fastnet import FastNet, whitening_filters
from cnnkit.nn import Conv2d


def _correlated_images(rng, n=64, size=12):
    """Images whose neighbouring pixels and channels are strongly correlated (as in photos)."""
    base = rng.standard_normal((n, 1, size, size))
    smooth = (base + np.roll(base, 1, axis=2) + np.roll(base, 1, axis=3)) / 3
    colour = np.array([1.0, 0.8, 0.5]).reshape(1, 3, 1, 1)
    return smooth * colour + 0.1 * rng.standard_normal((n, 3, size, size))


def test_whitened_patches_have_identity_covariance_through_the_convolution(rng):
    images = _correlated_images(rng)
    filters = whitening_filters(images, eps=1e-12)
    assert filters.shape == (24, 3, 2, 2)
    np.testing.assert_array_equal(filters[12:], -filters[:12])
    conv = Conv2d(3, 24, 2, bias=False, dtype=np.float64)
    conv.weight.data[...] = filters
    out = conv(images)[:, :12]  # (N, 12, 11, 11): one whitened component per channel
    flat = out.transpose(0, 2, 3, 1).reshape(-1, 12)
    flat = flat - flat.mean(axis=0)
    np.testing.assert_allclose(flat.T @ flat / len(flat), np.eye(12), atol=1e-8)


def test_eps_damps_the_quiet_directions(rng):
    images = _correlated_images(rng)
    damped = whitening_filters(images, eps=1.0)
    sharp = whitening_filters(images, eps=1e-12)
    assert np.linalg.norm(damped) < np.linalg.norm(sharp)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 3, 8, 8), np.int64), r"expects float images \(N, C, H, W\), got int64"),
    (np.zeros((3, 8, 8)), "expects float images"),
    (np.zeros((2, 3, 1, 8)), r"at least one image of at least 2x2 pixels"),
    (np.full((2, 3, 4, 4), np.nan), "NaN or infinite"),
])
def test_whitening_refuses_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        whitening_filters(images)


def test_layout_counts_and_summary():
    model = models.create("fastnet", seed=0)
    assert isinstance(model, FastNet) and model.widths == (32, 64, 128)
    s = cnnkit.summary(model, (3, 32, 32))
    # whiten 24*12 + 24; per group 9*(c_in + c_out)*c_out + 2 BatchNorms of 2*c_out; fc 128*10
    groups = sum(9 * (cin + cout) * cout + 4 * cout for cin, cout in ((24, 32), (32, 64), (64, 128)))
    assert s.total_params == 24 * 12 + 24 + groups + 128 * 10 == 295_096
    macs = 31 * 31 * 24 * 12 + 31 * 31 * 32 * 24 * 9 + 15 * 15 * 32 * 32 * 9 + 15 * 15 * 64 * 32 * 9 \
        + 7 * 7 * 64 * 64 * 9 + 7 * 7 * 128 * 64 * 9 + 3 * 3 * 128 * 128 * 9 + 128 * 10
    assert s.total_macs == macs
    shapes = {row["name"]: row["output_shape"] for row in s.rows}
    assert shapes["whiten"] == (24, 31, 31) and shapes["layer1"] == (32, 15, 15)
    assert shapes["layer3"] == (128, 3, 3) and shapes["pool"] == (128, 1, 1)
    wide = models.create("fastnet", widths=(8, 16, 24), num_classes=5)
    assert wide.output_shape((3, 32, 32)) == (5,)
    with pytest.raises(ValueError, match="widths must be three positive ints"):
        models.fastnet(widths=(32, 64))
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        models.fastnet(num_classes=0)


def test_init_from_data_sets_frozen_filters_and_training_leaves_them(rng):
    model = models.create("fastnet", widths=(8, 8, 8), seed=1)
    images = _correlated_images(rng, n=8, size=32).astype(np.float32)
    model.init_from_data(images)
    np.testing.assert_allclose(model.whiten.weight.data, whitening_filters(images), rtol=1e-6)
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    before = model.whiten.weight.data.copy()
    opt = cnnkit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    lossf = cnnkit.nn.CrossEntropyLoss(label_smoothing=0.2)
    for _ in range(2):
        loss = lossf(model(images), np.arange(8) % 10)
        opt.zero_grad()
        model.backward(lossf.backward(), input_grad=False)
        opt.step()
    assert np.isfinite(loss)
    np.testing.assert_array_equal(model.whiten.weight.data, before)
    assert model.whiten.weight.grad is None and model.whiten.bias.grad is not None
    # whiten=False: an ordinary trained first layer, which init_from_data leaves alone
    learned = models.create("fastnet", widths=(8, 8, 8), whiten=False, seed=1)
    kept = learned.whiten.weight.data.copy()
    learned.init_from_data(images)
    np.testing.assert_array_equal(learned.whiten.weight.data, kept)
    assert learned.whiten.weight.requires_grad


def test_onnx_export_matches(tmp_path, rng):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import cnnkit.onnx as conx

    model = models.create("fastnet", widths=(8, 16, 16), seed=0)
    model.init_from_data(_correlated_images(rng, n=4, size=32).astype(np.float32))
    model.eval()
    path = tmp_path / "fastnet.onnx"
    conx.export(model, path, (3, 32, 32))
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    np.testing.assert_allclose(model(x), ref, rtol=1e-4, atol=1e-4)
