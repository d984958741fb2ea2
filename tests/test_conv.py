import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip
F = torch.nn.functional

import cnnkit
from cnnkit.functional.conv import conv2d_backward, conv2d_forward
from cnnkit.functional.im2col import col2im, im2col
from cnnkit.functional.locally_connected import locally_connected2d_backward, locally_connected2d_forward
from cnnkit.nn.conv import Conv2d, LocallyConnected2d
from cnnkit.testing import gradcheck
from cnnkit.testing.reference.conv import (
    conv2d_naive, conv2d_naive_backward, locally_connected_naive, locally_connected_naive_backward,
)

# (in, out, input (H, W), kernel, stride, padding, dilation, groups, check_geometry)
CASES = {
    "3x3 s1 p0": (3, 4, (6, 6), 3, 1, 0, 1, 1, True),
    "3x3 s1 p1": (3, 4, (6, 6), 3, 1, 1, 1, 1, True),
    "3x3 s2 p1": (2, 3, (8, 8), 3, 2, 1, 1, 1, True),
    "3x3 s3 p2": (2, 3, (8, 8), 3, 3, 2, 1, 1, True),
    "5x5 s2 p2 overlap": (2, 3, (9, 9), 5, 2, 2, 1, 1, True),
    "stride does not divide, opted out": (2, 3, (7, 7), 3, 3, 0, 1, 1, False),
    "dilation 2": (2, 3, (9, 8), 3, 1, 2, 2, 1, True),
    "groups 2": (4, 6, (6, 6), 3, 1, 1, 1, 2, True),
    "depthwise": (4, 4, (6, 6), 3, 1, 1, 1, 4, True),
    "depthwise multiplier 2": (3, 6, (5, 5), 3, 2, 1, 1, 3, True),
    "1x1 s1": (5, 3, (4, 5), 1, 1, 0, 1, 1, True),
    "1x1 s2": (5, 3, (5, 6), 1, 2, 0, 1, 1, True),
    "1x1 s1 p1": (3, 2, (4, 4), 1, 1, 1, 1, 1, True),
    "rectangular 3x5 on 7x9": (3, 4, (7, 9), (3, 5), 1, 0, 1, 1, True),
    "rectangular everything": (2, 3, (8, 11), (3, 2), (2, 3), (1, 2), (2, 1), 1, False),
    "many filters, few positions": (3, 32, (3, 3), 2, 1, 0, 1, 1, True),
}


def make_conv(case, rng, dtype=np.float64, bias=True):
    c_in, c_out, _, kernel, stride, padding, dilation, groups, check = CASES[case]
    return Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias, check_geometry=check,
                  dtype=dtype, generator=rng)


def make_input(case, rng, n=2, dtype=np.float64):
    c_in, _, hw = CASES[case][:3]
    return rng.standard_normal((n, c_in) + hw).astype(dtype)


def torch_conv(layer, x, dy):
    """PyTorch's forward and all gradients on the same weights and input."""
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(layer.weight.data.copy()).requires_grad_()
    tb = None if layer.bias is None else torch.from_numpy(layer.bias.data.copy()).requires_grad_()
    ty = F.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation, layer.groups)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), None if tb is None else tb.grad.numpy()


def assert_close(actual, expected, dtype):
    scale = max(np.abs(expected).max(), 1.0)
    tol = 1e-10 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


# -- tier 1: numerical gradient check -------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_gradcheck(case, rng):
    layer = make_conv(case, rng)
    assert gradcheck(layer, make_input(case, rng), max_checks=300) < 1e-6


