"""Finding layers by name and catching what they output, for any model.

cnnkit modules have no hook machinery; ``capture_outputs`` shadows the ``forward`` of the chosen
modules with an instance attribute for the duration of one forward pass (``Module.__call__``
calls ``self.forward``), records their outputs, and removes the shadow afterwards, even on error.
It works inside any container (``Sequential``, ``Residual``, ``Concat``, custom modules).
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np


class _StopForward(Exception):
    """Raised by a capture once every wanted output is recorded: the rest of the network is skipped."""


def is_conv(module) -> bool:
    """A convolution: a 4-D ``weight`` ``(out, in/groups, kh, kw)`` and a ``kernel_size``."""
    weight = getattr(module, "weight", None)
    return hasattr(module, "kernel_size") and getattr(getattr(weight, "data", None), "ndim", 0) == 4


def named_layers(model) -> dict:
    """``{dotted name: module}`` of every module below ``model`` (the model itself excluded)."""
    return {name: m for name, m in model.named_modules() if name}


def conv_layers(model) -> list[tuple[str, object]]:
    """``(name, module)`` of the convolution layers, in definition order."""
    return [(name, m) for name, m in model.named_modules() if is_conv(m)]


def resolve_layer(model, layer):
    """The module ``layer`` names: a dotted name (``features.0``, ``layer1.0.conv1``), or
    ``conv<N>`` for the N-th convolution layer counting from 1 (``conv1`` is the first).

    Returns ``(name, module)``; an unknown name raises ``ValueError`` listing the names.
    """
    layers = named_layers(model)
    if layer in layers:
        return layer, layers[layer]
    if isinstance(layer, str) and layer.startswith("conv") and layer[4:].isdigit():
        convs = conv_layers(model)
        index = int(layer[4:])
        if 1 <= index <= len(convs):
            return convs[index - 1]
        raise ValueError(f"{layer!r}: the model has {len(convs)} convolution layers (conv1..conv{len(convs)})")
    described = ", ".join(f"{n} ({type(m).__name__})" for n, m in layers.items())
    raise ValueError(f"unknown layer {layer!r}; the model's layers are: {described}")


def first_conv(model):
    """``(name, module)`` of the first convolution layer; ``ValueError`` when there is none."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution layer (a module with a 4-D weight)")
    return convs[0]


@contextmanager
def _shadowed_forwards(modules: dict, record: dict, stop_after: bool):
    def wrap(name, module):
        original = module.forward

        def forward(x):
            y = original(x)
            record[name] = y
            if stop_after and len(record) == len(modules):
                raise _StopForward
            return y

        return forward

    try:
        for name, module in modules.items():
            module.forward = wrap(name, module)
        yield
    finally:
        for module in modules.values():
            # Only remove our own shadow: the class's forward comes back.
            if "forward" in vars(module):
                del module.forward


def capture_outputs(model, x, names, stop_early: bool = False) -> tuple[dict, object]:
    """Run ``model(x)`` and record the outputs of the layers ``names`` (dotted names).

    Returns ``(outputs, logits)``: ``outputs[name]`` is that layer's output array (the last call's
    if a module runs several times) and ``logits`` the model's output. With ``stop_early`` the
    forward pass stops as soon as every named output is known and ``logits`` is ``None``: what
    the maximally-activating-patches search needs, for a fraction of the cost.
    The caller chooses the mode (``model.eval()``) and ``no_grad``.
    """
    layers = named_layers(model)
    wanted = {}
    for name in names:
        if name not in layers:
            resolve_layer(model, name)  # raises the helpful error
        wanted[name] = layers[name]
    record: dict = {}
    logits = None
    with _shadowed_forwards(wanted, record, stop_early):
        try:
            logits = model(x)
        except _StopForward:
            pass
    missing = [n for n in wanted if n not in record]
    if missing:
        raise RuntimeError(f"the layers {missing} were not called during the forward pass")
    return record, logits


def display_layers(model, max_layers: int = 14) -> list[str]:
    """Names of up to ``max_layers`` modules that together describe the forward pass, finest first:
    the leaves of a small network (LeNet-5: every conv, ReLU, pool and linear layer), the stages
    of a deep one (ResNet-20: stem, layer1..3, pooling, classifier). Containers are opened level
    by level while the list stays within ``max_layers``."""
    current = [(name, m) for name, m in model.named_children()]
    if not current:
        return []
    while True:
        expanded = []
        for name, m in current:
            children = list(m.named_children())
            expanded.extend([(f"{name}.{c}", cm) for c, cm in children] if children else [(name, m)])
        if len(expanded) == len(current) or len(expanded) > max_layers:
            break
        current = expanded
    return [name for name, _ in current[:max_layers]]


def as_batch(image) -> np.ndarray:
    """``(C, H, W)`` -> ``(1, C, H, W)``; a batch stays a batch."""
    image = np.asarray(image)
    if image.ndim == 3:
        return image[None]
    if image.ndim != 4:
        raise ValueError(f"expected an image (C, H, W) or a batch (N, C, H, W), got shape {image.shape}")
    return image
