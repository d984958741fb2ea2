"""Pooling as ONNX defines it (``padding_rule="onnx"``, ``definition="onnx"``) and the LP-pooling
backward fix, in the three tiers: a naive loop-over-windows reference, onnxruntime, and float64
numerical gradients. PyTorch's rules stay the default of cnnkit's own layers."""
import itertools
import math

import numpy as np
import pytest

import cnnkit
from cnnkit.functional.pool import avg_pool2d_forward, lp_pool2d_backward, lp_pool2d_forward, max_pool2d_forward
from cnnkit.functional.pool_geometry import pool_geometry
from cnnkit.nn.pooling import LPPool2d, MaxPool2d
from cnnkit.onnx.pool_layers import OnnxAveragePool, OnnxLpPool, OnnxMaxPool


def naive_pool(x, kind, kernel, stride, pads, dilation=(1, 1), ceil_mode=False, include_pad=False, p=2.0):
    """ONNX pooling by its definition, one window at a time. ``pads = (top, left, bottom, right)``."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    top, left, bottom, right = pads
    sizes = []
    for size, k, s, d, begin, end in ((h, kh, sh, dh, top, bottom), (w, kw, sw, dw, left, right)):
        steps = (size + begin + end - d * (k - 1) - 1) / s
        out = (math.ceil(steps) if ceil_mode else math.floor(steps)) + 1
        if ceil_mode and (out - 1) * s >= size + begin:  # no window starts in the trailing padding
            out -= 1
        sizes.append(out)
    y = np.zeros((n, c) + tuple(sizes), dtype=np.float64)
    for i, j in itertools.product(range(sizes[0]), range(sizes[1])):
        rows = [i * sh - top + a * dh for a in range(kh)]
        cols = [j * sw - left + b * dw for b in range(kw)]
        real = [(r, q) for r in rows for q in cols if 0 <= r < h and 0 <= q < w]
        in_pad = [(r, q) for r in rows for q in cols if -top <= r < h + bottom and -left <= q < w + right]
        values = np.stack([x[:, :, r, q] for r, q in real], axis=-1)
        if kind == "max":
            y[:, :, i, j] = values.max(axis=-1)
        elif kind == "avg":
            y[:, :, i, j] = values.sum(axis=-1) / (len(in_pad) if include_pad else len(real))
        else:  # lp: padding holds zeros, which add nothing
            y[:, :, i, j] = (np.abs(values) ** p).sum(axis=-1) ** (1 / p)
    return y


CASES = [  # kernel, stride, pads (top, left, bottom, right), dilation, ceil_mode, input (H, W)
    ((3, 3), (2, 2), (0, 0, 1, 1), (1, 1), False, (7, 6)),   # TF "same": the extra pad at the end
    ((3, 3), (1, 1), (2, 2, 2, 2), (1, 1), False, (4, 5)),   # pads up to kernel - 1 (PyTorch refuses them)
    ((2, 3), (3, 2), (1, 0, 0, 2), (1, 1), True, (8, 7)),    # ceil mode, stride that does not divide
    ((3, 2), (2, 1), (1, 1, 2, 0), (2, 2), False, (9, 8)),   # dilation with asymmetric pads
    ((2, 2), (2, 2), (1, 1, 1, 1), (1, 1), True, (5, 5)),    # a ceil-mode window would start in the padding
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1), False, (5, 4)),   # 1x1 stride 2
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("kind", ["max", "avg_exclude", "avg_include", "lp1", "lp2", "lp3"])
def test_onnx_pooling_matches_the_naive_definition(case, kind, rng):
    kernel, stride, pads, dilation, ceil_mode, hw = CASES[case]
    x = rng.standard_normal((2, 3) + hw)
    if kind == "max":
        y, _ = max_pool2d_forward(x, kernel, stride, pads, dilation, ceil_mode, padding_rule="onnx")
        ref = naive_pool(x, "max", kernel, stride, pads, dilation, ceil_mode)
    elif kind.startswith("avg"):
        include = kind == "avg_include"
        y, _ = avg_pool2d_forward(x, kernel, stride, pads, ceil_mode, include, dilation=dilation, padding_rule="onnx")
        ref = naive_pool(x, "avg", kernel, stride, pads, dilation, ceil_mode, include_pad=include)
    else:
        p = float(kind[2:])
        y, _ = lp_pool2d_forward(x, p, kernel, stride, ceil_mode, definition="onnx", padding=pads, dilation=dilation)
        ref = naive_pool(x, "lp", kernel, stride, pads, dilation, ceil_mode, p=p)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_onnx_pool_layers_gradcheck(case, rng):
    kernel, stride, pads, dilation, ceil_mode, hw = CASES[case]
    x = rng.standard_normal((2, 2) + hw)  # continuous values: no ties, no zeros
    layers = [OnnxMaxPool(kernel, stride, pads, dilation, ceil_mode),
              OnnxAveragePool(kernel, stride, pads, dilation, ceil_mode, count_include_pad=False),
              OnnxAveragePool(kernel, stride, pads, dilation, ceil_mode, count_include_pad=True),
              OnnxLpPool(3, kernel, stride, pads, dilation, ceil_mode), OnnxLpPool(1.5, kernel, stride, pads, dilation, ceil_mode)]
    for layer in layers:
        assert cnnkit.gradcheck(layer, x) < 1e-6, layer


def test_batch_of_one_and_zero(rng):
    layer = OnnxAveragePool((3, 3), (2, 2), (0, 0, 1, 1))
    one = rng.standard_normal((1, 2, 5, 5))
    np.testing.assert_allclose(layer(one), naive_pool(one, "avg", (3, 3), (2, 2), (0, 0, 1, 1)), rtol=1e-12)
    assert layer(np.zeros((0, 2, 5, 5))).shape == (0, 2, 2, 2)


def test_one_dimensional_pooling_runs_as_two_dimensional(rng):
    x = rng.standard_normal((2, 3, 9))
    y = OnnxMaxPool((3,), (2,), (1, 0))(x)
    ref = naive_pool(x[:, :, None, :], "max", (1, 3), (1, 2), (0, 1, 0, 0))[:, :, 0, :]
    np.testing.assert_array_equal(y, ref)


def test_pytorch_rule_stays_the_default():
    with pytest.raises(ValueError, match="at most half the kernel"):
        MaxPool2d(3, padding=2)
    with pytest.raises(ValueError, match="at most half the kernel"):
        pool_geometry((1, 1, 8, 8), 3, 1, 2)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        pool_geometry((1, 1, 8, 8), 3, 1, (3, 0, 0, 0), padding_rule="onnx")
    with pytest.raises(ValueError, match="definition='onnx'"):
        lp_pool2d_forward(np.ones((1, 1, 4, 4)), 2, 2, padding=1)


def test_max_pool_of_integers_never_picks_the_padding():
    x = np.array([[[[-128, -100], [-120, -90]]]], dtype=np.int8)
    y, _ = max_pool2d_forward(x, (2, 2), (1, 1), (1, 1, 1, 1), padding_rule="onnx")
    assert y.dtype == np.int8
    np.testing.assert_array_equal(y[0, 0], [[-128, -100, -100], [-120, -90, -90], [-120, -90, -90]])


# ---- PyTorch's LPPool2d: torch's definition kept, backward fixed where torch is finite ---------


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_lppool2d_follows_torch_not_onnx_for_negative_inputs(p, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 6, 6))
    x[:, 0] = -np.abs(x[:, 0])  # whole negative windows: x^p and |x|^p differ for odd p
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.lp_pool2d(tx, p, 2)
    layer = LPPool2d(p, 2).double()
    y = layer(x)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, equal_nan=True)
    dy = rng.standard_normal(y.shape)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(layer.backward(dy), tx.grad.numpy(), rtol=1e-9, atol=1e-12, equal_nan=True)
    onnx_like = OnnxLpPool(p, (2, 2), (2, 2))(x)  # ONNX's LpPool is on |x|
    np.testing.assert_allclose(onnx_like, naive_pool(x, "lp", (2, 2), (2, 2), (0, 0, 0, 0), p=p), rtol=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 0.5])
def test_lppool2d_backward_is_finite_where_torch_is(p):
    torch = pytest.importorskip("torch")
    # A window summing to inf: PyTorch's d(u^(1/p))/du = u^(1/p - 1)/p is 0 there (1 for p = 1);
    # the old y / (p u) was inf / inf = NaN for every element of the window.
    x = np.array([[[[np.inf, 2.0], [0.5, 3.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.lp_pool2d(tx, p, 2)
    ty.backward(torch.ones_like(ty))
    layer = LPPool2d(p, 2).double()
    y = layer(x)
    with np.errstate(all="ignore"):
        dx = layer.backward(np.ones_like(y))
    expected = tx.grad.numpy()
    finite = np.isfinite(expected)
    assert finite.sum() >= (6 if p >= 1 else 0)
    np.testing.assert_allclose(dx[finite], expected[finite], rtol=1e-12)
    np.testing.assert_array_equal(np.isnan(dx), np.isnan(expected))


def test_lp_backward_directly_matches_torch_on_random_windows(rng):
    torch = pytest.importorskip("torch")
    x = np.abs(rng.standard_normal((1, 2, 4, 4))) + 0.1
    for p in (1.0, 2.5):
        y, cache = lp_pool2d_forward(x, p, 2, ceil_mode=False)
        tx = torch.from_numpy(x).requires_grad_()
        torch.nn.functional.lp_pool2d(tx, p, 2).backward(torch.ones(y.shape, dtype=torch.float64))
        np.testing.assert_allclose(lp_pool2d_backward(np.ones_like(y), cache), tx.grad.numpy(), rtol=1e-10)
