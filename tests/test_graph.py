import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
from cnnkit.nn.activation import ReLU, Tanh
from cnnkit.nn.graph import Add, Cat, Graph, Mul
from cnnkit.nn.linear import Linear
from cnnkit.nn.module import Module


def small_graph(rng, dtype=np.float64):
    """x -> fc1 -> relu -+-> fc2 -> tanh --+-> add -> cat(add, mul)
                         +-----------------+
                         +-> mul(relu, tanh)"""
    g = Graph(input="x")
    g.add_node("fc1", Linear(4, 5, generator=rng, dtype=dtype), "x")
    g.add_node("relu", ReLU(), "fc1")
    g.add_node("fc2", Linear(5, 5, generator=rng, dtype=dtype), "relu")
    g.add_node("tanh", Tanh(), "fc2")
    g.add_node("add", Add(), ["relu", "tanh"])
    g.add_node("mul", Mul(), ["relu", "tanh"])
    g.add_node("cat", Cat(1), ["add", "mul", "x"])
    return g


def torch_twin(g):
    fc1, fc2 = torch.nn.Linear(4, 5).double(), torch.nn.Linear(5, 5).double()
    with torch.no_grad():
        for t, c in ((fc1, g.fc1), (fc2, g.fc2)):
            t.weight.copy_(torch.from_numpy(c.weight.data))
            t.bias.copy_(torch.from_numpy(c.bias.data))

    def f(x):
        r = torch.relu(fc1(x))
        t = torch.tanh(fc2(r))
        return torch.cat([r + t, r * t, x], 1)

    return f, fc1, fc2


def test_graph_matches_torch_forward_and_gradients(rng):
    g = small_graph(rng)
    f, fc1, fc2 = torch_twin(g)
    x = rng.standard_normal((3, 4))
    dy = rng.standard_normal((3, 14))
    y = g(x)
    dx = g.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    ty = f(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.fc1.weight.grad, fc1.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g.fc2.bias.grad, fc2.bias.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_graph_gradcheck(rng):
    assert cnnkit.gradcheck(small_graph(rng), rng.standard_normal((2, 4))) < 1e-6


def test_broadcasting_add_and_mul_gradcheck(rng):
    class Scale(Module):  # a 1-input module producing a broadcastable (N, C, 1, 1) tensor
        def forward(self, x):
            self._save(x.shape)
            return x.mean(axis=(2, 3), keepdims=True)

        def backward(self, dy, input_grad=True):
            shape = self._restore()
            return np.broadcast_to(dy, shape) / (shape[2] * shape[3])

        def output_shape(self, s):
            return (s[0], 1, 1)

    g = Graph([("s", Scale(), "input"), ("m", Mul(), ["input", "s"]), ("a", Add(), ["m", "s", "input"])])
    x = rng.standard_normal((2, 3, 4, 5))
    assert g(x).shape == x.shape
    assert g.output_shape((3, 4, 5)) == (3, 4, 5)
    assert cnnkit.gradcheck(g, x) < 1e-6


def test_state_dict_uses_node_names_and_output_shape(rng):
    g = small_graph(rng)
    assert list(g.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert g.output_shape((4,)) == (14,)


class Counting(Linear):
    calls = 0

    def backward(self, dy, input_grad=True):
        Counting.calls += 1
        self.last_input_grad = input_grad
        return super().backward(dy, input_grad)


def test_frozen_prefix_needs_no_backward(rng):
    Counting.calls = 0
    g = Graph([("a", Counting(4, 4, generator=rng), "input"), ("b", Counting(4, 4, generator=rng), "a"),
               ("c", Counting(4, 2, generator=rng), "b")])
    g.a.requires_grad_(False)
    g.b.requires_grad_(False)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    g(x)
    assert g.backward(np.ones((2, 2), np.float32), input_grad=False) is None
    assert Counting.calls == 1 and g.c.last_input_grad is False
    assert g.c.weight.grad is not None and g.a.weight.grad is None
    # unfreezing the first layer makes the whole chain run again
    g.a.requires_grad_(True)
    Counting.calls = 0
    g(x)
    g.backward(np.ones((2, 2), np.float32), input_grad=False)
    assert Counting.calls == 3 and g.a.last_input_grad is False and g.b.last_input_grad is True


def test_multiple_outputs(rng):
    g = small_graph(rng)
    g.set_outputs(["relu", "cat"])
    x = rng.standard_normal((2, 4))
    r, c = g(x)
    assert r.shape == (2, 5) and c.shape == (2, 14)
    dx = g.backward((np.ones_like(r), None))
    assert dx.shape == x.shape


def test_errors_name_the_problem(rng):
    g = Graph()
    with pytest.raises(ValueError, match="'nope'"):
        g.add_node("fc", Linear(2, 2), "nope")
    with pytest.raises(ValueError, match="Python identifier"):
        g.add_node("a.b", Linear(2, 2), "input")
    g.add_node("fc", Linear(2, 2), "input")
    with pytest.raises(ValueError, match="already used"):
        g.add_node("fc", Linear(2, 2), "input")
    with pytest.raises(ValueError, match="takes one"):
        g.add_node("two", Linear(2, 2), ["input", "fc"])
    with pytest.raises(ValueError, match="do not broadcast"):
        Add()(np.zeros((2, 3)), np.zeros((2, 4)))
