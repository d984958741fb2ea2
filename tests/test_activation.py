"""Activations, Identity and Flatten: gradcheck, naive vs fast, PyTorch, stability, dtype, errors."""
import warnings

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
from cnnkit.functional import activation as F
from cnnkit.nn.activation import Identity, LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from cnnkit.nn.containers import Sequential
from cnnkit.nn.flatten import Flatten
from cnnkit.testing.reference import activation as ref

# (cnnkit layer factory, torch layer factory, naive forward, naive gradient)
LAYERS = {
    "relu": (ReLU, torch.nn.ReLU, ref.relu, ref.relu_grad),
    "leaky_relu": (lambda: LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2),
                   lambda x: ref.leaky_relu(x, 0.2), lambda x, dy: ref.leaky_relu_grad(x, dy, 0.2)),
    "leaky_relu_default": (LeakyReLU, torch.nn.LeakyReLU, ref.leaky_relu, ref.leaky_relu_grad),
    "tanh": (Tanh, torch.nn.Tanh, ref.tanh, ref.tanh_grad),
    "sigmoid": (Sigmoid, torch.nn.Sigmoid, ref.sigmoid, ref.sigmoid_grad),
    "softmax": (Softmax, lambda: torch.nn.Softmax(dim=1), ref.softmax, ref.softmax_grad),
    "softmax_last": (lambda: Softmax(dim=-1), lambda: torch.nn.Softmax(dim=-1),
                     lambda x: ref.softmax(x, -1), lambda x, dy: ref.softmax_grad(x, dy, -1)),
    "log_softmax": (LogSoftmax, lambda: torch.nn.LogSoftmax(dim=1), ref.log_softmax, ref.log_softmax_grad),
}


def away_from_zero(x):
    """Keep inputs clear of the kinks of ReLU/LeakyReLU so finite differences are valid."""
    return np.sign(x) * (0.05 + np.abs(x))


def torch_forward_backward(layer, x, dy):
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = layer(tx)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy()


@pytest.mark.parametrize("name", LAYERS)
def test_gradcheck(name, rng):
    make = LAYERS[name][0]
    x = away_from_zero(rng.standard_normal((2, 3, 4, 5)))
    assert cnnkit.gradcheck(make(), x) < 1e-7


