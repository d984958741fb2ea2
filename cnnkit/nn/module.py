"""``Parameter``, ``Module`` and ``no_grad``: the contract every layer follows.

The contract, written once:

* ``y = module(x)`` runs ``forward`` and, unless inside ``with cnnkit.no_grad():``, caches what
  ``backward`` needs (in training *and* eval mode: saliency maps backpropagate through an
  eval-mode network).
* ``dx = module.backward(dy, input_grad=True)`` consumes that cache, returns the gradient with
  respect to the input and *accumulates* (``+=``) the gradients of the parameters. With
  ``input_grad=False`` the input gradient is not computed and ``None`` is returned (Caffe's
  ``propagate_down``): a training step never needs the gradient of the image. ``dy`` must have
  the shape of the output of the forward whose cache it consumes: a ``ValueError`` naming the
  layer and both shapes says so (checked here, once for every layer; see ``__init_subclass__``).
* ``train()`` / ``eval()`` only change what layers compute (dropout, batch statistics).
* ``output_shape(input_shape)`` answers the shape of one sample's output, ``(C, H, W)`` or
  ``(F,)``, without data.
* ``state_dict()`` walks attributes in definition order and uses PyTorch's key names, so
  ``features.0.weight`` or ``layer1.0.bn1.running_mean`` move freely between the two.

What tools need to know about a leaf layer lives with the layer, so that summary, profile and
the ONNX exporter iterate over layers instead of keeping tables of their own:

* ``macs(input_shape, output_shape)``: multiply-adds of one sample (0 where none are counted);
* ``step_memory(input_shape, output_shape, batch_size, dtype)``: what its kernel keeps and
  allocates in a training step (a :class:`~cnnkit.functional.memory.LayerMemory`);
* ``counts_activation(input_shape, output_shape)``: whether its output is a new activation in
  the notes' forward-memory convention (ReLU and dropout run in place there);
* ``onnx_export(ctx, x, prefix)``: emit its ONNX node(s) through ``ctx``
  (:class:`cnnkit.onnx.exporter.ExportContext`) and return the output tensor's name.

The defaults below suit a module defined outside cnnkit that declares nothing (no MACs, its
input kept for backward); every cnnkit layer declares its own (``tests/test_layer_rules.py``).
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, NamedTuple

import numpy as np

from ..backend import DEFAULT_DTYPE, array_module
from ..functional.memory import LayerMemory

__all__ = ["Module", "Parameter", "no_grad", "is_grad_enabled"]  # what cnnkit.nn exports from here

_grad_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether forward passes cache what backward needs (False inside ``no_grad``)."""
    return getattr(_grad_mode, "enabled", True)


@contextmanager
def no_grad():
    """Context manager for inference: inside it, no module caches anything for backward."""
    previous = is_grad_enabled()
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


class Parameter:
    """A learnable array and its gradient.

    ``grad`` is ``None`` until the first backward writes it; later backwards add to it (``+=``)
    until ``zero_grad()`` resets it to ``None``. ``requires_grad=False`` freezes the parameter:
    layers skip its gradient and optimizers skip its update.
    """

    __slots__ = ("data", "grad", "requires_grad", "on_grad")

    def __init__(self, data, requires_grad: bool = True):
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        # Called as on_grad(self) after each accumulate_grad. DistributedDataParallel sets it for
        # the length of one backward: since every layer writes its parameter gradients here,
        # this is where it learns that a gradient is complete and can start averaging it over
        # the ranks while the layers below are still running their backward.
        self.on_grad = None

    def accumulate_grad(self, grad) -> None:
        """Add ``grad`` to ``self.grad`` (the only way layers write parameter gradients)."""
        if not self.requires_grad:
            return
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=True)
        else:
            self.grad += grad
        if self.on_grad is not None:
            self.on_grad(self)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __repr__(self) -> str:
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}{frozen})"


class IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list


