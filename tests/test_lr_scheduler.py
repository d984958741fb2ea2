"""Learning-rate schedules against torch.optim.lr_scheduler, step by step."""
import math
import warnings

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit.optim.lr_scheduler as ours_module
from cnnkit.nn import Parameter
from cnnkit.optim.adagrad import Adagrad
from cnnkit.optim.adam import Adam
from cnnkit.optim.sgd import SGD

LRS = (0.1, 0.02)  # two parameter groups with different base rates


def make_pair(kind="sgd"):
    """The same two-group optimizer in cnnkit and in torch."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(3), rng.standard_normal(2)]
    params = [Parameter(a.copy()) for a in arrays]
    tparams = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    if kind == "sgd":
        ours = SGD([{"params": [params[0]], "lr": LRS[0]}, {"params": [params[1]], "lr": LRS[1]}], momentum=0.9)
        theirs = torch.optim.SGD([{"params": [tparams[0]], "lr": LRS[0]}, {"params": [tparams[1]], "lr": LRS[1]}],
                                 momentum=0.9)
    else:
        ours = Adam([{"params": [params[0]], "lr": LRS[0]}, {"params": [params[1]], "lr": LRS[1]}])
        theirs = torch.optim.Adam([{"params": [tparams[0]], "lr": LRS[0]}, {"params": [tparams[1]], "lr": LRS[1]}])
    return ours, theirs


def assert_same_lrs(ours_opt, ours_sched, torch_opt, torch_sched, step):
    expected = [g["lr"] for g in torch_opt.param_groups]
    np.testing.assert_allclose([g["lr"] for g in ours_opt.param_groups], expected, rtol=0, atol=0,
                               err_msg=f"learning rates differ at step {step}")
    np.testing.assert_allclose(ours_sched.get_last_lr(), torch_sched.get_last_lr(), rtol=0, atol=0,
                               err_msg=f"get_last_lr differs at step {step}")


def run_side_by_side(factory, steps, kind="sgd", metrics=None, check_momentum=False):
    """Build the schedule in both libraries and compare the learning rates after every step."""
    ours_opt, torch_opt = make_pair(kind)
    ours_sched = factory(ours_module, ours_opt)
    torch_sched = factory(torch.optim.lr_scheduler, torch_opt)
    assert_same_lrs(ours_opt, ours_sched, torch_opt, torch_sched, 0)
    history = [list(ours_sched.get_last_lr())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(1, steps + 1):
            ours_opt.step()
            torch_opt.step()
            if metrics is None:
                ours_sched.step()
                torch_sched.step()
            else:
                ours_sched.step(metrics[t - 1])
                torch_sched.step(metrics[t - 1])
            assert_same_lrs(ours_opt, ours_sched, torch_opt, torch_sched, t)
            if check_momentum:
                key = "momentum" if kind == "sgd" else "betas"
                for ours_group, torch_group in zip(ours_opt.param_groups, torch_opt.param_groups):
                    np.testing.assert_allclose(ours_group[key], torch_group[key], rtol=1e-12)
            history.append(list(ours_sched.get_last_lr()))
    return np.array(history)


SCHEDULES = {
    "StepLR": (lambda m, opt: m.StepLR(opt, step_size=7, gamma=0.5), 40),
    "StepLR-default-gamma": (lambda m, opt: m.StepLR(opt, 3), 30),
    "MultiStepLR": (lambda m, opt: m.MultiStepLR(opt, milestones=[5, 12, 12, 20], gamma=0.3), 30),
    "ExponentialLR": (lambda m, opt: m.ExponentialLR(opt, gamma=0.93), 50),
    "CosineAnnealingLR": (lambda m, opt: m.CosineAnnealingLR(opt, T_max=10), 45),
    "CosineAnnealingLR-eta_min": (lambda m, opt: m.CosineAnnealingLR(opt, T_max=17, eta_min=1e-3), 100),
    "LinearLR-warmup": (lambda m, opt: m.LinearLR(opt), 20),
    "LinearLR-decay": (lambda m, opt: m.LinearLR(opt, start_factor=1.0, end_factor=0.05, total_iters=30), 40),
    "warmup+cosine": (lambda m, opt: m.SequentialLR(
        opt, [m.LinearLR(opt, start_factor=0.1, total_iters=5), m.CosineAnnealingLR(opt, T_max=45, eta_min=1e-4)],
        milestones=[5]), 60),
    "warmup+step+exp": (lambda m, opt: m.SequentialLR(
        opt, [m.LinearLR(opt, start_factor=0.25, total_iters=4), m.StepLR(opt, step_size=5, gamma=0.5),
              m.ExponentialLR(opt, gamma=0.9)], milestones=[4, 20]), 40),
    "ChainedScheduler": (lambda m, opt: m.ChainedScheduler(
        [m.ExponentialLR(opt, gamma=0.95), m.MultiStepLR(opt, milestones=[6, 15], gamma=0.5)]), 30),
    "ChainedScheduler-warmup+cosine": (lambda m, opt: m.ChainedScheduler(
        [m.LinearLR(opt, start_factor=0.2, total_iters=8), m.CosineAnnealingLR(opt, T_max=30)]), 30),
    "OneCycleLR": (lambda m, opt: m.OneCycleLR(opt, max_lr=[1.0, 0.3], total_steps=60), 60),
    "OneCycleLR-linear-three-phase": (lambda m, opt: m.OneCycleLR(
        opt, max_lr=0.5, epochs=5, steps_per_epoch=11, pct_start=0.25, anneal_strategy="linear",
        three_phase=True, div_factor=10.0, final_div_factor=100.0), 55),
    "OneCycleLR-no-momentum": (lambda m, opt: m.OneCycleLR(opt, max_lr=0.2, total_steps=40,
                                                           cycle_momentum=False), 40),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_torch(name):
    factory, steps = SCHEDULES[name]
    history = run_side_by_side(factory, steps, check_momentum=name.startswith("OneCycleLR"))
    assert len(np.unique(history[:, 0])) > 2  # the schedule changed the rate


def test_one_cycle_cycles_adam_beta1_like_torch():
    history = run_side_by_side(lambda m, opt: m.OneCycleLR(opt, max_lr=0.01, total_steps=30, base_momentum=0.8),
                               30, kind="adam", check_momentum=True)
    assert history[:, 0].argmax() == round(0.3 * 30) - 1


def test_one_cycle_start_peak_and_end_values():
    opt, _ = make_pair()
    sched = ours_module.OneCycleLR(opt, max_lr=1.0, total_steps=100, div_factor=25, final_div_factor=1e4)
    lrs = [sched.get_last_lr()[0]]
    for _ in range(99):
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(1.0 / 25)
    assert max(lrs) == pytest.approx(1.0) and int(np.argmax(lrs)) == 29
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.95)
    sched.step()  # step 100 == total_steps is still allowed, as in torch
    with pytest.raises(ValueError, match="total_steps is 100"):
        sched.step()


def test_cosine_recursion_tracks_closed_form():
    history = run_side_by_side(lambda m, opt: m.CosineAnnealingLR(opt, T_max=20, eta_min=0.001), 20)
    closed = [0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * t / 20)) / 2 for t in range(21)]
    np.testing.assert_allclose(history[:, 0], closed, rtol=1e-9)


def test_warmup_then_cosine_shape():
    history = run_side_by_side(SCHEDULES["warmup+cosine"][0], 50)[:, 0]
    assert history[0] == pytest.approx(0.01)
    assert np.all(np.diff(history[:6]) > 0) and history[5] == pytest.approx(0.1)
    assert np.all(np.diff(history[5:51]) < 0) and history[50] == pytest.approx(1e-4)


LOSSES = [1.0, 0.8, 0.7, 0.69995, 0.7, 0.71, 0.7, 0.72, 0.65, 0.65, 0.66, 0.66, 0.67, 0.66, 0.66,
          0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.64, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
          0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
ACCURACIES = [0.1, 0.3, 0.5, 0.5, 0.52, 0.52, 0.52, 0.52, 0.6, 0.6, 0.6, 0.6, 0.6, 0.61, 0.6,
              0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]


@pytest.mark.parametrize("kwargs,metrics", [
    (dict(patience=2), LOSSES),
    (dict(patience=0, factor=0.5), LOSSES),
    (dict(patience=1, cooldown=2, factor=0.5, min_lr=[0.01, 0.005]), LOSSES),
    (dict(patience=1, threshold=0.05, threshold_mode="abs", factor=0.3), LOSSES),
    (dict(mode="max", patience=2, factor=0.5), ACCURACIES),
    (dict(mode="max", patience=1, threshold=0.02, threshold_mode="abs", cooldown=1, min_lr=1e-3), ACCURACIES),
])
def test_reduce_lr_on_plateau_matches_torch(kwargs, metrics):
    history = run_side_by_side(lambda m, opt: m.ReduceLROnPlateau(opt, **kwargs), len(metrics), metrics=metrics)
    assert history[-1, 0] < history[0, 0]  # the plateaus did reduce the rate


def test_reduce_lr_on_plateau_respects_patience_exactly():
    opt, _ = make_pair()
    sched = ours_module.ReduceLROnPlateau(opt, patience=3, factor=0.5)
    for loss in [1.0, 1.0, 1.0, 1.0]:  # one baseline, then three bad epochs: within patience
        sched.step(loss)
    assert sched.get_last_lr() == list(LRS)
    sched.step(1.0)  # the fourth bad epoch exceeds the patience
    assert sched.get_last_lr() == pytest.approx([LRS[0] / 2, LRS[1] / 2])


def _step(sched, t):
    if isinstance(sched, ours_module.ReduceLROnPlateau):
        sched.step(LOSSES[t % len(LOSSES)])
    else:
        sched.step()


ROUND_TRIP = {name: SCHEDULES[name][0] for name in
              ["StepLR", "MultiStepLR", "CosineAnnealingLR", "warmup+cosine", "warmup+step+exp",
               "ChainedScheduler-warmup+cosine", "OneCycleLR"]}
ROUND_TRIP["ReduceLROnPlateau"] = lambda m, opt: m.ReduceLROnPlateau(opt, patience=1, cooldown=1)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_state_dict_round_trip_resumes_identically(name):
    factory = ROUND_TRIP[name]
    opt, _ = make_pair()
    sched = factory(ours_module, opt)
    for t in range(10):
        opt.step()
        _step(sched, t)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    uninterrupted = []
    for t in range(10, 40):
        opt.step()
        _step(sched, t)
        uninterrupted.append(sched.get_last_lr() + [g.get("momentum") for g in opt.param_groups])

    fresh_opt, _ = make_pair()
    fresh_sched = factory(ours_module, fresh_opt)  # build the scheduler first, then load both
    fresh_opt.load_state_dict(saved_opt)
    fresh_sched.load_state_dict(saved_sched)
    resumed = []
    for t in range(10, 40):
        fresh_opt.step()
        _step(fresh_sched, t)
        resumed.append(fresh_sched.get_last_lr() + [g.get("momentum") for g in fresh_opt.param_groups])
    assert resumed == uninterrupted
    assert len({row[0] for row in uninterrupted}) > 1


def test_state_dict_excludes_optimizer_and_is_a_copy():
    opt, _ = make_pair()
    sched = ours_module.MultiStepLR(opt, milestones=[2, 4])
    state = sched.state_dict()
    assert "optimizer" not in state and state["last_epoch"] == 0
    state["milestones"][100] = 1
    assert 100 not in sched.milestones


@pytest.mark.parametrize("make,error,message", [
    (lambda opt: ours_module.StepLR(opt, step_size=0), ValueError, "step_size must be a positive integer, got 0"),
    (lambda opt: ours_module.CosineAnnealingLR(opt, T_max=0), ValueError, "T_max must be > 0"),
    (lambda opt: ours_module.LinearLR(opt, start_factor=0), ValueError, "start_factor"),
    (lambda opt: ours_module.LinearLR(opt, total_iters=0), ValueError, "total_iters"),
    (lambda opt: ours_module.OneCycleLR(opt, max_lr=0.1), ValueError, "total_steps or both epochs"),
    (lambda opt: ours_module.OneCycleLR(opt, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (lambda opt: ours_module.OneCycleLR(opt, max_lr=[0.1], total_steps=10), ValueError, "2 parameter groups"),
    (lambda opt: ours_module.OneCycleLR(opt, max_lr=0.1, total_steps=10, anneal_strategy="exp"), ValueError,
     "anneal_strategy"),
    (lambda opt: ours_module.ReduceLROnPlateau(opt, factor=1.0), ValueError, "factor"),
    (lambda opt: ours_module.ReduceLROnPlateau(opt, mode="up"), ValueError, "mode must be"),
    (lambda opt: ours_module.SequentialLR(opt, [ours_module.StepLR(opt, 2)], milestones=[3]), ValueError,
     "expected 0 milestones"),
    (lambda opt: ours_module.SequentialLR(opt, [ours_module.ReduceLROnPlateau(opt)], milestones=[]), ValueError,
     "ReduceLROnPlateau"),
    (lambda opt: ours_module.StepLR("not an optimizer", 2), TypeError, "expected a cnnkit.optim Optimizer"),
    (lambda opt: ours_module.StepLR(opt, 2, last_epoch=5), KeyError, "initial_lr"),
])
def test_invalid_arguments_raise_clear_errors(make, error, message):
    opt, _ = make_pair()
    with pytest.raises(error, match=message):
        make(opt)


def test_one_cycle_needs_momentum_to_cycle():
    opt = Adagrad([Parameter(np.zeros(2))])
    with pytest.raises(ValueError, match="cycle_momentum=False"):
        ours_module.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    ours_module.OneCycleLR(opt, max_lr=0.1, total_steps=10, cycle_momentum=False)


def test_scheduler_on_other_optimizer_is_rejected():
    opt, _ = make_pair()
    other, _ = make_pair()
    with pytest.raises(ValueError, match="another optimizer"):
        ours_module.ChainedScheduler([ours_module.StepLR(opt, 2), ours_module.StepLR(other, 2)])
