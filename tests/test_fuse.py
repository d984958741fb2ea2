"""cnnkit.nn.fuse: BatchNorm folded into the conv before it, ReLU into the conv, for inference."""
import numpy as np
import pytest

import cnnkit.models as M
from cnnkit.nn.activation import Identity, ReLU
from cnnkit.nn.containers import Residual, Sequential
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.fuse import fold_batchnorm, fuse, fuse_count
from cnnkit.nn.module import no_grad
from cnnkit.nn.normalization import BatchNorm2d


def randomize_bn(model, rng):
    """Running statistics and affine parameters away from their identity defaults."""
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            m.running_mean[...] = rng.standard_normal(m.num_features)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
            if m.weight is not None:
                m.weight.data[...] = rng.uniform(0.5, 1.5, m.num_features)
                m.bias.data[...] = rng.standard_normal(m.num_features)
    return model


def small_net(rng, dtype=np.float64):
    kw = dict(dtype=dtype, generator=rng)
    body = Sequential(Conv2d(4, 4, 3, padding=1, bias=False, **kw), BatchNorm2d(4, dtype=dtype), ReLU(),
                      Conv2d(4, 4, 3, padding=1, **kw), BatchNorm2d(4, affine=False, dtype=dtype))
    return randomize_bn(Sequential(Conv2d(3, 4, 3, padding=1, **kw), BatchNorm2d(4, dtype=dtype), ReLU(),
                                   Residual(body), ReLU(), Conv2d(4, 8, 3, stride=2, padding=1, groups=2, **kw),
                                   BatchNorm2d(8, dtype=dtype)), rng)


def outputs(model, x):
    with no_grad():
        return model.eval()(x)


def test_fused_equals_unfused_float64(rng):
    model = small_net(rng)
    x = rng.standard_normal((3, 3, 9, 7))
    fused = fuse(model, (3, 9, 7))
    np.testing.assert_allclose(outputs(fused, x), outputs(model, x), rtol=1e-10, atol=1e-12)
    # every BatchNorm folded (one affine=False), two ReLUs fused; the one after the sum is kept
    assert not any(isinstance(m, BatchNorm2d) for m in fused.modules())
    assert fuse_count(fused) == {"fused_relu": 2, "identity": 6}
    assert type(fused[4]) is ReLU
    assert any(isinstance(m, BatchNorm2d) for m in model.modules())  # the original is untouched


def test_conv_output_used_twice_is_not_fused(rng):
    conv = Conv2d(3, 3, 3, padding=1, dtype=np.float64, generator=rng)
    # Residual(conv) adds conv's input, not its output, so build: conv -> Residual(bn) (bn's input
    # is conv's output, and the sum uses it again).
    model = randomize_bn(Sequential(conv, Residual(BatchNorm2d(3, dtype=np.float64))), rng)
    x = rng.standard_normal((2, 3, 5, 5))
    fused = fuse(model, (3, 5, 5))
    assert isinstance(fused[1].body, BatchNorm2d)  # not siblings of the conv: left alone
    np.testing.assert_allclose(outputs(fused, x), outputs(model, x), rtol=1e-12)


def test_fold_batchnorm_matches_conv_then_bn(rng):
    conv = Conv2d(2, 5, (3, 2), stride=(2, 1), padding=1, bias=False, dtype=np.float64, generator=rng)
    bn = randomize_bn(BatchNorm2d(5, eps=1e-3, dtype=np.float64), rng).eval()
    x = rng.standard_normal((2, 2, 7, 6))
    with no_grad():
        want = bn(conv(x))
        fold_batchnorm(conv, bn)
        got = conv(x)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert conv.bias is not None


def test_fold_batchnorm_rejects_batch_statistics(rng):
    conv = Conv2d(2, 3, 1, dtype=np.float64, generator=rng)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_batchnorm(conv, BatchNorm2d(3, track_running_stats=False, dtype=np.float64))
    with pytest.raises(ValueError, match="BatchNorm2d\\(4\\)"):
        fold_batchnorm(conv, BatchNorm2d(4, dtype=np.float64))


def test_fused_relu_conv_backward_equals_conv_then_relu(rng):
    x = rng.standard_normal((2, 3, 6, 6))
    plain = Conv2d(3, 4, 3, padding=1, dtype=np.float64, generator=np.random.default_rng(5))
    fused = Conv2d(3, 4, 3, padding=1, dtype=np.float64, generator=np.random.default_rng(5))
    fused.fused_relu = True
    relu = ReLU()
    y_plain, y_fused = relu(plain(x)), fused(x)
    np.testing.assert_array_equal(y_fused, y_plain)
    assert (y_fused == 0).any()  # the ReLU clipped something
    dy = rng.standard_normal(y_plain.shape)
    np.testing.assert_allclose(fused.backward(dy), plain.backward(relu.backward(dy)), rtol=1e-12)
    np.testing.assert_allclose(fused.weight.grad, plain.weight.grad, rtol=1e-12)
    assert "fused_relu=True" in repr(fused)


def test_fuse_resnet20_float32():
    model = M.create("resnet20", seed=0)
    randomize_bn(model, np.random.default_rng(0))
    fused = fuse(model, (3, 32, 32))  # checks the outputs agree (float32, rtol 1e-4)
    counts = fuse_count(fused)
    assert counts["fused_relu"] == 10 and counts["identity"] == 29  # 19 BNs, the 10 ReLUs inside bodies
    assert not fused.training
