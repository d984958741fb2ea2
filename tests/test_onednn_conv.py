"""oneDNN convolution against the NumPy reference (float64) and PyTorch: forward and every
gradient, over the odd geometries of test_conv.py, in NCHW and channels-last memory."""
import numpy as np
import pytest

from cnnkit.functional.conv import conv2d_backward as reference_backward
from cnnkit.functional.conv import conv2d_forward as reference_forward
from onednn_helpers import assert_close, in_layout, requires_onednn

pytestmark = requires_onednn

# (in, out, input (H, W), kernel, stride, padding, dilation, groups): test_conv.py's odd cases
CASES = {
    "3x3 s1 p0": (3, 4, (6, 6), 3, 1, 0, 1, 1),
    "3x3 s1 p1": (3, 4, (6, 6), 3, 1, 1, 1, 1),
    "3x3 s2 p1": (2, 3, (8, 8), 3, 2, 1, 1, 1),
    "3x3 s3 p2": (2, 3, (8, 8), 3, 3, 2, 1, 1),
    "5x5 s2 p2 overlap": (2, 3, (9, 9), 5, 2, 2, 1, 1),
    "stride does not divide": (2, 3, (7, 7), 3, 3, 0, 1, 1),
    "dilation 2": (2, 3, (9, 8), 3, 1, 2, 2, 1),
    "groups 2": (4, 6, (6, 6), 3, 1, 1, 1, 2),
    "depthwise": (4, 4, (6, 6), 3, 1, 1, 1, 4),
    "depthwise multiplier 2": (3, 6, (5, 5), 3, 2, 1, 1, 3),
    "1x1 s1": (5, 3, (4, 5), 1, 1, 0, 1, 1),
    "1x1 s2": (5, 3, (5, 6), 1, 2, 0, 1, 1),
    "1x1 s1 p1": (3, 2, (4, 4), 1, 1, 1, 1, 1),
    "rectangular 3x5 on 7x9": (3, 4, (7, 9), (3, 5), 1, 0, 1, 1),
    "rectangular everything": (2, 3, (8, 11), (3, 2), (2, 3), (1, 2), (2, 1), 1),
    "many filters, few positions": (3, 32, (3, 3), 2, 1, 0, 1, 1),
    "16 channels (blocked kernels)": (16, 32, (10, 10), 3, 1, 1, 1, 1),
}


