"""Numerical gradient check: centred finite differences in float64 against ``backward``."""
from __future__ import annotations

import copy

import numpy as np


class GradcheckError(AssertionError):
    """Raised when an analytic gradient disagrees with the numerical one."""


def _relative_error(analytic, numeric) -> float:
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), 1e-12)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def _numeric_grad(f, array, eps, indices):
    """Centred differences of scalar ``f()`` with respect to ``array`` at ``indices`` (in place)."""
    grad = np.zeros_like(array)
    flat = array.reshape(-1)
    gflat = grad.reshape(-1)
    for i in indices:
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(module, x, *, eps: float = 1e-6, tol: float = 1e-6, max_checks: int | None = 2000,
              check_input: bool = True, seed: int = 0, raise_on_failure: bool = True) -> float:
    """Check ``module.backward`` against finite differences; return the worst relative error.

    The module is deep-copied and cast to float64, so the caller's module is untouched. The
    scalar checked is ``sum(y * r)`` for a fixed random ``r`` (so ``dy = r``). Every element is
    checked unless there are more than ``max_checks``, in which case a seeded random subset is.
    The relative error of each gradient is ``max|analytic - numeric| / max(|analytic|, |numeric|)``.
    Raises :class:`GradcheckError` naming the worst gradient when it exceeds ``tol``.
    """
    rng = np.random.default_rng(seed)
    module = copy.deepcopy(module).double()
    x = np.array(x, dtype=np.float64, copy=True)

    y = module(x)
    r = rng.standard_normal(y.shape)

    def f():
        return float(np.sum(module(x) * r))

    module.zero_grad()
    module(x)
    dx = module.backward(r.copy(), input_grad=check_input)
    analytic = {}
    if check_input:
        analytic["input"] = dx
    for name, p in module.named_parameters():
        if p.requires_grad:
            analytic[name] = p.grad if p.grad is not None else np.zeros_like(p.data)

    targets = {"input": x} if check_input else {}
    targets.update({n: p.data for n, p in module.named_parameters() if p.requires_grad})

    errors = {}
    for name, array in targets.items():
        n = array.size
        indices = range(n) if max_checks is None or n <= max_checks else rng.choice(n, max_checks, replace=False)
        numeric = _numeric_grad(f, array, eps, indices)
        idx = np.fromiter(indices, dtype=np.int64) if not isinstance(indices, range) else np.arange(n)
        errors[name] = _relative_error(analytic[name].reshape(-1)[idx], numeric.reshape(-1)[idx])

    worst_name = max(errors, key=errors.get) if errors else None
    worst = errors.get(worst_name, 0.0) if worst_name else 0.0
    if raise_on_failure and worst > tol:
        details = ", ".join(f"{k}: {v:.2e}" for k, v in errors.items())
        raise GradcheckError(
            f"gradcheck failed for {type(module).__name__}: worst relative error {worst:.2e} in "
            f"'{worst_name}' exceeds tol {tol:.0e} (all: {details})"
        )
    return worst