# -- tier 2: naive loops vs the fast kernel -------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_matches_naive(case, rng):
    layer = make_conv(case, rng)
    x = make_input(case, rng)
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    y, cache = conv2d_forward(x, layer.weight.data, layer.bias.data, *args)
    np.testing.assert_allclose(y, conv2d_naive(x, layer.weight.data, layer.bias.data, *args), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx, dweight, dbias = conv2d_backward(dy, cache)
    ndx, ndweight, ndbias = conv2d_naive_backward(dy, x, layer.weight.data, *args)
    np.testing.assert_allclose(dx, ndx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dweight, ndweight, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbias, ndbias, rtol=1e-12, atol=1e-12)


# -- tier 3: PyTorch ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d_matches_torch(case, dtype, rng):
    layer = make_conv(case, rng, dtype)
    x = make_input(case, rng, dtype=dtype)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty, tdx, tdw, tdb = torch_conv(layer, x, dy)
    for ours, theirs in ((y, ty), (dx, tdx), (layer.weight.grad, tdw), (layer.bias.grad, tdb)):
        assert ours.dtype == dtype  # float32 stays float32
        assert_close(ours, theirs, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv2d_batch_of_one_without_bias_matches_torch(dtype, rng):
    layer = Conv2d(3, 5, 3, stride=2, padding=1, bias=False, dtype=dtype, generator=rng)
    x = rng.standard_normal((1, 3, 9, 7)).astype(dtype)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    ty, tdx, tdw, tdb = torch_conv(layer, x, dy)
    assert layer.bias is None and tdb is None and list(layer.state_dict()) == ["weight"]
    assert_close(y, ty, dtype)
    assert_close(dx, tdx, dtype)
    assert_close(layer.weight.grad, tdw, dtype)


# -- layer behaviour ------------------------------------------------------------------------------
def test_input_grad_false_returns_none_but_parameter_grads_are_right(rng):
    layer = make_conv("groups 2", rng)
    x = make_input("groups 2", rng)
    dy = rng.standard_normal(layer(x).shape)
    assert layer.backward(dy, input_grad=False) is None
    _, _, tdw, tdb = torch_conv(layer, x, dy)
    assert_close(layer.weight.grad, tdw, np.float64)
    assert_close(layer.bias.grad, tdb, np.float64)


def test_frozen_weight_gets_no_grad_but_bias_and_input_do(rng):
    layer = make_conv("3x3 s2 p1", rng)
    layer.weight.requires_grad = False
    x = make_input("3x3 s2 p1", rng)
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    _, tdx, _, tdb = torch_conv(layer, x, dy)
    assert layer.weight.grad is None
    assert_close(dx, tdx, np.float64)
    assert_close(layer.bias.grad, tdb, np.float64)


def test_gradients_accumulate(rng):
    layer = make_conv("3x3 s1 p1", rng)
    x = make_input("3x3 s1 p1", rng)
    dy = rng.standard_normal((2, 4, 6, 6))
    layer(x); layer.backward(dy)
    first = layer.weight.grad.copy()
    layer(x); layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-12)


def test_no_grad_caches_nothing(rng):
    layer = make_conv("3x3 s1 p1", rng)
    with cnnkit.no_grad():
        y = layer(make_input("3x3 s1 p1", rng))
    assert y.shape == (2, 4, 6, 6)
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="without a cached forward"):
        layer.backward(np.ones_like(y))


def test_attributes_are_pytorch_tuples_and_state_dict_keys(rng):
    layer = Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2, generator=rng)
    ref = torch.nn.Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2), dilation=1, groups=2)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(layer, name) == getattr(ref, name), name
    assert layer.weight.shape == tuple(ref.weight.shape) == (8, 2, 3, 5)
    assert list(layer.state_dict()) == ["weight", "bias"]
    assert layer.weight.dtype == np.float32
    bound = 1 / np.sqrt(2 * 3 * 5)  # PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.weight.data).max() > 0.8 * bound
    assert repr(layer) == ("Conv2d(4, 8, kernel_size=(3, 5), stride=(2, 2), padding=(1, 2), groups=2)")


def test_state_dict_loads_into_torch_and_back(rng):
    layer = Conv2d(3, 4, 3, padding=1, generator=rng)
    ref = torch.nn.Conv2d(3, 4, 3, padding=1)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(x), ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-5)


