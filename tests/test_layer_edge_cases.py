"""Raw NumPy errors and non-finite values in the layers (issue 17, items 10 and 11), against PyTorch.

* ``backward`` with a wrongly shaped gradient: one ValueError naming the layer and both shapes;
* empty batches (N = 0): empty outputs and zero parameter gradients, as PyTorch, every layer;
* huge sizes: refused with a ValueError before anything is allocated;
* NaN and inf stay where PyTorch keeps them (adaptive average pooling, the flat convolution).
"""
from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pytest

import cnnkit.nn as nn
from cnnkit.nn.validation import MAX_PARAMETER_ELEMENTS, parameter_budget

torch = pytest.importorskip("torch")
F64 = np.float64


def to_torch(x):
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


# -- a wrongly shaped gradient -------------------------------------------------------------------
@pytest.mark.parametrize("make,x_shape", [
    (lambda: nn.Conv2d(3, 4, 3, algorithm="flat", dtype=F64), (2, 3, 8, 8)),
    (lambda: nn.Conv2d(3, 4, 3, algorithm="im2col", dtype=F64), (2, 3, 8, 8)),
    (lambda: nn.Linear(6, 5, dtype=F64), (2, 6)),
    (lambda: nn.MaxPool2d(2), (2, 3, 8, 8)),
    (lambda: nn.AdaptiveAvgPool2d(3), (2, 3, 8, 8)),
    (lambda: nn.BatchNorm2d(3, dtype=F64), (2, 3, 4, 4)),
    (lambda: nn.ReLU(), (2, 3)),
    (lambda: nn.Flatten(), (2, 3, 2, 2)),
], ids=["conv-flat", "conv-im2col", "linear", "maxpool", "adaptive", "batchnorm", "relu", "flatten"])
def test_backward_with_a_wrongly_shaped_gradient_names_layer_and_shapes(make, x_shape):
    layer = make()
    x = np.random.default_rng(0).standard_normal(x_shape)
    y = layer(x)
    name = type(layer).__name__
    wrong = np.ones(y.shape[:-1] + (y.shape[-1] + 1,))
    with pytest.raises(ValueError, match=re.escape(f"{name}.backward: dy has shape {tuple(wrong.shape)}, but the output "
                                                   f"of its forward had shape {tuple(y.shape)}; pass the gradient")):
        layer.backward(wrong)
    with pytest.raises(ValueError, match=rf"{name}\.backward: dy is a float"):
        layer.backward(1.0)
    assert layer.backward(np.ones(y.shape)).shape == x.shape  # the refused calls consumed nothing


def test_wrong_gradient_through_a_container_names_the_layer_that_receives_it():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    net(np.zeros((2, 1, 6, 6), np.float32))
    with pytest.raises(ValueError, match=r"Linear\.backward: dy has shape \(2, 4\), .* had shape \(2, 3\)"):
        net.backward(np.zeros((2, 4), np.float32))


def test_forward_called_directly_is_not_checked_against_a_stale_shape():
    layer = nn.Linear(3, 2)
    layer(np.zeros((5, 3), np.float32))
    y = layer.forward(np.zeros((1, 3), np.float32))  # not through __call__: no shape recorded
    assert layer.backward(np.ones_like(y)).shape == (1, 3)


def test_losses_and_multi_output_models_keep_their_own_backward():
    loss = nn.CrossEntropyLoss()
    loss(np.zeros((2, 3), np.float32), np.array([0, 2]))
    assert loss.backward().shape == (2, 3)


