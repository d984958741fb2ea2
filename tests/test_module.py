import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
from cnnkit.nn import Concat, Linear, Module, Parameter, Residual, Sequential
from cnnkit.functional.shapes import conv_output_size


def test_linear_matches_torch(rng):
    layer = Linear(5, 3, generator=rng).double()
    ref = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(layer.weight.data))
        ref.bias.copy_(torch.from_numpy(layer.bias.data))
    x = rng.standard_normal((4, 5))
    dy = rng.standard_normal((4, 3))
    y = layer(x)
    dx = layer.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, ref.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.bias.grad, ref.bias.grad.numpy(), rtol=1e-12)


def test_linear_gradcheck(rng):
    assert cnnkit.gradcheck(Linear(6, 4, generator=rng), rng.standard_normal((3, 6))) < 1e-7


def test_gradients_accumulate_and_zero_grad(rng):
    layer = Linear(3, 2, generator=rng)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    dy = np.ones((2, 2), np.float32)
    layer(x); layer.backward(dy)
    first = layer.weight.grad.copy()
    layer(x); layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_input_grad_false_returns_none_and_still_updates_params(rng):
    net = Sequential(Linear(3, 4, generator=rng), Linear(4, 2, generator=rng))
    net(rng.standard_normal((2, 3)).astype(np.float32))
    assert net.backward(np.ones((2, 2), np.float32), input_grad=False) is None
    assert all(p.grad is not None for p in net.parameters())


def test_backward_without_forward_is_clear():
    with pytest.raises(RuntimeError, match="without a cached forward"):
        Linear(2, 2).backward(np.ones((1, 2), np.float32))


def test_no_grad_caches_nothing(rng):
    layer = Linear(2, 2, generator=rng)
    with cnnkit.no_grad():
        layer(np.ones((1, 2), np.float32))
    assert layer._cache is None
    with pytest.raises(RuntimeError):
        layer.backward(np.ones((1, 2), np.float32))
    assert cnnkit.is_grad_enabled()


def test_eval_mode_still_caches_for_saliency(rng):
    layer = Linear(2, 2, generator=rng).eval()
    layer(np.ones((1, 2), np.float32))
    assert layer.backward(np.ones((1, 2), np.float32)).shape == (1, 2)


def test_state_dict_keys_and_roundtrip(rng):
    net = Sequential(Linear(3, 4, generator=rng), Sequential(Linear(4, 2, generator=rng)))
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]
    other = Sequential(Linear(3, 4), Sequential(Linear(4, 2)))
    state = {k: v.astype(np.float64) for k, v in net.state_dict().items()}
    other.load_state_dict(state)
    for (k, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a, b)
        assert b.dtype == np.float32  # cast to the module's dtype, as in PyTorch


def test_load_state_dict_reports_every_problem(rng):
    net = Sequential(Linear(3, 4), Linear(4, 2))
    state = dict(net.state_dict())
    state["0.weight"] = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"0.weight: checkpoint has shape \(5, 3\), model has \(4, 3\)"):
        net.load_state_dict(state)
    state = dict(net.state_dict())
    del state["1.bias"]
    state["extra"] = np.zeros(1)
    with pytest.raises(KeyError, match="missing keys \\['1.bias'\\].*unexpected keys \\['extra'\\]"):
        net.load_state_dict(state)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["1.bias"] and result.unexpected_keys == ["extra"]


def test_to_dtype_and_repr(rng):
    net = Sequential(Linear(3, 4))
    assert net.double() is net and net.dtype == np.float64
    assert net.float().dtype == np.float32
    assert "Linear(in_features=3, out_features=4, bias=True)" in repr(net)
    with pytest.raises(ValueError, match="floating"):
        net.to(np.int32)


def test_train_eval_flags():
    net = Sequential(Linear(2, 2), Sequential(Linear(2, 2)))
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())


def test_linear_bad_input_messages():
    layer = Linear(3, 2)
    with pytest.raises(ValueError, match="expects 3 input features, got 4"):
        layer(np.ones((1, 4), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        layer(np.ones((1, 3), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        layer(np.ones((3,), np.float32))


def test_residual_and_concat_match_torch(rng):
    a, b, c = (Linear(4, 4, generator=rng).double() for _ in range(3))
    net = Sequential(Residual(a), Concat(b, c))
    x = rng.standard_normal((2, 4))
    dy = rng.standard_normal((2, 8))
    y = net(x)
    dx = net.backward(dy)

    def torch_linear(m):
        t = torch.nn.Linear(4, 4).double()
        with torch.no_grad():
            t.weight.copy_(torch.from_numpy(m.weight.data)); t.bias.copy_(torch.from_numpy(m.bias.data))
        return t

    ta, tb, tc = torch_linear(a), torch_linear(b), torch_linear(c)
    tx = torch.from_numpy(x).requires_grad_()
    h = ta(tx) + tx
    ty = torch.cat([tb(h), tc(h)], dim=1)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(a.weight.grad, ta.weight.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(c.bias.grad, tc.bias.grad.numpy(), rtol=1e-12)
    assert cnnkit.gradcheck(net, x) < 1e-7
    assert net.output_shape((4,)) == (8,)


def test_residual_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="body output"):
        Residual(Linear(4, 3)).output_shape((4,))


@pytest.mark.parametrize(
    "size,kernel,stride,padding,dilation,ceil,expected",
    [(224, 7, 2, 3, 1, False, 112), (32, 3, 1, 1, 1, False, 32), (227, 11, 4, 0, 1, False, 55),
     (112, 3, 2, 0, 1, True, 56), (32, 1, 2, 0, 1, False, 16), (10, 3, 1, 2, 2, False, 10),
     (6, 2, 2, 1, 1, True, 4), (55, 3, 2, 0, 1, False, 27)],
)
def test_output_size_matches_torch(size, kernel, stride, padding, dilation, ceil, expected):
    got = conv_output_size(size, kernel, stride, padding, dilation, ceil, check_geometry=False)
    assert got == expected


def test_lossy_geometry_raises_with_formula():
    with pytest.raises(ValueError, match=r"\(W - F \+ 2P\)/S \+ 1 = \(7 - 3 \+ 0\)/3 \+ 1 = 2.33.*padding=1"):
        conv_output_size(7, 3, 3, 0)
    assert conv_output_size(7, 3, 3, 0, check_geometry=False) == 2
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv_output_size(3, 5, 1, 0)
    with pytest.raises(ValueError, match="ceil_mode=True"):
        conv_output_size(112, 3, 2, 0, layer="MaxPool2d")


def test_parameter_freeze_skips_grad(rng):
    layer = Linear(2, 2, generator=rng)
    layer.requires_grad_(False)
    layer(np.ones((1, 2), np.float32))
    layer.backward(np.ones((1, 2), np.float32))
    assert layer.weight.grad is None


class _WrongBackward(Linear):
    """A Linear whose backward is off by 1% in the weight gradient: gradcheck must catch it."""

    def backward(self, dy, input_grad=True):
        dx = super().backward(dy, input_grad)
        self.weight.grad *= 1.01
        return dx


def test_gradcheck_catches_a_wrong_gradient(rng):
    from cnnkit.testing import GradcheckError

    with pytest.raises(GradcheckError, match="'weight'"):
        cnnkit.gradcheck(_WrongBackward(4, 3, generator=rng), rng.standard_normal((2, 4)))
    assert cnnkit.gradcheck(_WrongBackward(4, 3, generator=rng), rng.standard_normal((2, 4)),
                            raise_on_failure=False) > 1e-3
