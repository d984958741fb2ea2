import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip
F = torch.nn.functional

import cnnkit
from cnnkit.functional import adaptive_pool
from cnnkit.functional import pool as fast
from cnnkit.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, LPPool2d, MaxPool2d
from cnnkit.testing.reference import pool as naive

# (kernel_size, stride, padding, dilation, ceil_mode, input shape)
MAX_CASES = {
    "alexnet_3x3_s2": (3, 2, 0, 1, False, (2, 3, 7, 7)),
    "2x2_s2_nonsquare": (2, 2, 0, 1, False, (2, 3, 6, 8)),
    "3x3_s2_pad1_batch1": (3, 2, 1, 1, False, (1, 2, 8, 8)),
    "ceil_overhang": (3, 2, 0, 1, True, (2, 2, 8, 8)),
    "ceil_start_in_padding_dropped": (2, 2, 1, 1, True, (1, 2, 5, 5)),
    "rect_kernel_stride_pad": ((2, 3), (1, 2), (1, 1), 1, False, (2, 2, 5, 7)),
    "dilation2_pad1": (3, 1, 1, 2, False, (2, 2, 7, 7)),
    "dilation2_s2_ceil": (2, 2, 0, 2, True, (1, 2, 7, 6)),
    "rect_dilation": ((3, 2), (2, 1), (1, 0), (1, 2), True, (2, 1, 6, 5)),
}
# (kernel_size, stride, padding, ceil_mode, input shape)
AVG_CASES = {
    "alexnet_3x3_s2": (3, 2, 0, False, (2, 3, 7, 7)),
    "2x2_s2_nonsquare": (2, 2, 0, False, (2, 3, 6, 8)),
    "3x3_s1_pad1": (3, 1, 1, False, (1, 2, 5, 6)),
    "3x3_s2_pad1_ceil": (3, 2, 1, True, (2, 2, 8, 8)),
    "ceil_start_in_padding_dropped": (2, 2, 1, True, (1, 2, 5, 5)),
    "ceil_overhang_past_padding": (3, 2, 1, True, (1, 1, 6, 6)),
    "rect_kernel": ((2, 3), (1, 2), (1, 1), False, (2, 2, 5, 7)),
}
# (norm_type, kernel_size, stride, ceil_mode, input shape)
LP_CASES = {
    "l2_2x2": (2, 2, None, False, (2, 3, 6, 6)),
    "l2_3x3_s2_ceil": (2, 3, 2, True, (1, 2, 8, 8)),
    "p3_overlap": (3, 3, 1, False, (2, 2, 5, 5)),
    "p1.5_rect": (1.5, (2, 3), (1, 2), False, (1, 2, 5, 7)),
    "p1_ceil_rect": (1, (2, 3), 2, True, (1, 2, 5, 8)),
}
ADAPTIVE_CASES = {
    "7_to_3": (3, (2, 3, 7, 7)),
    "10x8_to_4x3": ((4, 3), (1, 2, 10, 8)),
    "divisible_8_to_4": (4, (2, 2, 8, 8)),
    "global": (1, (2, 3, 5, 6)),
    "keep_height": ((None, 3), (1, 2, 4, 7)),
    "upsample_3_to_5": (5, (1, 1, 3, 3)),
}


def distinct(shape, rng, dtype=np.float64):
    """Tie-free values spaced far wider than gradcheck's step (so argmaxes do not flip)."""
    values = rng.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2
    return (values / 7.0).astype(dtype)


def torch_forward_backward(function, x, dy):
    tx = torch.from_numpy(x).requires_grad_()
    ty = function(tx)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy()


def run_layer(layer, x, dy):
    y = layer(x)
    return y, layer.backward(dy)  # dy is built for the expected output shape: a mismatch would raise


