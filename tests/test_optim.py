"""Optimizers against torch.optim: same parameters, same gradient sequence, same trajectories."""
import copy

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

from cnnkit.nn import Linear, Module, Parameter, Sequential
from cnnkit.optim.adagrad import Adagrad
from cnnkit.optim.adam import Adam, AdamW
from cnnkit.optim.groups import param_groups_no_decay
from cnnkit.optim.rmsprop import RMSprop
from cnnkit.optim.sgd import SGD

SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]
STEPS = 20

# (cnnkit class, torch class, keyword arguments) for every option of every optimizer.
CASES = [
    (SGD, torch.optim.SGD, dict(lr=0.1)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.8, nesterov=True)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.05)),
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.7, nesterov=True, weight_decay=0.1, maximize=True)),
    (SGD, torch.optim.SGD, dict(lr=0.05, weight_decay=0.2, maximize=True)),
    (Adam, torch.optim.Adam, dict(lr=0.05)),
    (Adam, torch.optim.Adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    (Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.1)),
    (Adam, torch.optim.Adam, dict(lr=0.05, amsgrad=True)),
    (Adam, torch.optim.Adam, dict(lr=0.05, amsgrad=True, weight_decay=0.1, maximize=True)),
    (AdamW, torch.optim.AdamW, dict(lr=0.05)),
    (AdamW, torch.optim.AdamW, dict(lr=0.05, weight_decay=0.3, amsgrad=True)),
    (AdamW, torch.optim.AdamW, dict(lr=0.05, betas=(0.5, 0.9), maximize=True)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, eps=1e-4)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01, centered=True)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01, weight_decay=0.1, maximize=True)),
    (Adagrad, torch.optim.Adagrad, dict(lr=0.1)),
    (Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.05)),
    (Adagrad, torch.optim.Adagrad, dict(lr=0.1, weight_decay=0.1, initial_accumulator_value=0.5)),
    (Adagrad, torch.optim.Adagrad, dict(lr=0.1, eps=1e-3, lr_decay=0.01, maximize=True)),
]


def case_id(case):
    ours, _, kwargs = case
    return ours.__name__ + "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in SHAPES]


def make_grads(seed=1, steps=STEPS, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(steps)]


def torch_copies(params):
    return [torch.tensor(p.data.copy(), requires_grad=True) for p in params]


def set_grads(params, tparams, grads):
    for p, t, g in zip(params, tparams, grads):
        p.grad = g.copy()
        t.grad = torch.from_numpy(g.copy())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_trajectory_matches_torch(case):
    ours_cls, torch_cls, kwargs = case
    params = make_params()
    tparams = torch_copies(params)
    ours, theirs = ours_cls(params, **kwargs), torch_cls(tparams, **kwargs)
    for grads in make_grads():
        set_grads(params, tparams, grads)
        ours.step()
        theirs.step()
        for p, t in zip(params, tparams):
            np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-6, atol=1e-6)
    # The trajectory moved: the test would notice an optimizer that does nothing.
    assert not np.allclose(params[0].data, make_params()[0].data)