def _checks_gradient_shape(backward):
    """``backward`` refusing a ``dy`` whose shape differs from the output of the cached forward.

    Without it a wrong gradient surfaces as a NumPy error from deep inside a kernel ("matmul:
    Input operand 1 has a mismatch in its core dimension 0 ...") or, worse, broadcasts silently.
    """
    @functools.wraps(backward)
    def checked(self, *args, **kwargs):
        expected = self.__dict__.get("_output_shape")
        if expected is not None and self._cache is not None:
            dy = args[0] if args else kwargs.get("dy")
            got = getattr(dy, "shape", None)
            if got is None or tuple(got) != expected:
                what = f"has shape {tuple(got)}" if got is not None else f"is a {type(dy).__name__}"
                raise ValueError(
                    f"{type(self).__name__}.backward: dy {what}, but the output of its forward had shape "
                    f"{expected}; pass the gradient of that output (the same shape)"
                )
        return backward(self, *args, **kwargs)

    return checked


class Module:
    """Base class of every layer and container.

    Subclasses implement ``forward(x)``, ``backward(dy, input_grad=True)`` and, when the output
    shape differs from the input shape, ``output_shape(input_shape)``. They store what backward
    needs with ``self._save(...)`` and take it back with ``self._restore()``.
    """

    training: bool

    def __init__(self):
        self.training = True
        self._buffer_names: list[str] = []
        self._cache = None
        self._output_shape = None  # of the forward whose cache is kept: backward's dy must match

    def __init_subclass__(cls, **kwargs):
        # Every backward checks dy's shape against the cached forward's output, here, once,
        # instead of in each layer.
        super().__init_subclass__(**kwargs)
        if "backward" in cls.__dict__:
            cls.backward = _checks_gradient_shape(cls.__dict__["backward"])

    # -- forward / backward -------------------------------------------------------------------
    def __call__(self, x):
        y = self.forward(x)
        if self._cache is not None and hasattr(y, "shape"):
            self._output_shape = tuple(y.shape)  # after forward: its _save cleared the last one
        return y

    def forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def backward(self, dy, input_grad: bool = True):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not implement backward()")

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of one sample's output for one sample's ``input_shape`` (default: unchanged)."""
        return tuple(input_shape)

    def _run(self, op, *args, **kwargs):
        """``(y, cache)`` from the kernel of ``op`` that runs this call (the layer's ``algorithm``,
        ``"auto"`` when it has none); ``last_algorithm`` then names that kernel."""
        kernel = op.select(getattr(self, "algorithm", "auto"), *args, **kwargs)
        self.last_algorithm = kernel.name
        return op.run(kernel, *args, **kwargs)

    def _save(self, cache) -> None:
        """Keep ``cache`` for backward, unless inside ``no_grad`` (inference caches nothing)."""
        self._cache = cache if is_grad_enabled() else None
        self._output_shape = None  # set by __call__ once forward returns (not when called directly)

    def _wants_grad(self, name: str) -> bool:
        """Whether parameter ``name`` exists and is trainable, i.e. its gradient is worth computing."""
        param = getattr(self, name, None)
        return param is not None and param.requires_grad

    def _accumulate_grads(self, **grads) -> None:
        """Add each gradient that was computed (not ``None``) to the parameter of that name."""
        for name, grad in grads.items():
            if grad is not None:
                getattr(self, name).accumulate_grad(grad)

    def _restore(self):
        """Take the cache of the last forward; backward frees it (one backward per forward)."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() called without a cached forward pass: call the "
                "module on an input first, outside `with cnnkit.no_grad():`, and call backward "
                "once per forward"
            )
        self._cache = None
        return cache

    # -- what tools need to know (see the module docstring) ------------------------------------
    def macs(self, input_shape: tuple, output_shape: tuple) -> int:
        """Multiply-adds of one sample's forward pass (convolutions and linear layers count)."""
        return 0

    def step_memory(self, input_shape: tuple, output_shape: tuple, batch_size: int, dtype) -> LayerMemory:
        """Bytes this layer holds during one training step, for a batch of ``batch_size``."""
        return LayerMemory(keeps_input=True)

    def counts_activation(self, input_shape: tuple, output_shape: tuple) -> bool:
        """Whether the output is a new activation in the notes' forward-memory convention."""
        return True

    # -- buffers and tree walking -------------------------------------------------------------
    def register_buffer(self, name: str, value) -> None:
        """Add a non-learnable array saved in the state dict (e.g. BatchNorm's running_mean)."""
        setattr(self, name, value)
        if name not in self._buffer_names:
            self._buffer_names.append(name)

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator["Module"]:
        for _, child in self.named_children():
            yield child

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def _named_members(self, local) -> Iterator[tuple[str, object]]:
        """Walk the tree in definition order, yielding ``(dotted_name, member)`` pairs."""
        for prefix, module in self.named_modules():
            for name, value in local(module):
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        def local(m):
            return ((n, v) for n, v in vars(m).items() if isinstance(v, Parameter))

        return self._named_members(local)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, object]]:
        return self._named_members(lambda m: ((n, getattr(m, n)) for n in m._buffer_names))

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def apply(self, fn) -> "Module":
        for m in self.modules():
            fn(m)
        return self

    # -- modes, gradients, dtype --------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Training mode for this module and its children, except those with ``eval_locked``
        set (e.g. BatchNorm kept on its pretrained statistics while fine-tuning)."""
        for m in self.modules():
            m.training = bool(mode) and not getattr(m, "eval_locked", False)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        """Freeze (``False``) or unfreeze every parameter of this module and its children."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def to(self, dtype) -> "Module":
        """Cast floating parameters and buffers to ``dtype`` in place; returns ``self``."""
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(f"Module.to: dtype must be a floating type, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype, copy=False)
            if p.grad is not None:
                p.grad = p.grad.astype(dtype, copy=False)
        for m in self.modules():
            for name in m._buffer_names:
                value = getattr(m, name)
                if np.issubdtype(value.dtype, np.floating):
                    setattr(m, name, value.astype(dtype, copy=False))
        return self

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    @property
    def dtype(self):
        """The dtype of the first parameter (float32 for modules without parameters)."""
        for p in self.parameters():
            return p.data.dtype
        return np.dtype(DEFAULT_DTYPE)

    # -- state dict ---------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, object]":
        """Parameters and buffers by PyTorch-style dotted key (arrays are references, not copies)."""
        state = OrderedDict()
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter) or name in module._buffer_names:
                    key = f"{prefix}.{name}" if prefix else name
                    state[key] = value.data if isinstance(value, Parameter) else value
        return state

    def load_state_dict(self, state, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state`` into this module, cast to each target's dtype.

        With ``strict=True`` any missing key, unexpected key or shape mismatch raises a
        ``KeyError``/``ValueError`` listing every problem; nothing is modified in that case.
        With ``strict=False`` matching keys load and the mismatched names are returned.
        """
        own = {}
        for prefix, module in self.named_modules():
            for name, value in vars(module).items():
                if isinstance(value, Parameter) or name in module._buffer_names:
                    own[f"{prefix}.{name}" if prefix else name] = (module, name)
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        mismatched = []
        for key, (module, name) in own.items():
            if key in state:
                target = getattr(module, name)
                target_shape = tuple(target.data.shape if isinstance(target, Parameter) else target.shape)
                got_shape = tuple(np.shape(state[key]))
                if target_shape != got_shape:
                    mismatched.append(f"{key}: checkpoint has shape {got_shape}, model has {target_shape}")
        if mismatched:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(mismatched))
        if strict and (missing or unexpected):
            problems = []
            if missing:
                problems.append(f"missing keys {missing}")
            if unexpected:
                problems.append(f"unexpected keys {unexpected}")
            raise KeyError("load_state_dict(strict=True): " + "; ".join(problems))
        for key, (module, name) in own.items():
            if key not in state:
                continue
            target = getattr(module, name)
            if isinstance(target, Parameter):
                xp = array_module(target.data)
                target.data = xp.array(state[key], dtype=target.data.dtype, copy=True)
            else:
                xp = array_module(target)
                value = xp.array(state[key], dtype=target.dtype, copy=True)
                setattr(module, name, value)
        return IncompatibleKeys(missing, unexpected)

    # -- printing -----------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"