def tolerance(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


def max_layer(case):
    k, s, p, d, ceil, _ = case
    return MaxPool2d(k, s, p, d, ceil_mode=ceil)


def avg_layer(case, count_include_pad=True, divisor_override=None):
    k, s, p, ceil, _ = case
    return AvgPool2d(k, s, p, ceil, count_include_pad, divisor_override)


# -- tier 1: numerical gradient checks ------------------------------------------------------------

@pytest.mark.parametrize("name", MAX_CASES)
def test_max_gradcheck(name, rng):
    case = MAX_CASES[name]
    assert cnnkit.gradcheck(max_layer(case), distinct(case[-1], rng)) < 1e-8


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", AVG_CASES)
def test_avg_gradcheck(name, count_include_pad, rng):
    case = AVG_CASES[name]
    assert cnnkit.gradcheck(avg_layer(case, count_include_pad), rng.standard_normal(case[-1])) < 1e-8


@pytest.mark.parametrize("name", LP_CASES)
def test_lp_gradcheck(name, rng):
    p, k, s, ceil, shape = LP_CASES[name]
    x = rng.uniform(0.5, 2.0, shape)  # positive: x^p and its gradient are smooth for every p
    assert cnnkit.gradcheck(LPPool2d(p, k, s, ceil), x) < 1e-7


def test_lp_gradcheck_l2_signed_inputs(rng):
    assert cnnkit.gradcheck(LPPool2d(2, 2), rng.standard_normal((2, 2, 4, 6))) < 1e-7


@pytest.mark.parametrize("name", ADAPTIVE_CASES)
def test_adaptive_gradcheck(name, rng):
    size, shape = ADAPTIVE_CASES[name]
    assert cnnkit.gradcheck(AdaptiveAvgPool2d(size), rng.standard_normal(shape)) < 1e-8


# -- tier 2: naive reference vs fast kernels ------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("name", MAX_CASES)
def test_max_matches_naive(name, ties, rng):
    k, s, p, d, ceil, shape = MAX_CASES[name]
    x = rng.integers(0, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    dy = rng.standard_normal(naive.max_pool2d(x, k, s, p, d, ceil)[0].shape)
    y_ref, indices_ref = naive.max_pool2d(x, k, s, p, d, ceil)
    y, cache = fast.max_pool2d_forward(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(fast.max_pool2d_indices(cache), indices_ref)
    np.testing.assert_allclose(fast.max_pool2d_backward(dy, cache),
                               naive.max_pool2d_backward(dy, x, k, s, p, d, ceil), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", AVG_CASES)
def test_avg_matches_naive(name, count_include_pad, rng):
    k, s, p, ceil, shape = AVG_CASES[name]
    x = rng.standard_normal(shape)
    args = (k, s, p, ceil, count_include_pad)
    y, cache = fast.avg_pool2d_forward(x, *args)
    np.testing.assert_allclose(y, naive.avg_pool2d(x, *args), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(fast.avg_pool2d_backward(dy, cache), naive.avg_pool2d_backward(dy, x, *args),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", LP_CASES)
def test_lp_matches_naive(name, rng):
    p, k, s, ceil, shape = LP_CASES[name]
    x = rng.uniform(0.1, 2.0, shape)
    y, cache = fast.lp_pool2d_forward(x, p, k, s, ceil)
    np.testing.assert_allclose(y, naive.lp_pool2d(x, p, k, s, ceil), rtol=1e-12)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(fast.lp_pool2d_backward(dy, cache), naive.lp_pool2d_backward(dy, x, p, k, s, ceil),
                               rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name", ADAPTIVE_CASES)
def test_adaptive_matches_naive(name, rng):
    size, shape = ADAPTIVE_CASES[name]
    x = rng.standard_normal(shape)
    y, cache = adaptive_pool.adaptive_avg_pool2d_forward(x, size)
    np.testing.assert_allclose(y, naive.adaptive_avg_pool2d(x, size), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(adaptive_pool.adaptive_avg_pool2d_backward(dy, cache),
                               naive.adaptive_avg_pool2d_backward(dy, x, size), rtol=1e-12, atol=1e-14)


def test_naive_output_size_agrees_with_shapes_formula():
    from cnnkit.functional.shapes import conv_output_size
    for size in range(3, 12):
        for k in (2, 3):
            for s in (1, 2, 3):
                for p in range(k // 2 + 1):
                    for ceil in (False, True):
                        assert conv_output_size(size, k, s, p, 1, ceil, check_geometry=False) == \
                            naive.pooling_output_size(size, k, s, p, 1, ceil)


# -- tier 3: PyTorch ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", MAX_CASES)
def test_max_matches_torch(name, dtype, rng):
    k, s, p, d, ceil, shape = MAX_CASES[name]
    x = rng.standard_normal(shape).astype(dtype)
    layer = max_layer(MAX_CASES[name])
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    indices = layer.indices()
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode=ceil), x, dy)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(dx, tdx, **tolerance(dtype))
    t_indices = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil, return_indices=True)[1]
    np.testing.assert_array_equal(indices, t_indices.numpy())


@pytest.mark.parametrize("name", ["alexnet_3x3_s2", "3x3_s2_pad1_batch1", "ceil_overhang", "dilation2_pad1",
                                  "rect_kernel_stride_pad"])
@pytest.mark.parametrize("values", ["small_integers", "all_equal"])
def test_max_ties_route_like_torch(name, values, rng):
    k, s, p, d, ceil, shape = MAX_CASES[name]
    x = rng.integers(0, 2, shape).astype(np.float64) if values == "small_integers" else np.full(shape, 0.5)
    layer = max_layer(MAX_CASES[name])
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    indices = layer.indices()
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(lambda t: F.max_pool2d(t, k, s, p, d, ceil_mode=ceil), x, dy)
    t_indices = F.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil, return_indices=True)[1]
    np.testing.assert_array_equal(indices, t_indices.numpy())  # the first maximum, as PyTorch
    np.testing.assert_allclose(dx, tdx, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx.sum(), dy.sum(), rtol=1e-12)  # every window routes exactly once


def test_max_special_values_like_torch():
    x = np.array([[[[-np.inf, -np.inf, 1.0], [-np.inf, np.nan, 2.0], [np.nan, 0.0, -np.inf]]]])
    for k, s, p in [(2, 1, 0), (2, 1, 1), (3, 1, 1)]:
        y, cache = fast.max_pool2d_forward(x, k, s, p)
        ty, tind = F.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())  # NaN in the same places
        np.testing.assert_array_equal(fast.max_pool2d_indices(cache), tind.numpy())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", AVG_CASES)
def test_avg_matches_torch(name, count_include_pad, dtype, rng):
    k, s, p, ceil, shape = AVG_CASES[name]
    x = rng.standard_normal(shape).astype(dtype)
    layer = avg_layer(AVG_CASES[name], count_include_pad)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(
        lambda t: F.avg_pool2d(t, k, s, p, ceil_mode=ceil, count_include_pad=count_include_pad), x, dy)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ty, **tolerance(dtype))
    np.testing.assert_allclose(dx, tdx, **tolerance(dtype))


@pytest.mark.parametrize("divisor_override", [1, 3, 7])
def test_avg_divisor_override_matches_torch(divisor_override, rng):
    case = AVG_CASES["3x3_s2_pad1_ceil"]
    k, s, p, ceil, shape = case
    x = rng.standard_normal(shape)
    layer = avg_layer(case, divisor_override=divisor_override)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(
        lambda t: F.avg_pool2d(t, k, s, p, ceil_mode=ceil, divisor_override=divisor_override), x, dy)
    np.testing.assert_allclose(y, ty, rtol=1e-12)
    np.testing.assert_allclose(dx, tdx, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", LP_CASES)
def test_lp_matches_torch(name, dtype, rng):
    p, k, s, ceil, shape = LP_CASES[name]
    x = rng.uniform(0.1, 2.0, shape).astype(dtype)
    layer = LPPool2d(p, k, s, ceil)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(lambda t: F.lp_pool2d(t, p, k, s, ceil), x, dy)
    assert y.dtype == dx.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(y, ty, **tol)
    np.testing.assert_allclose(dx, tdx, **tol)


@pytest.mark.parametrize("norm_type", [2, 3, float("inf"), float("-inf")])
def test_lp_signed_inputs_and_zero_windows_match_torch(norm_type, rng):
    x = rng.standard_normal((2, 2, 6, 6))
    x[0, 0, :2, :2] = 0.0  # a window whose power sum is 0: PyTorch sets its gradient to 0
    y, dx = run_layer(LPPool2d(norm_type, 2), x, dy := rng.standard_normal((2, 2, 3, 3)))
    ty, tdx = torch_forward_backward(lambda t: F.lp_pool2d(t, norm_type, 2), x, dy)
    np.testing.assert_allclose(y, ty, rtol=1e-10, atol=1e-12, equal_nan=True)  # p=3: NaN where the sum < 0
    np.testing.assert_allclose(dx, tdx, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert np.all(dx[0, 0, :2, :2] == 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ADAPTIVE_CASES)
def test_adaptive_matches_torch(name, dtype, rng):
    size, shape = ADAPTIVE_CASES[name]
    x = rng.standard_normal(shape).astype(dtype)
    layer = AdaptiveAvgPool2d(size)
    y = layer(x)
    assert y.shape[1:] == layer.output_shape(shape[1:])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty, tdx = torch_forward_backward(lambda t: F.adaptive_avg_pool2d(t, size), x, dy)
    assert y.dtype == dx.dtype == dtype
    np.testing.assert_allclose(y, ty, **tolerance(dtype))
    np.testing.assert_allclose(dx, tdx, **tolerance(dtype))


# -- geometry, layer behaviour and errors ---------------------------------------------------------

def test_stride_that_does_not_divide_needs_opt_out(rng):
    x = rng.standard_normal((1, 2, 7, 7))
    for layer_type in (MaxPool2d, AvgPool2d):
        with pytest.raises(ValueError, match="unused"):
            layer_type(3, 3)(x)
        layer = layer_type(3, 3, check_geometry=False)
        y, dx = run_layer(layer, x, dy := rng.standard_normal((1, 2, 2, 2)))
        torch_f = F.max_pool2d if layer_type is MaxPool2d else F.avg_pool2d
        ty, tdx = torch_forward_backward(lambda t: torch_f(t, 3, 3), x, dy)
        np.testing.assert_allclose(y, ty, rtol=1e-12)
        np.testing.assert_allclose(dx, tdx, rtol=1e-12)
        assert np.all(dx[:, :, 6, :] == 0) and np.all(dx[:, :, :, 6] == 0)  # the dropped row/column


def test_alexnet_pool_on_112_suggests_ceil_mode():
    with pytest.raises(ValueError, match="ceil_mode=True"):
        MaxPool2d(3, 2).output_shape((64, 112, 112))
    assert MaxPool2d(3, 2, ceil_mode=True).output_shape((64, 112, 112)) == (64, 56, 56)
    assert MaxPool2d(3, 2).output_shape((96, 55, 55)) == (96, 27, 27)
    assert MaxPool2d(3, 2, 1).output_shape((64, 112, 112)) == (64, 56, 56)  # ResNet: drops only padding


@pytest.mark.parametrize("layer", [MaxPool2d(3, 2, 1), AvgPool2d((2, 3), (1, 2), 1, True),
                                   LPPool2d(2, 3, 2, ceil_mode=True), AdaptiveAvgPool2d((None, 2))])
def test_output_shape_matches_forward(layer, rng):
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    with cnnkit.no_grad():
        assert layer(x).shape[1:] == layer.output_shape((3, 9, 10))


def test_kernel_larger_than_input():
    x = np.zeros((1, 1, 3, 3), np.float32)
    for layer in (MaxPool2d(5), AvgPool2d(5), LPPool2d(2, 5)):
        with pytest.raises(ValueError, match="larger than the padded input"):
            layer(x)
        with pytest.raises(ValueError, match="larger than the padded input"):
            layer.output_shape((1, 3, 3))


@pytest.mark.parametrize("make", [lambda: MaxPool2d(3, padding=2), lambda: AvgPool2d(2, padding=2),
                                  lambda: MaxPool2d((4, 2), padding=(1, 2))])
def test_padding_more_than_half_kernel(make):
    with pytest.raises(ValueError, match="at most half the kernel"):
        make()
    with pytest.raises(ValueError, match="at most half the kernel"):
        fast.max_pool2d_forward(np.zeros((1, 1, 8, 8)), 3, 1, 2)


def test_invalid_arguments_repeat_the_value():
    with pytest.raises(ValueError, match="0"):
        MaxPool2d(0)
    with pytest.raises(ValueError, match=r"\(2, 0\)"):
        AvgPool2d(2, (2, 0))
    with pytest.raises(ValueError, match="-1"):
        MaxPool2d(3, padding=-1)
    with pytest.raises(ValueError, match="2.5"):
        MaxPool2d(2.5)
    with pytest.raises(ValueError, match="return_indices"):
        MaxPool2d(2, return_indices=True)
    with pytest.raises(ValueError, match="norm_type"):
        LPPool2d(0, 2)
    with pytest.raises(ValueError, match="divisor_override"):
        AvgPool2d(2, divisor_override=0)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAvgPool2d(0)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAvgPool2d((2, 3, 4))


@pytest.mark.parametrize("layer", [MaxPool2d(2), AvgPool2d(2), LPPool2d(2, 2), AdaptiveAvgPool2d(1)])
def test_input_errors(layer):
    with pytest.raises(TypeError, match="floating-point"):
        layer(np.zeros((1, 1, 4, 4), np.int64))
    with pytest.raises(ValueError, match=r"4-D input .* got shape \(1, 4, 4\)"):
        layer(np.zeros((1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        layer.output_shape((4, 4))


@pytest.mark.parametrize("layer", [MaxPool2d(2), AvgPool2d(2), LPPool2d(2, 2), AdaptiveAvgPool2d(1)])
def test_input_grad_false_and_no_grad(layer, rng):
    x = rng.standard_normal((1, 2, 4, 4)).astype(np.float32)
    y = layer(x)
    assert layer.backward(np.ones_like(y), input_grad=False) is None
    with cnnkit.no_grad():
        layer(x)
    with pytest.raises(RuntimeError, match="without a cached forward"):
        layer.backward(np.ones_like(y))


def test_repr_like_torch():
    assert repr(MaxPool2d(3, 2)) == repr(torch.nn.MaxPool2d(3, 2))
    assert repr(MaxPool2d((3, 2), 1, (1, 0), 2, ceil_mode=True)) == \
        repr(torch.nn.MaxPool2d((3, 2), 1, (1, 0), 2, ceil_mode=True))
    assert repr(AvgPool2d(2)) == repr(torch.nn.AvgPool2d(2))
    assert repr(LPPool2d(2, 3, 2)) == repr(torch.nn.LPPool2d(2, 3, 2))
    assert repr(AdaptiveAvgPool2d((1, 1))) == repr(torch.nn.AdaptiveAvgPool2d((1, 1)))
    assert "check_geometry=False" in repr(MaxPool2d(3, 3, check_geometry=False))


def test_float32_stays_float32_in_kernels(rng):
    x = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    for forward, backward, args in [
        (fast.max_pool2d_forward, fast.max_pool2d_backward, (3, 2, 1)),
        (fast.avg_pool2d_forward, fast.avg_pool2d_backward, (3, 2, 1, True, False)),
        (fast.lp_pool2d_forward, fast.lp_pool2d_backward, (2, 2, 2, True)),
        (adaptive_pool.adaptive_avg_pool2d_forward, adaptive_pool.adaptive_avg_pool2d_backward, ((3, 4),)),
    ]:
        y, cache = forward(x, *args)
        assert y.dtype == np.float32
        assert backward(np.ones_like(y), cache).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k, s, p, ceil, shape", [
    (2, 2, 0, False, (2, 3, 6, 8)),  # windows tile the input: dx written per offset, no scatter
    (2, 2, 0, False, (3, 2, 7, 9)),  # tiles, with a last row and column no window covers
    ((3, 2), (3, 2), 0, False, (1, 3, 7, 5)),  # rectangular tiles, batch of 1
    (3, 2, 1, False, (2, 3, 9, 8)),  # overlapping, padded (ResNet stem)
    (3, 2, 0, True, (2, 2, 8, 7)),  # ceil-mode overhang
])
def test_plane_blocks_on_threads_match_torch_and_naive(k, s, p, ceil, shape, ties, dtype, rng, monkeypatch):
    # One or two planes per block and no size threshold, so the blocked, threaded paths run here.
    from cnnkit.functional import parallel

    monkeypatch.setattr(fast, "BLOCK_BYTES", shape[2] * shape[3] * np.dtype(dtype).itemsize * 2)
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "2")
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(dtype)
    y, cache = fast.max_pool2d_forward(x, k, s, p, 1, ceil)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = fast.max_pool2d_backward(dy, cache)
    ty, tdx = torch_forward_backward(lambda t: F.max_pool2d(t, k, s, p, ceil_mode=ceil), x, dy)
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_allclose(dx, tdx, **tolerance(dtype))
    np.testing.assert_allclose(dx, naive.max_pool2d_backward(dy, x, k, s, p, 1, ceil), **tolerance(dtype))

    y, cache = fast.avg_pool2d_forward(x, k, s, p, ceil)
    dx = fast.avg_pool2d_backward(dy, cache)
    ty, tdx = torch_forward_backward(lambda t: F.avg_pool2d(t, k, s, p, ceil_mode=ceil), x, dy)
    np.testing.assert_allclose(y, ty, **tolerance(dtype))
    np.testing.assert_allclose(dx, tdx, **tolerance(dtype))


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [(2, 2, 0, False), (3, 2, 1, False), (3, 2, 0, True)])
def test_max_pool_without_switches_gives_the_same_maxima(kernel, stride, padding, ceil_mode, rng):
    """Inference (no_grad) skips the switches; the maxima, NaN included, stay PyTorch's."""
    import cnnkit
    from cnnkit.nn.pooling import MaxPool2d

    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    layer = MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode, check_geometry=False)
    with cnnkit.no_grad():
        y = layer(x)
    expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding, ceil_mode=ceil_mode)
    np.testing.assert_array_equal(y, expected.numpy())
    np.testing.assert_array_equal(y, layer(x))  # the training-mode kernel agrees
