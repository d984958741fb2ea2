"""oneDNN ReLU, residual add (+ReLU) and inner product against the NumPy reference and PyTorch,
including the NaN cases oneDNN's ReLU gets wrong (declined)."""
import numpy as np
import pytest

from cnnkit.functional import activation as reference_activation
from cnnkit.functional import linear as reference_linear
from onednn_helpers import assert_close, in_layout, requires_onednn

pytestmark = requires_onednn


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_relu_matches_reference_exactly(layout, rng):
    from cnnkit.functional.onednn import eltwise

    x = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    x[0, 0, 0, :4] = [0.0, -0.0, np.inf, -np.inf]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y_ref, cache_ref = reference_activation.relu_forward(x)
    assert eltwise.relu_decline(in_layout(x, layout)) is None
    y, cache = eltwise.relu_forward(in_layout(x, layout))
    np.testing.assert_array_equal(y, y_ref)
    assert y.strides == in_layout(x, layout).strides  # the input's memory order
    np.testing.assert_array_equal(eltwise.relu_backward(in_layout(dy, layout), cache),
                                  reference_activation.relu_backward(dy, cache_ref))
    np.testing.assert_array_equal(eltwise.relu_backward(dy, cache),  # dy in the other layout
                                  reference_activation.relu_backward(dy, cache_ref))


def test_relu_declines_nan_and_float64_and_defers_small_arrays(rng):
    from cnnkit.functional.onednn import eltwise

    x = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    x[1, 2, 3, 4] = np.nan
    assert "NaN" in eltwise.relu_decline(x)
    assert "NaN" in eltwise.relu_decline(in_layout(x, "channels_last"))
    assert "float32" in eltwise.relu_decline(x.astype(np.float64))
    # Tiny arrays: oneDNN could, but NumPy is faster (a defer, not a decline).
    assert eltwise.relu_decline(np.ones((2, 3), np.float32)) is None
    assert "small" in eltwise.small_defer(np.ones((2, 3), np.float32))


def test_relu_backward_on_infinite_gradients_is_the_reference(rng):
    from cnnkit.functional.onednn import eltwise

    x = rng.standard_normal((2, 16, 32, 32)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy[x <= 0] = np.inf  # dy * [y > 0] is inf * 0 = NaN there, in the reference and in oneDNN
    y, cache = eltwise.relu_forward(x)
    with np.errstate(invalid="ignore"):
        want = reference_activation.relu_backward(dy, reference_activation.relu_forward(x)[1])
    np.testing.assert_array_equal(eltwise.relu_backward(dy, cache), want)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("layouts", [("nchw", "nchw"), ("channels_last", "channels_last"), ("channels_last", "nchw")])
def test_add_and_add_relu(relu, layouts, rng):
    from cnnkit.functional.onednn import eltwise

    a = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    b = rng.standard_normal(a.shape).astype(np.float32)
    dy = rng.standard_normal(a.shape).astype(np.float32)
    want = np.maximum(a + b, 0) if relu else a + b
    a_in, b_in = in_layout(a, layouts[0]), in_layout(b, layouts[1])
    assert eltwise.add_decline(a_in, b_in, relu) is None
    y, cache = eltwise.add_forward(a_in, b_in, relu)
    np.testing.assert_array_equal(y, want)
    assert y.strides == a_in.strides
    da, db = eltwise.add_backward(dy, cache)
    want_d = dy * (want > 0) if relu else dy
    np.testing.assert_array_equal(da, want_d)
    np.testing.assert_array_equal(db, want_d)


def test_add_relu_declines_non_finite_inputs(rng):
    from cnnkit.functional.onednn import eltwise

    a = rng.standard_normal((4, 16, 16, 16)).astype(np.float32)
    b = a.copy()
    a[0, 0, 0, 0], b[0, 0, 0, 0] = np.inf, -np.inf  # inf - inf is NaN
    assert "NaN or -inf" in eltwise.add_decline(a, b, relu=True)
    b[0, 0, 0, 0] = 1.0  # +inf alone is harmless: inf + 1 = inf, relu(inf) = inf in both libraries
    a[0, 0, 0, 0] = np.inf
    assert eltwise.add_decline(a, b, relu=True) is None
    np.testing.assert_array_equal(eltwise.add_forward(a, b, relu=True)[0], np.maximum(a + b, 0))
    a[0, 0, 0, 1] = np.nan
    assert "NaN" in eltwise.add_decline(a, b, relu=True)
    assert eltwise.add_decline(a, b, relu=False) is None  # a plain sum keeps the NaN itself
    assert "shapes differ" in eltwise.add_decline(a, b[:2])


@pytest.mark.parametrize("n, features_in, features_out, bias", [(128, 400, 120, True), (16, 512, 100, False),
                                                                 (1, 7, 3, True), (64, 1024, 300, True)])
def test_linear_matches_reference_and_torch(n, features_in, features_out, bias, rng):
    from cnnkit.functional.onednn import linear

    x = rng.standard_normal((n, features_in))
    weight = rng.standard_normal((features_out, features_in)) / np.sqrt(features_in)
    b = rng.standard_normal(features_out) if bias else None
    y_ref, cache_ref = reference_linear.linear_forward(x, weight, b)
    dy = rng.standard_normal(y_ref.shape)
    grads_ref = reference_linear.linear_backward(dy, cache_ref)
    f32 = lambda a: None if a is None else a.astype(np.float32)  # noqa: E731
    assert linear.linear_decline(f32(x), f32(weight), f32(b)) is None
    assert (linear.linear_defer(f32(x), f32(weight), f32(b)) is None) == (n * features_in * features_out >= 1 << 24)
    y, cache = linear.linear_forward(f32(x), f32(weight), f32(b))
    assert_close(y, y_ref)
    for got, want in zip(linear.linear_backward(f32(dy), cache), grads_ref):
        assert_close(got, want, rtol=1e-4)
    dx, dw, db = linear.linear_backward(f32(dy), cache, need_dx=False, need_dweight=True, need_dbias=False)
    assert dx is None and db is None
    assert_close(dw, grads_ref[1], rtol=1e-4)
    torch = pytest.importorskip("torch")
    ty = torch.nn.functional.linear(torch.from_numpy(f32(x)), torch.from_numpy(f32(weight)),
                                    None if b is None else torch.from_numpy(f32(b)))
    assert_close(y, ty.numpy())
