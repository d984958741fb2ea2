"""oneDNN max and average pooling against the NumPy reference (float64) and PyTorch: forward,
input gradient, switches/indices, ties, the odd geometries of test_pool.py, both layouts, and
the cases oneDNN must decline (NaN, -inf windows, ceil overhang past the padding)."""
import numpy as np
import pytest

from cnnkit.functional import pool as reference
from onednn_helpers import assert_close, in_layout, requires_onednn

pytestmark = requires_onednn

# (kernel_size, stride, padding, dilation, ceil_mode, input shape): test_pool.py's cases
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
    "stride_does_not_divide": (3, 3, 0, 1, False, (2, 3, 7, 7)),
    "16_channels": (3, 2, 1, 1, False, (2, 16, 9, 9)),
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
    "16_channels": (3, 2, 1, False, (2, 16, 9, 9)),
}
LAYOUTS = ["nchw", "channels_last"]


def f32(a):
    return a.astype(np.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("values", ["distinct", "ties"])
@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_matches_reference_with_ties(name, values, layout, rng):
    from cnnkit.functional.onednn import pool

    k, s, p, d, ceil, shape = MAX_CASES[name]
    x = rng.integers(0, 3, shape).astype(np.float64) if values == "ties" else rng.standard_normal(shape)
    y_ref, cache_ref = reference.max_pool2d_forward(x, k, s, p, d, ceil)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = reference.max_pool2d_backward(dy, cache_ref)
    assert pool.max_pool2d_decline(f32(x), k, s, p, d, ceil) is None
    y, cache = pool.max_pool2d_forward(in_layout(f32(x), layout), k, s, p, d, ceil)
    assert_close(y, y_ref)
    # The same switches (first maximum in scan order on ties), so the same gradient routing;
    # functional.pool.max_pool2d_indices reads oneDNN's cache as it reads the reference's.
    np.testing.assert_array_equal(reference.max_pool2d_indices(cache), reference.max_pool2d_indices(cache_ref))
    assert_close(pool.max_pool2d_backward(in_layout(f32(dy), layout), cache), dx_ref)


@pytest.mark.parametrize("name", ["3x3_s2_pad1_batch1", "ceil_overhang", "rect_dilation"])
def test_max_matches_torch_indices(name, rng):
    torch = pytest.importorskip("torch")
    from cnnkit.functional.onednn import pool

    k, s, p, d, ceil, shape = MAX_CASES[name]
    x = f32(rng.integers(0, 2, shape))
    ty, indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil, return_indices=True)
    y, cache = pool.max_pool2d_forward(x, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(reference.max_pool2d_indices(cache), indices.numpy())


def test_max_inference_keeps_no_workspace(rng):
    from cnnkit.functional.onednn import pool

    x = f32(rng.standard_normal((2, 3, 8, 8)))
    y, cache = pool.max_pool2d_forward(x, 3, 2, 1, need_switches=False)
    assert cache is None
    assert_close(y, reference.max_pool2d_forward(x.astype(np.float64), 3, 2, 1)[0])


def test_max_declines_nan_and_minus_inf(rng):
    from cnnkit.functional.onednn import pool

    x = f32(rng.standard_normal((1, 2, 4, 4)))
    assert pool.max_pool2d_decline(x, 2) is None
    x[0, 1, 2, 2] = np.nan
    assert "NaN" in pool.max_pool2d_decline(x, 2)
    x[0, 1, 2, 2] = -np.inf
    assert "-inf" in pool.max_pool2d_decline(x, 2)
    assert "float32" in pool.max_pool2d_decline(x.astype(np.float64), 2)
    assert "empty" in pool.max_pool2d_decline(x[:0], 2)
    # +inf is fine: it wins its windows in both libraries.
    x[0, 1, 2, 2] = np.inf
    assert pool.max_pool2d_decline(x, 2) is None
    y, _ = pool.max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(y, reference.max_pool2d_forward(x, 2)[0])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_matches_reference(name, count_include_pad, layout, rng):
    from cnnkit.functional.onednn import pool

    k, s, p, ceil, shape = AVG_CASES[name]
    x = rng.standard_normal(shape)
    y_ref, cache_ref = reference.avg_pool2d_forward(x, k, s, p, ceil, count_include_pad)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = reference.avg_pool2d_backward(dy, cache_ref)
    reason = pool.avg_pool2d_decline(f32(x), k, s, p, ceil, count_include_pad)
    g = cache_ref[1]
    overhang = any((o - 1) * st + kk > size + 2 * pp
                   for o, st, kk, size, pp in zip(g.output, g.stride, g.kernel, shape[2:], g.padding))
    if overhang and count_include_pad:
        assert "ceil-mode" in reason  # PyTorch's divisor leaves the overhang out, oneDNN's counts it
        return
    assert reason is None
    y, cache = pool.avg_pool2d_forward(in_layout(f32(x), layout), k, s, p, ceil, count_include_pad)
    assert_close(y, y_ref)
    assert_close(pool.avg_pool2d_backward(in_layout(f32(dy), layout), cache), dx_ref)


def test_avg_matches_torch_and_declines_divisor_override(rng):
    torch = pytest.importorskip("torch")
    from cnnkit.functional.onednn import pool

    x = f32(rng.standard_normal((3, 4, 9, 7)))
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.avg_pool2d(tx, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    dy = f32(rng.standard_normal(ty.shape))
    ty.backward(torch.from_numpy(dy))
    y, cache = pool.avg_pool2d_forward(x, 3, 2, 1, True, False)
    assert_close(y, ty.detach().numpy())
    assert_close(pool.avg_pool2d_backward(dy, cache), tx.grad.numpy())
    assert "divisor_override" in pool.avg_pool2d_decline(x, 2, divisor_override=3)


def test_output_keeps_the_input_layout(rng):
    from cnnkit.functional.onednn import layout, pool

    x = f32(rng.standard_normal((2, 16, 8, 8)))
    y, _ = pool.max_pool2d_forward(in_layout(x, "channels_last"), 2)
    assert layout.is_channels_last(y) and not y.flags.c_contiguous
    y, _ = pool.max_pool2d_forward(x, 2)
    assert y.flags.c_contiguous
