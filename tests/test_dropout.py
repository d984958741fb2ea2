"""Dropout: mask statistics, inverted scaling, backward with the forward's mask, eval identity,
seeding, edge values of p, dtype and errors."""
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
from cnnkit.functional.dropout import dropout_backward, dropout_forward
from cnnkit.nn.containers import Sequential
from cnnkit.nn.dropout import Dropout
from cnnkit.nn.linear import Linear


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_fraction_dropped_and_scale(p):
    x = np.ones((200, 500), np.float32)
    y = Dropout(p, generator=np.random.default_rng(1))(x)
    dropped = np.mean(y == 0)
    # 1e5 Bernoulli draws: the standard deviation of the fraction is below 0.0016
    assert abs(dropped - p) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-6)  # survivors scaled by 1/(1-p)
    assert abs(y.mean() - 1.0) < 0.03  # inverted dropout keeps the expectation


def test_backward_uses_the_forward_mask(rng):
    layer = Dropout(0.4, generator=rng)
    x = rng.standard_normal((8, 16)) + 5.0  # nonzero everywhere, so y == 0 marks the drops
    y = layer(x)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    kept = y != 0
    np.testing.assert_array_equal(dx == 0, ~kept)
    np.testing.assert_allclose(dx[kept], dy[kept] / 0.6, rtol=1e-12)
    np.testing.assert_allclose(y[kept], x[kept] / 0.6, rtol=1e-12)


def test_gradient_matches_torch_given_the_same_mask(rng):
    # torch draws its own mask, so feed torch the same mask through x * mask / (1 - p).
    layer = Dropout(0.3, generator=rng)
    x = rng.standard_normal((4, 3, 5, 5))
    y = layer(x)
    dy = rng.standard_normal(x.shape)
    dx = layer.backward(dy)
    mask = torch.from_numpy((y != 0).astype(np.float64))
    tx = torch.from_numpy(x).requires_grad_()
    ty = tx * mask / (1 - 0.3)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)


def test_eval_mode_is_identity_forward_and_backward(rng):
    layer = Dropout(0.5, generator=rng).eval()
    x = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(layer(x), x)
    dy = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dy), dy)
    layer.train()
    assert (layer(x) == 0).any()


def test_eval_mode_gradcheck_and_torch_eval(rng):
    layer = Dropout(0.5).eval()
    assert cnnkit.gradcheck(layer, rng.standard_normal((2, 3))) < 1e-9
    x = rng.standard_normal((2, 3))
    np.testing.assert_array_equal(layer(x), torch.nn.Dropout(0.5).eval()(torch.from_numpy(x)).numpy())


def test_kernel_gradcheck_with_fixed_mask(rng):
    # The mask is fixed by the forward, so the layer is linear in x: check dx by finite differences.
    x = rng.standard_normal((3, 4))
    y, cache = dropout_forward(x, 0.5, np.random.default_rng(7))
    r = rng.standard_normal(x.shape)
    keep, scale = cache
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        bump = np.zeros_like(x)
        bump[i] = eps
        numeric[i] = np.sum(r * ((x + bump) * keep * scale - (x - bump) * keep * scale)) / (2 * eps)
    np.testing.assert_allclose(dropout_backward(r, cache), numeric, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(y, x * keep * scale)


def test_same_seed_same_mask_and_reseed():
    x = np.ones((10, 10), np.float32)
    a = Dropout(0.5, generator=np.random.default_rng(3))(x)
    b = Dropout(0.5, generator=np.random.default_rng(3))(x)
    c = Dropout(0.5, generator=3)(x)  # an int seed works too
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    layer = Dropout(0.5, generator=np.random.default_rng(3))
    first = layer(x)
    second = layer(x)
    assert not np.array_equal(first, second)  # the generator advances: a new mask per step
    layer.reseed(3)
    np.testing.assert_array_equal(layer(x), a)
    layer.generator = np.random.default_rng(3)  # trainers may also set the attribute
    np.testing.assert_array_equal(layer(x), a)
    # the same seed gives the same mask in float64 too
    np.testing.assert_array_equal(Dropout(0.5, generator=3)(x.astype(np.float64)) != 0, a != 0)


def test_p_zero_is_identity_and_p_one_is_zeros(rng):
    x = rng.standard_normal((4, 5)).astype(np.float32)
    identity = Dropout(0.0, generator=rng)
    np.testing.assert_array_equal(identity(x), x)
    np.testing.assert_array_equal(identity.backward(np.ones_like(x)), np.ones_like(x))
    zeros = Dropout(1.0, generator=rng)
    y = zeros(x)
    np.testing.assert_array_equal(y, 0.0)  # as torch.nn.Dropout(1.0)
    assert np.isfinite(y).all() and y.dtype == np.float32
    np.testing.assert_array_equal(zeros.backward(np.ones_like(x)), 0.0)
    np.testing.assert_array_equal(torch.nn.Dropout(1.0)(torch.from_numpy(x)).numpy(), 0.0)


def test_float32_stays_float32_and_input_untouched(rng):
    x = rng.standard_normal((6, 7)).astype(np.float32)
    before = x.copy()
    layer = Dropout(0.5, generator=rng)
    y = layer(x)
    dx = layer.backward(np.ones_like(x))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_array_equal(x, before)
    y64 = Dropout(0.5, generator=rng)(x.astype(np.float64))
    assert y64.dtype == np.float64


def test_invalid_p_and_generator():
    for p in (-0.1, 1.5, "0.5", None, True):
        with pytest.raises(ValueError, match=f"must be a number in \\[0, 1\\], got {p!r}"):
            Dropout(p)
    with pytest.raises(TypeError, match="generator must be an np.random.Generator"):
        Dropout(0.5, generator=np.random.RandomState(0))


def test_input_grad_false_no_grad_and_repr(rng):
    layer = Dropout(0.25, generator=rng)
    x = np.ones((2, 3), np.float32)
    layer(x)
    assert layer.backward(np.ones((2, 3), np.float32), input_grad=False) is None
    with cnnkit.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="without a cached forward"):
        layer.backward(np.ones((2, 3), np.float32))
    assert repr(layer) == "Dropout(p=0.25)"
    assert layer.output_shape((3, 8, 8)) == (3, 8, 8)
    with pytest.raises(TypeError, match="floating-point"):
        layer(np.ones((2, 3), np.int64))


def test_in_a_network_train_then_eval(rng):
    net = Sequential(Linear(6, 8, generator=rng), Dropout(0.5, generator=rng), Linear(8, 2, generator=rng))
    x = rng.standard_normal((5, 6)).astype(np.float32)
    net.eval()
    assert np.array_equal(net(x), net(x))  # deterministic at inference
    net.train()
    net(x)
    net.backward(np.ones((5, 2), np.float32), input_grad=False)
    assert all(p.grad is not None for p in net.parameters())