def test_output_shape_agrees_with_forward(rng):
    for case in CASES:
        layer = make_conv(case, rng)
        x = make_input(case, rng, n=1)
        assert layer(x).shape[1:] == layer.output_shape(x.shape[1:]), case


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), ((3, 5), (2, 1))])
def test_padding_same_and_valid(kernel, dilation, rng):
    same = Conv2d(2, 3, kernel, padding="same", dilation=dilation, dtype=np.float64, generator=rng)
    x = rng.standard_normal((1, 2, 7, 9))
    assert same(x).shape == (1, 3, 7, 9)
    np.testing.assert_allclose(
        same(x), F.conv2d(torch.from_numpy(x), torch.from_numpy(same.weight.data), torch.from_numpy(same.bias.data),
                          padding="same", dilation=dilation).numpy(), rtol=1e-10, atol=1e-12)
    assert Conv2d(2, 3, kernel, padding="valid").padding == (0, 0)


# -- error messages -------------------------------------------------------------------------------
def test_wrong_channel_count_is_clear():
    with pytest.raises(ValueError, match="Conv2d expects 3 input channels, got 4"):
        Conv2d(3, 8, 3)(np.zeros((1, 4, 8, 8), np.float32))


def test_integer_input_is_clear():
    with pytest.raises(TypeError, match="floating-point input, got dtype uint8"):
        Conv2d(3, 8, 3)(np.zeros((1, 3, 8, 8), np.uint8))


def test_wrong_rank_and_dtype_are_clear():
    with pytest.raises(ValueError, match=r"4-D input \(N, C, H, W\), got shape \(3, 8, 8\)"):
        Conv2d(3, 8, 3)(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float32 parameters but got a float64 input"):
        Conv2d(3, 8, 3)(np.zeros((1, 3, 8, 8)))


def test_lossy_geometry_raises_unless_opted_out():
    x = np.zeros((1, 1, 7, 7), np.float32)
    with pytest.raises(ValueError, match=r"Conv2d: height 7 with kernel 3, stride 3, padding 0 leaves the last"):
        Conv2d(1, 1, 3, stride=3)(x)
    with pytest.raises(ValueError, match=r"\(7 - 3 \+ 0\)/3 \+ 1"):
        Conv2d(1, 1, 3, stride=3).output_shape((1, 7, 7))
    assert Conv2d(1, 1, 3, stride=3, check_geometry=False)(x).shape == (1, 1, 2, 2)


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="larger than the padded input width 4"):
        Conv2d(1, 1, (1, 5))(np.zeros((1, 1, 4, 4), np.float32))


@pytest.mark.parametrize("kwargs,message", [
    (dict(in_channels=6, out_channels=4, kernel_size=3, groups=4),
     "groups=4 must divide both in_channels=6 and out_channels=4"),
    (dict(in_channels=0, out_channels=4, kernel_size=3), "in_channels must be a positive int, got 0"),
    (dict(in_channels=3, out_channels=4, kernel_size=0), r"kernel_size must be >= 1, got \(0, 0\)"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=(1, 0)), r"stride must be >= 1, got \(1, 0\)"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=-1), r"padding must be >= 0, got \(-1, -1\)"),
    (dict(in_channels=3, out_channels=4, kernel_size=3.0), "kernel_size must be an int or a pair of ints, got 3.0"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="full"),
     "padding must be an int, a pair, 'valid' or 'same', got 'full'"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding="same"), "padding='same' needs stride 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=4, padding="same"), "needs asymmetric padding"),
])
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Conv2d(**kwargs)


# -- im2col / col2im ------------------------------------------------------------------------------
def test_im2col_matches_torch_unfold_and_col2im_is_its_adjoint(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    geometry = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1))
    cols = im2col(x, **geometry)
    unfold = F.unfold(torch.from_numpy(x), (3, 2), dilation=(2, 1), padding=(1, 2), stride=(2, 1)).numpy()
    np.testing.assert_array_equal(cols, unfold)
    # Adjointness: <im2col(x), c> == <x, col2im(c)> for any c.
    c = rng.standard_normal(cols.shape)
    back = col2im(c, x.shape, **geometry)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-12)
    fold = F.fold(torch.from_numpy(c), (7, 8), (3, 2), dilation=(2, 1), padding=(1, 2), stride=(2, 1)).numpy()
    np.testing.assert_allclose(back, fold, rtol=1e-12, atol=1e-12)


