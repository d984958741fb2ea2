"""A BatchNorm2d and the ReLU after it in a chain run as one op in training mode
(nn.containers.fuse_norm_relu): the same forward, gradients and running statistics as the two
layers run one by one, on the NumPy kernels (float64) and on oneDNN (float32), NaN included."""
import copy

import numpy as np
import pytest

import cnnkit
from cnnkit.nn import BatchNorm2d, Conv2d, ReLU, Sequential
from onednn_helpers import REASON


def make(rng, dtype):
    return Sequential(Conv2d(3, 16, 3, padding=1, dtype=dtype, generator=rng), BatchNorm2d(16, dtype=dtype), ReLU(),
                      Conv2d(16, 16, 3, padding=1, dtype=dtype, generator=rng), BatchNorm2d(16, dtype=dtype), ReLU())


def one_by_one(model, x):
    """Forward and backward calling each layer separately: no fusion."""
    layers = list(model.children())
    for layer in layers:
        x = layer(x)
    y = x
    dy = np.cos(np.arange(y.size, dtype=y.dtype)).reshape(y.shape)
    for i in range(len(layers) - 1, -1, -1):
        dy = layers[i].backward(dy)
    return y, dy


DTYPES = [np.float64] + ([] if REASON else [np.float32])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_chain_equals_layer_by_layer(dtype, rng):
    model = make(rng, dtype)
    twin = copy.deepcopy(model)
    x = rng.standard_normal((4, 3, 9, 9)).astype(dtype)
    y = model(x)
    assert model[1].relu_fused and model[4].relu_fused and model[2]._cache is None  # the ReLUs did not run
    dy = np.cos(np.arange(y.size, dtype=dtype)).reshape(y.shape)
    dx = model.backward(dy)
    y_ref, dx_ref = one_by_one(twin, x)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(a.grad, b.grad, err_msg=name, **tol)
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), err_msg=name, **tol)


@pytest.mark.skipif(REASON is not None, reason=f"oneDNN not available: {REASON}")
def test_nan_after_a_fused_norm_stays_nan(rng):
    model = make(rng, np.float32)
    twin = copy.deepcopy(model)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    x[1, 2, 3, 3] = np.nan  # one NaN poisons its channel's batch statistics
    y = model(x)
    with cnnkit.backend.use_backend("numpy"):
        y_ref, _ = one_by_one(twin, x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
    assert np.isnan(y).any()  # oneDNN's fused ReLU would have made them 0
    dx = model.backward(np.ones_like(y))
    assert dx.shape == x.shape


def test_eval_mode_and_pinned_relus_are_not_fused(rng):
    model = make(rng, np.float64)
    x = rng.standard_normal((2, 3, 6, 6))
    with cnnkit.no_grad():
        model.eval()(x)
    assert not model[1].relu_fused
    model.train()
    model[2].algorithm = "numpy"  # a ReLU with its own kernel choice runs as itself
    model(x)
    assert not model[1].relu_fused and model[4].relu_fused


def test_profile_lists_the_fused_relu(rng):
    from cnnkit.profile import profile

    result = profile(make(rng, np.float32), (3, 8, 8), batch_size=2, repeat=1, sgemm_gflops=50.0)
    rows = {r.name: r for r in result.layers}
    assert list(rows) == ["0", "1", "2", "3", "4", "5"]
    assert rows["2"].algorithm == "fused into 1" and rows["2"].forward_ms == 0