# -- empty batches -------------------------------------------------------------------------------
def _empty_cases():
    return [
        ("conv-flat", lambda: nn.Conv2d(8, 4, 3, padding=1, algorithm="flat", dtype=F64),
         lambda m: torch.nn.Conv2d(8, 4, 3, padding=1), (0, 8, 5, 5)),
        ("conv-flat-s2", lambda: nn.Conv2d(8, 4, 3, stride=2, padding=1, algorithm="flat", dtype=F64),
         lambda m: torch.nn.Conv2d(8, 4, 3, stride=2, padding=1), (0, 8, 5, 5)),
        ("conv-groups", lambda: nn.Conv2d(4, 4, 3, groups=2, dtype=F64),
         lambda m: torch.nn.Conv2d(4, 4, 3, groups=2), (0, 4, 5, 5)),
        ("linear", lambda: nn.Linear(3, 4, dtype=F64), lambda m: torch.nn.Linear(3, 4), (0, 3)),
        ("bn2d-eval", lambda: nn.BatchNorm2d(3, dtype=F64).eval(), lambda m: torch.nn.BatchNorm2d(3).eval(),
         (0, 3, 4, 4)),
        ("bn1d-eval", lambda: nn.BatchNorm1d(3, dtype=F64).eval(), lambda m: torch.nn.BatchNorm1d(3).eval(), (0, 3)),
        ("bn2d-train", lambda: nn.BatchNorm2d(3, dtype=F64), lambda m: torch.nn.BatchNorm2d(3), (0, 3, 4, 4)),
        ("maxpool", lambda: nn.MaxPool2d(2), lambda m: torch.nn.MaxPool2d(2), (0, 3, 4, 4)),
        ("avgpool", lambda: nn.AvgPool2d(3, 2, 1), lambda m: torch.nn.AvgPool2d(3, 2, 1), (0, 3, 5, 5)),
        ("adaptive", lambda: nn.AdaptiveAvgPool2d(3), lambda m: torch.nn.AdaptiveAvgPool2d(3), (0, 3, 5, 5)),
        ("lrn", lambda: nn.LocalResponseNorm(3), lambda m: torch.nn.LocalResponseNorm(3), (0, 3, 4, 4)),
        ("relu", lambda: nn.ReLU(), lambda m: torch.nn.ReLU(), (0, 3)),
        ("softmax", lambda: nn.Softmax(), lambda m: torch.nn.Softmax(dim=1), (0, 3)),
        ("softmax-over-the-empty-axis", lambda: nn.Softmax(dim=0), lambda m: torch.nn.Softmax(dim=0), (0, 3)),
        ("log-softmax-over-the-empty-axis", lambda: nn.LogSoftmax(dim=0), lambda m: torch.nn.LogSoftmax(dim=0),
         (0, 2, 2)),
        ("flatten", lambda: nn.Flatten(), lambda m: torch.nn.Flatten(), (0, 3, 2, 2)),
    ]


@pytest.mark.parametrize("name,make,make_torch,shape", _empty_cases(), ids=[c[0] for c in _empty_cases()])
def test_empty_batch_matches_pytorch(name, make, make_torch, shape):
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs = make(), make_torch(None)
    finally:
        torch.set_default_dtype(torch.float32)
    for key, value in theirs.state_dict().items():  # same weights (and running statistics)
        if key in ours.state_dict() and value.dtype.is_floating_point:
            value.copy_(torch.tensor(ours.state_dict()[key]))
    x = np.zeros(shape)
    y = ours(x)
    xt = to_torch(x)
    yt = theirs(xt)
    assert y.shape == tuple(yt.shape)
    yt.backward(torch.zeros_like(yt))
    dx = ours.backward(np.zeros(y.shape))
    assert dx.shape == x.shape
    for key, param in ours.named_parameters():
        torch_grad = dict(theirs.named_parameters())[key].grad
        np.testing.assert_array_equal(param.grad, torch_grad.numpy(), err_msg=key)
    for key, value in theirs.state_dict().items():  # running statistics and the batch count
        np.testing.assert_array_equal(ours.state_dict()[key], value.numpy(), err_msg=key)


def test_one_value_per_channel_in_training_is_still_refused():
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        nn.BatchNorm1d(3)(np.zeros((1, 3), np.float32))


# -- huge sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: nn.Linear(10**6, 10**6), r"Linear: weight of shape \(1000000, 1000000\) would hold 1,000,000,000,000"),
    (lambda: nn.BatchNorm2d(10**10), r"BatchNorm2d: num_features=10000000000 .* would hold 40,000,000,000"),
    (lambda: nn.BatchNorm1d(10**12, affine=False), r"BatchNorm1d: num_features=1000000000000"),
    (lambda: nn.Conv2d(10**5, 10**5, 3), r"Conv2d: weight of shape \(100000, 100000, 3, 3\)"),
    (lambda: nn.LocallyConnected2d(64, 64, 3, 1000), r"LocallyConnected2d: weight of shape \(998, 998, 64, 64, 3, 3\)"),
    (lambda: nn.AdaptiveAvgPool2d(10**9), r"AdaptiveAvgPool2d: output_size entries must be ints from 1 to 65536 .*"
                                          r"got 1000000000"),
    (lambda: nn.AdaptiveAvgPool2d((4, 10**9)), r"got \(4, 1000000000\)"),
], ids=["linear", "bn2d", "bn1d", "conv", "locally-connected", "adaptive", "adaptive-pair"])
def test_huge_sizes_are_refused_before_allocating(make, message):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=message):
            make()
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_the_limit_is_documented_and_sizes_below_it_work():
    assert MAX_PARAMETER_ELEMENTS == 2**31 - 1
    assert nn.Linear(1024, 512).weight.shape == (512, 1024)
    assert nn.AdaptiveAvgPool2d(65536).output_shape((1, 2, 2)) == (1, 65536, 65536)


def test_parameter_budget_stops_a_build_at_the_layer_that_exceeds_it():
    with parameter_budget(100, "100 values of a test"):
        nn.Linear(9, 10)  # 90 + 10
        with pytest.raises(ValueError, match=r"Linear: weight of shape \(1, 1\) would take the model past the 100"):
            nn.Linear(1, 1)
    nn.Linear(1, 1)  # no budget outside