def test_kernel_keeps_float32_and_caches_forward_columns(rng):
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y, cache = conv2d_forward(x, w, np.zeros(4, np.float32), padding=1)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert cache.cols.shape == (2, 27, 36) and cache.cols.dtype == np.float32
    dx, dweight, dbias = conv2d_backward(np.ones_like(y), cache, need_dx=False, need_dbias=False)
    assert dx is None and dbias is None and dweight.dtype == np.float32
    # The 1x1 path uses the input itself as its columns: no copy.
    _, cache = conv2d_forward(x, w[:, :, :1, :1])
    assert np.shares_memory(cache.cols, x)


# -- LocallyConnected2d ---------------------------------------------------------------------------
LC_CASES = {
    "3x3 s1 p0": (2, 3, (5, 6), 3, 1, 0),
    "3x3 s2 p1": (2, 3, (7, 7), 3, 2, 1),
    "rectangular": (3, 2, (6, 7), (2, 3), (1, 2), (1, 0)),
}


def make_lc(case, rng, dtype=np.float64, bias=True):
    c_in, c_out, hw, kernel, stride, padding = LC_CASES[case]
    layer = LocallyConnected2d(c_in, c_out, kernel, hw, stride, padding, bias, dtype=dtype, generator=rng)
    return layer, rng.standard_normal((2, c_in) + hw).astype(dtype)


def torch_locally_connected(layer, x, dy):
    """PyTorch reference built from unfold + einsum, gradients by autograd."""
    out_h, out_w, f, c, kh, kw = layer.weight.shape
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(layer.weight.data.copy()).requires_grad_()
    tb = torch.from_numpy(layer.bias.data.copy()).requires_grad_()
    cols = F.unfold(tx, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # (N, K, P)
    y = torch.einsum("nkp,pfk->nfp", cols, tw.reshape(out_h * out_w, f, c * kh * kw))
    y = y.reshape(x.shape[0], f, out_h, out_w) + tb
    y.backward(torch.from_numpy(dy))
    return y.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


@pytest.mark.parametrize("case", list(LC_CASES))
def test_locally_connected_gradcheck(case, rng):
    layer, x = make_lc(case, rng)
    assert gradcheck(layer, x, max_checks=300) < 1e-6


@pytest.mark.parametrize("case", list(LC_CASES))
def test_locally_connected_matches_naive(case, rng):
    layer, x = make_lc(case, rng)
    geometry = (layer.stride, layer.padding)
    y, cache = locally_connected2d_forward(x, layer.weight.data, layer.bias.data, *geometry)
    np.testing.assert_allclose(y, locally_connected_naive(x, layer.weight.data, layer.bias.data, *geometry),
                               rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for ours, theirs in zip(locally_connected2d_backward(dy, cache),
                            locally_connected_naive_backward(dy, x, layer.weight.data, *geometry)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(LC_CASES))
def test_locally_connected_matches_torch(case, dtype, rng):
    layer, x = make_lc(case, rng, dtype)
    y = layer(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    expected = torch_locally_connected(layer, x, dy)
    for ours, theirs in zip((y, dx, layer.weight.grad, layer.bias.grad), expected):
        assert ours.dtype == dtype
        assert_close(ours, theirs, dtype)


def test_locally_connected_layout_shapes_and_errors(rng):
    layer = LocallyConnected2d(3, 4, 3, (8, 6), stride=1, padding=1, generator=rng)
    assert layer.weight.shape == (8, 6, 4, 3, 3, 3) and layer.bias.shape == (4, 8, 6)
    assert layer.output_shape((3, 8, 6)) == (4, 8, 6)
    assert list(layer.state_dict()) == ["weight", "bias"]
    layer(np.zeros((1, 3, 8, 6), np.float32))
    assert layer.backward(np.ones((1, 4, 8, 6), np.float32), input_grad=False) is None
    assert layer.weight.grad is not None
    with pytest.raises(ValueError, match=r"built for 8x6 inputs .* got 6x8"):
        layer(np.zeros((1, 3, 6, 8), np.float32))
    with pytest.raises(ValueError, match="LocallyConnected2d expects 3 input channels, got 2"):
        layer(np.zeros((1, 2, 8, 6), np.float32))
    with pytest.raises(ValueError, match="LocallyConnected2d: height 7 with kernel 3, stride 3"):
        LocallyConnected2d(1, 1, 3, 7, stride=3)
