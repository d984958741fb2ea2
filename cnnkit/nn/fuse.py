"""Inference fusion: BatchNorm folded into the convolution before it, ReLU into the convolution.

In eval mode a BatchNorm is a fixed per-channel affine map, ``y = s * (x - mean) + beta`` with
``s = gamma / sqrt(running_var + eps)``; after a convolution ``x = W * in + b`` it is the same
convolution with ::

    W' = s[f] * W[f, ...],        b' = s * (b - mean) + beta

so the BatchNorm's whole pass over the activations disappears. A ReLU right after (the
convolution's or the folded BatchNorm's output, used by nothing else) becomes an in-place
``max(y, 0)`` on the array the convolution just made (``Conv2d.fused_relu``), saving the ReLU
layer's new array. ``fuse`` finds such chains by running the model once on a small batch and
following which array each layer received, so a convolution whose output also feeds something
else (a residual sum, a concatenation) is left alone; it then checks the fused copy against the
original on that batch.

    fast = cnnkit.nn.fuse.fuse(model, (3, 32, 32))   # a fused eval-mode copy; `model` is untouched
    with cnnkit.no_grad():
        logits = fast(x)

The fused copy is for inference: its BatchNorms are gone (``Identity`` in their place), so it
cannot train them, and it stays in eval mode.
"""
from __future__ import annotations

import copy

import numpy as np

from .activation import Identity, ReLU
from .conv import Conv2d
from .module import Module, Parameter, no_grad
from .normalization import BatchNorm2d

__all__ = ["fuse", "fold_batchnorm"]  # what cnnkit.nn exports from here


def fold_batchnorm(conv: Conv2d, bn: BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv``'s weight and bias, in place (computed in float64).

    Shape:
        conv.weight (F, C/groups, kh, kw), bn statistics (F,) -> conv.weight, conv.bias (F,)
    """
    if not bn.track_running_stats:
        raise ValueError("fold_batchnorm: the BatchNorm2d has no running statistics "
                         "(track_running_stats=False normalises with batch statistics even in eval mode)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_batchnorm: BatchNorm2d({bn.num_features}) cannot follow a conv with "
                         f"{conv.out_channels} output channels")
    dtype = conv.weight.dtype
    scale = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.data
    bias = np.zeros(conv.out_channels) if conv.bias is None else conv.bias.data.astype(np.float64)
    bias = (bias - bn.running_mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.data
    conv.weight.data[...] = (conv.weight.data * scale.reshape(-1, 1, 1, 1)).astype(dtype)
    if conv.bias is None:
        conv.bias = Parameter(bias.astype(dtype))
    else:
        conv.bias.data[...] = bias.astype(dtype)


def _trace(model: Module, x):
    """Run ``model(x)``, recording for every leaf call ``(module, input id, output id)``.

    The arrays are kept alive until the trace is read, so that no id is reused.
    """
    calls, alive = [], []
    leaves = [m for m in model.modules() if next(m.children(), None) is None]

    def wrap(module):
        forward = module.forward

        def traced(inp):
            out = forward(inp)
            calls.append((module, id(inp), id(out)))
            alive.extend((inp, out))
            return out
        return traced

    for m in leaves:
        m.forward = wrap(m)
    try:
        with no_grad():
            y = model(x)
    finally:
        for m in leaves:
            del m.forward
    return calls, y


def _chains(model: Module, calls):
    """``(parent, conv name, bn name or None, relu name or None)`` for each fusable run of siblings."""
    by_module = {}
    for module, inp, out in calls:
        by_module.setdefault(id(module), []).append((inp, out))
    uses = {}
    for _, inp, _ in calls:
        uses[inp] = uses.get(inp, 0) + 1

    def single_call(m):
        seen = by_module.get(id(m), [])
        return seen[0] if len(seen) == 1 else None

    def feeds(a, b):
        """``a``'s only output went into ``b`` (and into nothing else a layer saw)."""
        ca, cb = single_call(a), single_call(b)
        return ca is not None and cb is not None and ca[1] == cb[0] and uses.get(ca[1]) == 1

    found = []
    for parent in model.modules():
        children = list(parent.named_children())
        i = 0
        while i < len(children):
            name, conv = children[i]
            if not isinstance(conv, Conv2d) or conv.fused_relu:
                i += 1
                continue
            bn_name = relu_name = None
            last = conv
            j = i + 1
            if j < len(children) and isinstance(children[j][1], BatchNorm2d) and feeds(conv, children[j][1]) \
                    and children[j][1].track_running_stats:
                bn_name, last = children[j][0], children[j][1]
                j += 1
            if j < len(children) and type(children[j][1]) is ReLU and feeds(last, children[j][1]):
                relu_name = children[j][0]
                j += 1
            if bn_name or relu_name:
                found.append((parent, name, bn_name, relu_name))
            i = j
    return found


def fuse(model: Module, input_shape, *, batch_size: int = 2, check: bool = True, rtol: float | None = None) -> Module:
    """A fused eval-mode copy of ``model`` for inference (``model`` itself is not changed).

    ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``: a random batch of
    ``batch_size`` runs once to trace which layer feeds which. With ``check`` the copy's output on
    that batch must equal the original's (relative tolerance ``rtol``, default 1e-4 for float32,
    1e-10 for float64) or a ``RuntimeError`` says so.
    """
    fused = copy.deepcopy(model).eval()
    reference = copy.deepcopy(model).eval()
    dtype = next((p.dtype for p in model.parameters()), np.dtype(np.float32))
    x = np.random.default_rng(0).standard_normal((batch_size,) + tuple(input_shape)).astype(dtype)
    calls, _ = _trace(fused, x)
    for parent, conv_name, bn_name, relu_name in _chains(fused, calls):
        conv = getattr(parent, conv_name)
        if bn_name is not None:
            fold_batchnorm(conv, getattr(parent, bn_name))
            setattr(parent, bn_name, Identity())
        if relu_name is not None:
            conv.fused_relu = True
            setattr(parent, relu_name, Identity())
    if check:
        with no_grad():
            want, got = reference(x), fused(x)
        tol = rtol if rtol is not None else (1e-10 if np.dtype(dtype) == np.float64 else 1e-4)
        scale = max(float(np.abs(want).max()), 1e-30)
        if not np.allclose(got, want, rtol=tol, atol=tol * scale):
            raise RuntimeError(f"fuse: the fused model's output differs from the original's "
                               f"(max difference {float(np.abs(got - want).max()):.3g}); a fused layer's "
                               "output must be used elsewhere in a way the trace did not see")
    return fused


def fuse_count(model: Module) -> dict:
    """How many convolutions carry a fused ReLU, and how many ``Identity`` layers the model has."""
    convs = [m for m in model.modules() if isinstance(m, Conv2d)]
    return {"fused_relu": sum(c.fused_relu for c in convs),
            "identity": sum(isinstance(m, Identity) for m in model.modules())}