# -- non-finite values -----------------------------------------------------------------------------
@pytest.mark.parametrize("output_size", [(4, 5), (3, 3), (10, 2)])
def test_adaptive_avg_pool_keeps_an_inf_in_its_own_bin(output_size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 9))
    x[0, 1, 3, 4], x[1, 2, 0, 0], x[1, 0, 6, 8] = np.inf, np.nan, -np.inf
    layer = nn.AdaptiveAvgPool2d(output_size)
    y = layer(x)
    xt = to_torch(x)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, output_size)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, equal_nan=True)
    assert np.isfinite(y).sum() == np.isfinite(yt.detach().numpy()).sum() > 0
    dy = rng.standard_normal(y.shape)
    dy[0, 0, 1, 1], dy[1, 1, 0, 0] = np.inf, np.nan
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 0, 2), (3, 2, 1)])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_flat_conv_gradients_keep_a_nan_in_the_taps_that_read_it(stride, padding, dilation, bad):
    rng = np.random.default_rng(1)
    layer = nn.Conv2d(8, 4, 3, stride=stride, padding=padding, dilation=dilation, algorithm="flat",
                      check_geometry=False, dtype=F64, generator=rng)
    theirs = torch.nn.Conv2d(8, 4, 3, stride=stride, padding=padding, dilation=dilation).double()
    theirs.weight.data = torch.tensor(layer.weight.data)
    theirs.bias.data = torch.tensor(layer.bias.data)
    x = rng.standard_normal((2, 8, 7, 7))
    x[0, 2, 0, 6], x[1, 5, 6, 0] = bad, bad  # corners: read by few taps
    y = layer(x)
    assert layer.last_algorithm == "flat"
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = to_torch(x)
    theirs(xt).backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-10, equal_nan=True)
    assert np.isfinite(layer.weight.grad).any()
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10, equal_nan=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # forward: zero padding * inf, as in PyTorch
def test_flat_conv_input_gradient_with_an_inf_weight():
    rng = np.random.default_rng(2)
    layer = nn.Conv2d(8, 4, 3, padding=1, algorithm="flat", dtype=F64, generator=rng)
    layer.weight.data[1, 3, 0, 0] = np.inf
    theirs = torch.nn.Conv2d(8, 4, 3, padding=1).double()
    theirs.weight.data = torch.tensor(layer.weight.data)
    theirs.bias.data = torch.tensor(layer.bias.data)
    x = rng.standard_normal((2, 8, 6, 6))
    y = layer(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    xt = to_torch(x)
    theirs(xt).backward(torch.tensor(dy))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-10, equal_nan=True)
    assert np.isfinite(dx).any() and not np.isfinite(dx).all()


# -- found by the fuzz test (tests/test_fuzz_layers.py) ---------------------------------------------
@pytest.mark.parametrize("ours,theirs", [
    (lambda: nn.AvgPool2d((1, 2), ceil_mode=True, count_include_pad=False),
     lambda: torch.nn.AvgPool2d((1, 2), ceil_mode=True, count_include_pad=False)),
    (lambda: nn.AvgPool2d((3, 4), padding=1, ceil_mode=True), lambda: torch.nn.AvgPool2d((3, 4), padding=1,
                                                                                          ceil_mode=True)),
    (lambda: nn.MaxPool2d((1, 3), stride=(1, 3), ceil_mode=True), lambda: torch.nn.MaxPool2d((1, 3), (1, 3),
                                                                                             ceil_mode=True)),
    (lambda: nn.LPPool2d(2, (1, 2), ceil_mode=True), lambda: torch.nn.LPPool2d(2, (1, 2), ceil_mode=True)),
], ids=["avg", "avg-padded", "max", "lp"])
def test_ceil_mode_window_may_overhang_a_small_input_as_in_pytorch(ours, theirs):
    """A window larger than the (padded) input, allowed in ceil mode when it overhangs by less than a stride."""
    x = np.abs(np.random.default_rng(3).standard_normal((2, 3, 5, 1))) + 0.1
    layer = ours()
    y = layer(x)
    xt = to_torch(x)
    yt = theirs()(xt)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=1e-12)


def test_max_pool_window_that_sees_only_padding_is_refused():
    """Dilated taps stepping over a 1-pixel-wide input: PyTorch gives -inf and a switch outside the
    window (its backward then writes out of bounds); cnnkit refuses the geometry."""
    layer = nn.MaxPool2d((1, 2), stride=1, padding=(0, 1), dilation=(1, 2), ceil_mode=True)
    with pytest.raises(ValueError, match="along the width, window 0 .*dilation 2.* sees only padding of the input "
                                         "width 1"):
        layer(np.zeros((1, 3, 7, 1)))
    assert layer(np.zeros((1, 3, 7, 3))).shape == (1, 3, 7, 3)  # the same layer where windows see input