@pytest.mark.parametrize("ours_cls,torch_cls,kwargs", [
    (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (Adam, torch.optim.Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    (AdamW, torch.optim.AdamW, dict(lr=0.01)),
    (RMSprop, torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
    (Adagrad, torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.01)),
])
def test_float32_stays_float32_and_matches_torch(ours_cls, torch_cls, kwargs):
    params = make_params(dtype=np.float32)
    tparams = torch_copies(params)
    ours, theirs = ours_cls(params, **kwargs), torch_cls(tparams, **kwargs)
    for grads in make_grads(dtype=np.float32, steps=10):
        set_grads(params, tparams, grads)
        ours.step()
        theirs.step()
    for p, t in zip(params, tparams):
        assert p.data.dtype == np.float32
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-5)
    for state in ours.state.values():
        for value in state.values():
            if isinstance(value, np.ndarray):
                assert value.dtype == np.float32


def test_updates_parameters_in_place():
    params = make_params()
    arrays = [p.data for p in params]
    opt = Adam(params, lr=0.1)
    set_grads(params, torch_copies(params), make_grads(steps=1)[0])
    opt.step()
    assert all(p.data is a for p, a in zip(params, arrays))


@pytest.mark.parametrize("ours_cls,torch_cls,group_kwargs,defaults", [
    (SGD, torch.optim.SGD, [dict(lr=0.2, momentum=0.9), dict(weight_decay=0.1, nesterov=True, momentum=0.5)],
     dict(lr=0.05)),
    (Adam, torch.optim.Adam, [dict(lr=0.01, betas=(0.5, 0.9)), dict(amsgrad=True, weight_decay=0.2)], dict(lr=0.05)),
    (RMSprop, torch.optim.RMSprop, [dict(centered=True), dict(lr=0.001, momentum=0.9)], dict(lr=0.01)),
    (Adagrad, torch.optim.Adagrad, [dict(lr_decay=0.1), dict(lr=0.5, weight_decay=0.1)], dict(lr=0.1)),
])
def test_param_groups_with_different_hyperparameters(ours_cls, torch_cls, group_kwargs, defaults):
    params = make_params()
    tparams = torch_copies(params)
    split = [params[:1], params[1:]], [tparams[:1], tparams[1:]]
    ours = ours_cls([dict(params=ps, **kw) for ps, kw in zip(split[0], group_kwargs)], **defaults)
    theirs = torch_cls([dict(params=ps, **kw) for ps, kw in zip(split[1], group_kwargs)], **defaults)
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
    for grads in make_grads():
        set_grads(params, tparams, grads)
        ours.step()
        theirs.step()
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ours_cls", [SGD, Adam, AdamW, RMSprop, Adagrad])
def test_frozen_and_gradless_parameters_are_skipped(ours_cls):
    params = make_params()
    frozen, gradless, trained = params
    frozen.requires_grad = False
    before = [p.data.copy() for p in params]
    opt = ours_cls(params, lr=0.1, **({"momentum": 0.9} if ours_cls is SGD else {}))
    for grads in make_grads(steps=3):
        frozen.grad = grads[0].copy()  # a stale gradient on a frozen parameter must not move it
        trained.grad = grads[2].copy()
        opt.step()
    np.testing.assert_array_equal(frozen.data, before[0])
    np.testing.assert_array_equal(gradless.data, before[1])
    assert not np.allclose(trained.data, before[2])
    assert frozen not in opt.state and gradless not in opt.state


ROUND_TRIP_CASES = [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (Adam, dict(lr=0.05, amsgrad=True)),
    (AdamW, dict(lr=0.05, weight_decay=0.1)),
    (RMSprop, dict(lr=0.01, momentum=0.9, centered=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)),
]


@pytest.mark.parametrize("ours_cls,kwargs", ROUND_TRIP_CASES)
def test_state_dict_round_trip_resumes_identically(ours_cls, kwargs):
    grads = make_grads()
    params = make_params()
    opt = ours_cls([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}], **kwargs)
    for step_grads in grads[:10]:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
    saved = opt.state_dict()
    saved_values = [p.data.copy() for p in params]

    # Uninterrupted run: 10 more steps.
    for step_grads in grads[10:]:
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()

    # Resumed run: fresh parameters and a fresh optimizer built with other hyper-parameters.
    resumed = [Parameter(v) for v in saved_values]
    fresh = ours_cls([{"params": resumed[:2]}, {"params": resumed[2:]}], lr=0.5)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[1]["lr"] == 0.02
    for step_grads in grads[10:]:
        for p, g in zip(resumed, step_grads):
            p.grad = g.copy()
        fresh.step()
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_is_a_deep_copy_with_torch_layout():
    params = make_params()
    opt = SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=0.1, momentum=0.9)
    for grads in make_grads(steps=2):
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
    saved = opt.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [[0], [1, 2]]
    assert sorted(saved["state"]) == [0, 1, 2]
    buffer = saved["state"][0]["momentum_buffer"].copy()
    opt.step()
    np.testing.assert_array_equal(saved["state"][0]["momentum_buffer"], buffer)
    assert saved["state"][0]["momentum_buffer"] is not opt.state[params[0]]["momentum_buffer"]


def test_load_state_dict_casts_to_parameter_dtype_and_checks_sizes():
    params = make_params()
    opt = Adam(params, lr=0.1)
    for p, g in zip(params, make_grads(steps=1)[0]):
        p.grad = g
    opt.step()
    saved = opt.state_dict()
    float32_params = make_params(dtype=np.float32)
    other = Adam(float32_params)
    other.load_state_dict(saved)
    assert other.state[float32_params[0]]["exp_avg"].dtype == np.float32
    assert other.state[float32_params[0]]["step"] == 1
    with pytest.raises(ValueError, match="parameter group 0 has 3 parameters"):
        Adam(make_params()[:2]).load_state_dict(saved)
    with pytest.raises(ValueError, match="1 parameter groups"):
        Adam([{"params": params[:1]}, {"params": params[1:]}]).load_state_dict(saved)


def test_zero_grad_sets_none_or_zeros():
    params = make_params()
    for p, g in zip(params, make_grads(steps=1)[0]):
        p.grad = g
    opt = SGD(params, lr=0.1)
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_step_returns_closure_loss():
    params = make_params()
    opt = SGD(params, lr=0.1)

    def closure():
        for p in params:
            p.grad = np.ones_like(p.data)
        return 3.5

    assert opt.step(closure) == 3.5
    np.testing.assert_allclose(params[1].data, make_params()[1].data - 0.1)