@pytest.mark.parametrize("name", LAYERS)
def test_naive_equals_fast(name, rng):
    make, _, naive_forward, naive_grad = LAYERS[name]
    x = rng.standard_normal((2, 3, 2, 4))
    x[0, 0, 0, :2] = 0.0  # exact zeros: the subgradient convention must agree too
    dy = rng.standard_normal(x.shape)
    layer = make()
    y = layer(x)
    dx = layer.backward(dy)
    np.testing.assert_allclose(y, naive_forward(x), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, naive_grad(x, dy), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("name", LAYERS)
def test_matches_torch(name, dtype, rtol, rng):
    make, make_torch = LAYERS[name][:2]
    x = (3 * rng.standard_normal((3, 5, 2, 3))).astype(dtype)
    x[1, 1, :, :] = 0.0  # ties at the kink: torch's gradient at 0 is the convention
    dy = rng.standard_normal(x.shape).astype(dtype)
    layer = make()
    y = layer(x)
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(make_torch(), x, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    # Relative to the array's scale: in float32, 1 - tanh(x)^2 near saturation is a difference of
    # nearly equal numbers, so one ulp of y between libraries is a large relative change there.
    np.testing.assert_allclose(y, ty, rtol=rtol, atol=rtol * np.abs(ty).max())
    np.testing.assert_allclose(dx, tdx, rtol=rtol, atol=rtol * np.abs(tdx).max())


@pytest.mark.parametrize("name", LAYERS)
def test_inputs_and_dy_are_not_modified(name, rng):
    make = LAYERS[name][0]
    x = rng.standard_normal((2, 3)).astype(np.float32)
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    x0, dy0 = x.copy(), dy.copy()
    layer = make()
    y = layer(x)
    layer.backward(dy)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(dy, dy0)
    assert not np.shares_memory(y, x)


def test_relu_cached_output_is_not_the_input(rng):
    # A ReLU after a layer that cached x must not overwrite that x (no in-place ReLU).
    x = rng.standard_normal((4, 4)).astype(np.float32)
    relu = ReLU(inplace=True)  # accepted for PyTorch compatibility, still out of place
    relu(x)
    assert (x < 0).any()


@pytest.mark.parametrize("make, make_torch", [
    (Softmax, lambda: torch.nn.Softmax(dim=1)),
    (LogSoftmax, lambda: torch.nn.LogSoftmax(dim=1)),
    (Sigmoid, torch.nn.Sigmoid),
    (Tanh, torch.nn.Tanh),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_inputs_are_finite_and_match_torch(make, make_torch, dtype, rng):
    x = np.array([[1e4, -1e4, 0.0, 3.0], [-1e4, -1e4, -1e4, -1e4], [1e3, 1e3 - 1.0, -1e3, 50.0]], dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    layer = make()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / invalid-value warnings
        y = layer(x)
        dx = layer.backward(dy)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    ty, tdx = torch_forward_backward(make_torch(), x, dy)
    np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-6 * np.abs(ty).max())
    np.testing.assert_allclose(dx, tdx, rtol=1e-5, atol=1e-6 * np.abs(tdx).max())


def test_softmax_rows_sum_to_one_along_dim(rng):
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    for dim in (0, 1, 2, -1):
        y = Softmax(dim=dim)(x)
        np.testing.assert_allclose(y.sum(axis=dim), 1.0, rtol=1e-6)


def test_activation_kernels_keep_float32():
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    dy = np.ones_like(x)
    for forward, backward in [(F.relu_forward, F.relu_backward), (F.tanh_forward, F.tanh_backward),
                              (F.sigmoid_forward, F.sigmoid_backward), (F.softmax_forward, F.softmax_backward),
                              (F.log_softmax_forward, F.log_softmax_backward),
                              (lambda v: F.leaky_relu_forward(v, 0.1), F.leaky_relu_backward)]:
        y, cache = forward(x)
        assert y.dtype == np.float32 and backward(dy, cache).dtype == np.float32


def test_leaky_relu_slope_and_repr():
    layer = LeakyReLU(0.1)
    y = layer(np.array([[-2.0, 0.0, 3.0]]))
    np.testing.assert_allclose(y, [[-0.2, 0.0, 3.0]])
    np.testing.assert_allclose(layer.backward(np.ones((1, 3))), [[0.1, 0.1, 1.0]])  # slope at 0, as torch
    assert repr(layer) == "LeakyReLU(negative_slope=0.1)"
    assert repr(Softmax()) == "Softmax(dim=1)"


def test_input_grad_false_and_no_grad(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    for layer in (ReLU(), Tanh(), Softmax(), Identity(), Flatten()):
        layer(x)
        assert layer.backward(np.ones((2, 3), np.float32), input_grad=False) is None
        with cnnkit.no_grad():
            layer(x)
        with pytest.raises(RuntimeError, match="without a cached forward"):
            layer.backward(np.ones((2, 3), np.float32))


def test_eval_mode_backward_works(rng):
    layer = Sigmoid().eval()
    x = rng.standard_normal((2, 3))
    layer(x)
    assert layer.backward(np.ones((2, 3))).shape == (2, 3)


def test_errors_are_clear():
    with pytest.raises(TypeError, match="floating-point"):
        ReLU()(np.arange(6).reshape(2, 3))
    with pytest.raises(TypeError, match="expects an array"):
        Tanh()([[1.0, 2.0]])
    with pytest.raises(ValueError, match="dim=2 is out of range for an input of shape \\(2, 3\\)"):
        Softmax(dim=2)(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="negative_slope must be a number, got 'a'"):
        LeakyReLU("a")
    with pytest.raises(ValueError, match="dim must be an int, got 1.5"):
        Softmax(dim=1.5)


# -- Identity and Flatten ----------------------------------------------------------------------
def test_identity_returns_input_and_gradient(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    layer = Identity(54, unused="ignored")  # ignores its arguments, as torch.nn.Identity
    assert layer(x) is x
    dy = rng.standard_normal((2, 3)).astype(np.float32)
    assert layer.backward(dy) is dy
    assert layer.output_shape((3, 4, 5)) == (3, 4, 5)


@pytest.mark.parametrize("start_dim, end_dim", [(1, -1), (0, -1), (2, 3), (1, 2), (-3, -2), (3, 3), (0, 0)])
def test_flatten_matches_torch(start_dim, end_dim, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = Flatten(start_dim, end_dim)
    y = layer(x)
    ty = torch.nn.Flatten(start_dim, end_dim)(torch.from_numpy(x)).numpy()
    assert y.shape == ty.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, ty)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    assert dx.shape == x.shape and dx.dtype == np.float32
    np.testing.assert_array_equal(dx.reshape(-1), dy.reshape(-1))  # backward is the inverse reshape
    if start_dim % x.ndim > 0:  # a per-sample shape exists unless the batch axis is merged
        assert layer.output_shape(x.shape[1:]) == y.shape[1:]


def test_flatten_output_shape_and_errors():
    assert Flatten().output_shape((16, 5, 5)) == (400,)
    assert Flatten(2).output_shape((16, 5, 5)) == (16, 25)
    assert Flatten().output_shape((7,)) == (7,)
    with pytest.raises(ValueError, match="merges the batch axis"):
        Flatten(0).output_shape((16, 5, 5))
    with pytest.raises(ValueError, match=r"Flatten\(start_dim=4, end_dim=-1\) is out of range for an input of shape \(2, 3, 4\)"):
        Flatten(4)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="start_dim=2 comes after end_dim=1"):
        Flatten(2, 1)(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="start_dim must be an int, got '1'"):
        Flatten("1")
    assert repr(Flatten()) == "Flatten(start_dim=1, end_dim=-1)"


def test_sequential_with_activations_gradcheck(rng):
    net = Sequential(Flatten(), Tanh(), Softmax(), LeakyReLU(0.3))
    assert cnnkit.gradcheck(net, rng.standard_normal((3, 2, 2, 2))) < 1e-7


@pytest.mark.parametrize("contiguous", [True, False])
def test_relu_on_threads_matches_torch(contiguous, rng, monkeypatch):
    """The ReLU kernels cut the flat array over threads; forced on (3 threads, tiny jobs), also
    for a transposed (non-contiguous) input and gradient."""
    from cnnkit.functional import parallel

    monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    x = rng.standard_normal((3, 4, 5, 7)).astype(np.float32)
    dy = rng.standard_normal((3, 4, 5, 7)).astype(np.float32)
    if not contiguous:
        x, dy = x.transpose(0, 1, 3, 2), dy.transpose(0, 1, 3, 2)
    y, cache = F.relu_forward(x)
    dx = F.relu_backward(dy, cache)
    tx = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_()
    ty = torch.relu(tx)
    ty.backward(torch.from_numpy(np.ascontiguousarray(dy)))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


# -- Hardswish: the example of a layer added in three files (kernel, module, these tests) --------
def _hardswish_naive(x, dy):
    """Element by element, straight from the definition (PyTorch's slopes at the kinks)."""
    y, dx = np.empty_like(x), np.empty_like(x)
    for i, (v, g) in enumerate(zip(x.ravel(), dy.ravel())):
        y.flat[i] = v * min(max(v + 3, 0), 6) / 6
        dx.flat[i] = g * (0.0 if v <= -3 else (v / 3 + 0.5 if v < 3 else 1.0))
    return y, dx


def test_hardswish_gradcheck_naive_and_torch(rng):
    from cnnkit.nn import Hardswish

    x = rng.uniform(-5, 5, (3, 4, 5)) + 0.01  # inside the regions, clear of the kinks at +-3
    x[np.abs(np.abs(x) - 3) < 0.05] += 0.1
    assert cnnkit.gradcheck(Hardswish(), x)
    x = np.concatenate([rng.uniform(-6, 6, 57), [-3.0, 3.0, 0.0]]).reshape(3, 20).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer = Hardswish()
    y = layer(x)
    dx = layer.backward(dy)
    want_y, want_dx = _hardswish_naive(x, dy)
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-7)
    ty, tdx = torch_forward_backward(torch.nn.Hardswish(), x, dy)
    np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, tdx, rtol=1e-6, atol=1e-7)  # the kinks too
    assert y.dtype == dx.dtype == np.float32


def test_hardswish_needs_no_other_file_for_summary_profile_and_onnx(rng, tmp_path):
    from cnnkit.nn import Conv2d, Hardswish, Sequential
    from cnnkit.profile import profile

    model = Sequential(Conv2d(3, 4, 3, padding=1, generator=rng), Hardswish())
    s = cnnkit.summary(model, (3, 8, 8), batch_size=2)
    assert s.rows[-1]["type"] == "Hardswish" and s.rows[-1]["macs"] == 0 and s.total_macs == 4 * 64 * 27
    assert [r.type for r in profile(model, (3, 8, 8), batch_size=2, repeat=1).layers] == ["Conv2d", "Hardswish"]
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    for opset in (13, 14):  # HardSigmoid * x before opset 14, HardSwish from 14
        path = tmp_path / f"hardswish{opset}.onnx"
        cnnkit.onnx.export(model.eval(), path, (3, 8, 8), opset=opset)
        assert {"HardSwish" if opset >= 14 else "HardSigmoid"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
        got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, model(x), rtol=1e-5, atol=1e-6)