def make(case, rng, n=2, bias=True):
    c_in, c_out, hw, kernel, stride, padding, dilation, groups = CASES[case]
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = rng.standard_normal((n, c_in) + hw)
    weight = rng.standard_normal((c_out, c_in // groups, kh, kw)) / np.sqrt(c_in * kh * kw / groups)
    b = rng.standard_normal(c_out) if bias else None
    return x, weight, b, (stride, padding, dilation, groups)


def f32(a):
    return None if a is None else a.astype(np.float32)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, layout, rng):
    from cnnkit.functional.onednn import conv

    x, weight, bias, args = make(case, rng)
    y_ref, cache_ref = reference_forward(x, weight, bias, *args)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = reference_backward(dy, cache_ref)

    assert conv.conv2d_decline(f32(x), f32(weight), f32(bias), *args) is None
    y, cache = conv.conv2d_forward(in_layout(f32(x), layout), f32(weight), f32(bias), *args)
    assert y.dtype == np.float32
    assert_close(y, y_ref, name="y")
    dx, dw, db = conv.conv2d_backward(in_layout(f32(dy), layout), cache)
    for got, want, name in ((dx, dx_ref, "dx"), (dw, dw_ref, "dweight"), (db, db_ref, "dbias")):
        assert got.dtype == np.float32
        assert_close(got, want, name=name)
    assert dw.shape == weight.shape and dw.flags.c_contiguous  # PyTorch's weight layout, plain


@pytest.mark.parametrize("case", ["3x3 s2 p1", "groups 2", "depthwise multiplier 2", "rectangular everything"])
def test_matches_torch(case, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    from cnnkit.functional.onednn import conv

    x, weight, bias, (stride, padding, dilation, groups) = make(case, rng, n=3)
    x, weight, bias = f32(x), f32(weight), f32(bias)
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(weight).requires_grad_()
    tb = torch.from_numpy(bias).requires_grad_()
    ty = F.conv2d(tx, tw, tb, stride, padding, dilation, groups)
    dy = rng.standard_normal(ty.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy))
    y, cache = conv.conv2d_forward(x, weight, bias, stride, padding, dilation, groups)
    dx, dw, db = conv.conv2d_backward(dy, cache)
    for got, want, name in zip((y, dx, dw, db), (ty.detach(), tx.grad, tw.grad, tb.grad), ("y", "dx", "dw", "db")):
        assert_close(got, want.numpy(), name=name)


def test_batch_of_one_without_bias_and_gradients_on_request(rng):
    from cnnkit.functional.onednn import conv, runtime

    x, weight, _, args = make("3x3 s2 p1", rng, n=1, bias=False)
    y_ref, cache_ref = reference_forward(x, weight, None, *args)
    dy = rng.standard_normal(y_ref.shape)
    y, cache = conv.conv2d_forward(f32(x), f32(weight), None, *args)
    assert_close(y, y_ref)
    before = runtime.stats()["by_kind"]
    dx, dw, db = conv.conv2d_backward(f32(dy), cache, need_dx=False, need_dweight=True, need_dbias=False)
    assert dx is None and db is None
    after = runtime.stats()["by_kind"]
    assert after.get("conv backward data", 0) == before.get("conv backward data", 0)  # no input gradient run
    assert after["conv backward weights"] == before.get("conv backward weights", 0) + 1
    assert_close(dw, reference_backward(dy, cache_ref)[1])
    # A bias gradient asked of a convolution without bias: the sum of dy, as the reference gives.
    _, _, db = conv.conv2d_backward(f32(dy), cache, need_dx=False, need_dweight=False, need_dbias=True)
    assert_close(db, dy.sum(axis=(0, 2, 3)))


def test_relu_post_op_forward_and_backward(rng):
    from cnnkit.functional.onednn import conv

    x, weight, bias, args = make("3x3 s1 p1", rng)
    y_ref, cache_ref = reference_forward(x, weight, bias, *args)
    relu = np.maximum(y_ref, 0)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref, dw_ref, db_ref = reference_backward(dy * (y_ref > 0), cache_ref)
    assert conv.conv2d_decline(f32(x), f32(weight), f32(bias), *args, relu=True) is None
    y, cache = conv.conv2d_forward(f32(x), f32(weight), f32(bias), *args, relu=True)
    assert_close(y, relu)
    # The ReLU's gradient is the caller's (Conv2d masks dy with y > 0), as for the NumPy kernels.
    for got, want in zip(conv.conv2d_backward(f32(dy) * (y > 0), cache), (dx_ref, dw_ref, db_ref)):
        assert_close(got, want)
    x[0, 0, 0, 0] = np.nan  # oneDNN's ReLU post-op would turn the NaN outputs into 0: declined
    assert "NaN" in conv.conv2d_decline(f32(x), f32(weight), f32(bias), *args, relu=True)
    assert conv.conv2d_decline(f32(x), f32(weight), f32(bias), *args) is None


def test_output_is_channels_last_and_behaves_like_an_array(rng):
    from cnnkit.functional.onednn import conv, layout

    x, weight, bias, args = make("16 channels (blocked kernels)", rng)
    y, _ = conv.conv2d_forward(f32(x), f32(weight), f32(bias), *args)
    y_ref, _ = reference_forward(x, weight, bias, *args)
    assert y.shape == y_ref.shape and isinstance(y, np.ndarray)
    if layout.activation_layout() == "channels_last":
        assert layout.is_channels_last(y) and not y.flags.c_contiguous
    # Ordinary NumPy on it: reshape (a copy in NCHW order), slicing, reductions.
    assert_close(y.reshape(len(y), -1), y_ref.reshape(len(y), -1))
    assert_close(y[:, 3], y_ref[:, 3])
    assert_close(y.sum(axis=(0, 2, 3)), y_ref.sum(axis=(0, 2, 3)), rtol=1e-4)


def test_declines_what_it_does_not_run(rng):
    from cnnkit.functional.onednn import conv

    x, weight, bias, args = make("3x3 s1 p1", rng)
    assert "float32" in conv.conv2d_decline(x, weight, bias, *args)  # float64: the reference's job
    assert "float32" in conv.conv2d_decline(f32(x), weight, f32(bias), *args)
    assert "empty" in conv.conv2d_decline(f32(x[:0]), f32(weight), f32(bias), *args)
    assert conv.conv2d_decline(f32(x), f32(weight), f32(bias), *args) is None


def test_non_contiguous_input_view(rng):
    from cnnkit.functional.onednn import conv

    x, weight, bias, args = make("3x3 s1 p1", rng, n=4)
    view = f32(x)[::2, :, ::-1]  # every other image, rows flipped: negative strides
    y, cache = conv.conv2d_forward(view, f32(weight), f32(bias), *args)
    y_ref, _ = reference_forward(x[::2, :, ::-1], weight, bias, *args)
    assert_close(y, y_ref)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_stays_where_pytorch_keeps_it(bad, rng):
    torch = pytest.importorskip("torch")
    from cnnkit.functional.onednn import conv

    x = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    x[1, 3, 4, 5] = bad
    weight = (rng.standard_normal((8, 16, 3, 3)) / 12).astype(np.float32)
    y, cache = conv.conv2d_forward(x, weight, None, 2, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, _ = conv.conv2d_backward(dy, cache, need_dbias=False)
    tx, tw = torch.from_numpy(x).requires_grad_(), torch.from_numpy(weight).requires_grad_()
    ty = torch.nn.functional.conv2d(tx, tw, None, 2, 1)
    ty.backward(torch.from_numpy(dy))
    for got, want in ((y, ty.detach()), (dx, tx.grad), (dw, tw.grad)):
        want = want.numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))  # the same positions poisoned
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)