def test_add_param_group_fills_defaults_and_rejects_duplicates():
    params = make_params()
    opt = SGD(params[:1], lr=0.1, momentum=0.9)
    opt.add_param_group({"params": params[1], "lr": 0.01})
    assert opt.param_groups[1]["params"] == [params[1]]
    assert opt.param_groups[1]["momentum"] == 0.9 and opt.param_groups[1]["lr"] == 0.01
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [params[0]]})
    with pytest.raises(ValueError, match="more than once"):
        SGD([params[0], params[0]])


@pytest.mark.parametrize("make,message", [
    (lambda ps: SGD(ps, lr=-0.1), "invalid lr -0.1"),
    (lambda ps: SGD(ps, momentum=-0.5), "invalid momentum -0.5"),
    (lambda ps: SGD(ps, weight_decay=-1), "invalid weight_decay -1"),
    (lambda ps: SGD(ps, nesterov=True), "nesterov=True requires momentum > 0"),
    (lambda ps: SGD(ps, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
    (lambda ps: SGD([{"params": ps, "nesterov": True}], momentum=0), "nesterov=True requires"),
    (lambda ps: Adam(ps, betas=(1.0, 0.999)), "beta parameter at index 0 1.0"),
    (lambda ps: Adam(ps, betas=(0.9, -0.1)), r"beta parameter at index 1 -0.1: it must lie in \[0, 1\)"),
    (lambda ps: Adam(ps, betas=0.9), "betas must be a pair"),
    (lambda ps: Adam(ps, eps=-1e-8), "invalid eps"),
    (lambda ps: AdamW(ps, lr=-1), "AdamW: invalid lr -1"),
    (lambda ps: RMSprop(ps, alpha=1.5), "invalid alpha 1.5"),
    (lambda ps: RMSprop(ps, momentum=-0.1), "invalid momentum"),
    (lambda ps: Adagrad(ps, lr_decay=-0.1), "invalid lr_decay"),
    (lambda ps: Adagrad(ps, initial_accumulator_value=-1), "invalid initial_accumulator_value"),
    (lambda ps: SGD([]), "empty parameter list"),
])
def test_invalid_hyperparameters_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make(make_params())


def test_non_parameters_are_rejected():
    with pytest.raises(TypeError, match="params\\[0\\] is a ndarray"):
        SGD([np.zeros(3)])
    with pytest.raises(TypeError, match="single Parameter"):
        SGD(make_params()[0])


class _TinyNorm(Module):
    """A stand-in for a normalisation layer: one-dimensional weight and bias."""

    def __init__(self, n):
        super().__init__()
        self.weight = Parameter(np.ones(n))
        self.bias = Parameter(np.zeros(n))


def test_param_groups_no_decay_exempts_biases_and_norm_parameters(rng):
    first = Linear(4, 3, generator=rng)
    model = Sequential(first, _TinyNorm(3), Linear(3, 2, generator=rng))
    groups = param_groups_no_decay(model, 5e-4)
    decayed, exempt = groups
    assert decayed["weight_decay"] == 5e-4 and exempt["weight_decay"] == 0.0
    assert [p.shape for p in decayed["params"]] == [(3, 4), (2, 3)]
    assert len(exempt["params"]) == 4 and all(p.data.ndim == 1 for p in exempt["params"])

    opt = SGD(groups, lr=0.1)
    for p in model.parameters():
        p.grad = np.zeros_like(p.data)
    bias_before, weight_before = first.bias.data.copy(), first.weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(first.bias.data, bias_before)  # zero grad, no decay: unchanged
    np.testing.assert_allclose(first.weight.data, weight_before * (1 - 0.1 * 5e-4), rtol=1e-6)


def test_param_groups_no_decay_lists_shared_parameters_once(rng):
    layer = Linear(2, 2, generator=rng)
    groups = param_groups_no_decay(Sequential(layer, layer), 0.1)
    assert sum(len(g["params"]) for g in groups) == 2
    SGD(groups, lr=0.1)  # would raise if a parameter appeared twice


def test_fits_a_linear_regression_through_the_module_contract(rng):
    layer = Linear(3, 1, generator=rng).double()
    x = rng.standard_normal((32, 3))
    y = x @ np.array([[1.5], [-2.0], [0.5]]) + 0.3
    opt = Adam(layer.parameters(), lr=0.1)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        error = layer(x) - y
        losses.append(float(np.mean(error ** 2)))
        layer.backward(2 * error / len(x), input_grad=False)
        opt.step()
    assert losses[-1] < 1e-4 * losses[0]
    np.testing.assert_allclose(layer.bias.data, [0.3], atol=1e-2)
