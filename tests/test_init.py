import math

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

from cnnkit.nn import Conv2d, Linear, Parameter, init


@pytest.mark.parametrize("shape", [(20, 30), (16, 8, 3, 3), (4, 2, 5, 7)])
def test_fans_match_torch(shape):
    fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.fans(shape) == (fan_in, fan_out)


@pytest.mark.parametrize("nonlinearity,param", [("relu", None), ("tanh", None), ("linear", None),
                                                ("sigmoid", None), ("leaky_relu", 0.2), ("leaky_relu", None)])
def test_gains_match_torch(nonlinearity, param):
    assert init.calculate_gain(nonlinearity, param) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity, param))


def _std(fn, shape, **kw):
    p = Parameter(np.zeros(shape))
    fn(p, generator=np.random.default_rng(0), **kw)
    return p.data.std(), p.data


def test_schemes_have_the_published_spread():
    shape = (256, 128, 3, 3)
    fan_in, fan_out = 128 * 9, 256 * 9
    std, data = _std(init.kaiming_normal_, shape)
    assert std == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)  # He et al.: Var = 2 / fan_in
    std, data = _std(init.kaiming_normal_, shape, mode="fan_out")
    assert std == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    std, data = _std(init.kaiming_uniform_, shape, nonlinearity="relu")
    assert np.abs(data).max() <= math.sqrt(6 / fan_in)
    assert std == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)
    std, data = _std(init.xavier_uniform_, shape)
    assert np.abs(data).max() <= math.sqrt(6 / (fan_in + fan_out))
    assert std == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    std, _ = _std(init.xavier_normal_, shape, gain=2.0)
    assert std == pytest.approx(2 * math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    std, data = _std(init.normal_, (1000,), mean=3.0, std=0.5)
    assert data.mean() == pytest.approx(3.0, abs=0.05) and std == pytest.approx(0.5, rel=0.05)


def test_generator_makes_init_reproducible_and_dtype_is_kept():
    a = Conv2d(3, 8, 3, generator=np.random.default_rng(1))
    b = Conv2d(3, 8, 3, generator=np.random.default_rng(1))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert a.weight.dtype == np.float32
    p = Parameter(np.zeros((4, 4), np.float32))
    init.kaiming_normal_(p, generator=np.random.default_rng(0))
    assert p.data.dtype == np.float32
    init.zeros_(p)
    assert not p.data.any()
    init.ones_(p)
    assert (p.data == 1).all()


def test_default_layer_init_matches_torch_bounds():
    layer = Linear(50, 20, generator=np.random.default_rng(0))
    bound = 1 / math.sqrt(50)
    assert np.abs(layer.weight.data).max() <= bound and np.abs(layer.bias.data).max() <= bound
    assert layer.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # U(-b, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        init.fans((5,))
    with pytest.raises(ValueError, match="mode must be"):
        init.kaiming_normal_(Parameter(np.zeros((3, 3))), mode="fan_avg")
    with pytest.raises(ValueError, match="unknown nonlinearity 'gelu'"):
        init.calculate_gain("gelu")
