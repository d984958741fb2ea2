"""``Optimizer``: the base class of every optimizer (PyTorch's interface and state-dict format).

An optimizer holds ``param_groups``, a list of dicts, each with ``"params"`` (a list of
:class:`cnnkit.nn.Parameter`) and that group's hyper-parameters (``"lr"``, ``"weight_decay"``...),
and ``state``, a dict from parameter to that parameter's buffers (momentum, moment estimates...).
``step()`` updates ``p.data`` in place for every parameter that has a gradient and
``requires_grad``; frozen parameters and parameters without a gradient are skipped (and get no
state). Subclasses implement ``_update(param, grad, state, group)`` for one parameter, vectorised
over its elements, and ``_check_group(group)`` for their hyper-parameters.

``state_dict()`` refers to parameters by their index in the order of ``param_groups`` (as
PyTorch does) and deep-copies every array, so that a checkpoint saved mid-run and loaded into a
fresh optimizer continues exactly as the uninterrupted run.
"""
from __future__ import annotations

import copy
import numbers

import numpy as np

from ..backend import array_module
from ..nn.module import Parameter


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``step``, ``zero_grad``, state dicts.

    Args:
        params: an iterable of :class:`~cnnkit.nn.Parameter` (e.g. ``model.parameters()``) or of
            dicts, each a parameter group ``{"params": [...], <hyper-parameter>: value, ...}``;
            a group's missing hyper-parameters take the values of ``defaults``.
        defaults: the optimizer's hyper-parameters by name.
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self._check_group(self.defaults)
        self.state: dict = {}
        self.param_groups: list[dict] = []
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError(
                f"{type(self).__name__}: params must be an iterable of Parameters or of dicts "
                f"(e.g. model.parameters()), got a single {type(params).__name__}"
            )
        groups = list(params)
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # -- hooks for subclasses -----------------------------------------------------------------
    def _check_group(self, group: dict) -> None:
        """Raise a ValueError for an invalid hyper-parameter of ``group`` (subclasses override)."""

    def _update(self, param: Parameter, grad, state: dict, group: dict) -> None:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} does not implement _update()")

    # -- groups -------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters with its own hyper-parameters (e.g. a layer unfrozen later).

        Hyper-parameters the group does not name take the optimizer's defaults. A parameter may
        belong to one group only.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if params is None:
            raise ValueError("param group must have a 'params' entry")
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("param group 'params' must be an ordered collection (list), not a set: "
                            "the order of parameters must be reproducible for state dicts")
        params = list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Parameter):
                raise TypeError(
                    f"{type(self).__name__} can only optimize cnnkit.nn.Parameter objects, but "
                    f"params[{i}] is a {type(p).__name__}"
                )
        if len({id(p) for p in params}) != len(params):
            raise ValueError("param group contains the same parameter more than once")
        seen = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")

        group = dict(param_group)
        group["params"] = params
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        self._check_group(group)
        self.param_groups.append(group)

    # -- the update ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradient of every parameter: to ``None`` (default) or to zeros in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad[...] = 0

    def step(self, closure=None):
        """Update every parameter that has a gradient and ``requires_grad``.

        ``closure``, optional, recomputes the loss (and the gradients) and returns it; ``step``
        calls it first and returns its value, as PyTorch does.
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad or p.grad is None:
                    continue
                grad = p.grad
                if grad.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}: gradient of shape {grad.shape} does not "
                                     f"match its parameter of shape {p.data.shape}")
                grad = grad.astype(p.data.dtype, copy=False)
                self._update(p, grad, self.state.setdefault(p, {}), group)
        return loss

    # -- state dicts --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}`` (copies).

        Parameters are numbered in the order of ``param_groups``, as in PyTorch; the arrays are
        deep copies, so later steps do not change a saved state dict.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: copy.deepcopy(s) for p, s in self.state.items() if s and id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict from :meth:`state_dict` into an optimizer over the same parameters.

        Groups are matched by position and parameters by index; hyper-parameters are taken from
        the state dict. Arrays are copied and cast to the dtype (and array module) of their
        parameter; the step counters are kept as they are.
        """
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"load_state_dict: the state dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        for i, (saved, own) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"load_state_dict: parameter group {i} has {len(saved['params'])} parameters "
                                 f"in the state dict and {len(own['params'])} in this optimizer")
        by_index = {}
        for saved, own in zip(saved_groups, self.param_groups):
            by_index.update(zip(saved["params"], own["params"]))

        new_state = {}
        for key, param_state in state_dict["state"].items():
            key = int(key)
            if key not in by_index:
                raise ValueError(f"load_state_dict: state for parameter index {key}, which no group lists")
            param = by_index[key]
            new_state[param] = {name: _cast_like(value, param) for name, value in param_state.items()}

        new_groups = []
        for saved, own in zip(saved_groups, self.param_groups):
            group = {k: copy.deepcopy(v) for k, v in saved.items() if k != "params"}
            group["params"] = own["params"]
            new_groups.append(group)
        self.state = new_state
        self.param_groups = new_groups

    # -- printing -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"


def _cast_like(value, param: Parameter):
    """A copy of a saved state entry: arrays take the parameter's dtype and array module."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and getattr(value, "ndim", 0) > 0:
        xp = array_module(param.data)
        dtype = param.data.dtype if np.issubdtype(value.dtype, np.floating) else value.dtype
        return xp.array(value, dtype=dtype, copy=True)
    return copy.deepcopy(value)


# -- validation helpers shared by the optimizers -----------------------------------------------
def check_non_negative(optimizer: str, group: dict, *names: str) -> None:
    """Raise a ValueError naming the hyper-parameter unless each ``group[name] >= 0``."""
    for name in names:
        value = group[name]
        if not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"{optimizer}: invalid {name} {value!r}: it must be a number >= 0")


def check_unit_interval(optimizer: str, name: str, value, *, include_one: bool) -> None:
    """Raise a ValueError unless ``0 <= value < 1`` (``<= 1`` with ``include_one``)."""
    is_number = isinstance(value, numbers.Real)
    if not (is_number and 0 <= value and (value <= 1 if include_one else value < 1)):
        interval = "[0, 1]" if include_one else "[0, 1)"
        raise ValueError(f"{optimizer}: invalid {name} {value!r}: it must lie in {interval}")
