"""Receptive fields from the layers' geometry: which input pixels a unit of a layer can see.

Along one axis, a unit ``i`` of some layer sees the input pixels ``start + i*jump`` up to
``start + i*jump + size - 1`` (coordinates of the unpadded input; negative or too large ones fall
in the padding). The input itself has ``size 1, jump 1, start 0``. A layer with kernel ``k``,
stride ``s``, padding ``p`` and dilation ``d`` (``k_eff = d*(k-1) + 1``) maps that to::

    size'  = size + (k_eff - 1) * jump
    jump'  = jump * s
    start' = start - p * jump

Element-wise layers (ReLU, BatchNorm, dropout, LRN across channels) keep it; fully connected and
global pooling layers see the whole input. Parallel branches (a residual block's body and
shortcut, an inception module's branches) see the union of their windows.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..functional.shapes import pair


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the units of one layer, per axis ``(rows, columns)``.

    ``size``: how many input pixels a unit spans; ``jump``: input pixels between neighbouring
    units; ``start``: input coordinate of the first pixel seen by unit 0 (negative: padding).
    ``whole_input``: the unit sees everything (after a fully connected or global pooling layer).
    """

    size: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)
    start: tuple[int, int] = (0, 0)
    whole_input: bool = False

    def window(self, row: int, col: int, input_hw=None) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)``, bottom/right exclusive, of the input region seen by the
        unit at ``(row, col)``; clipped to ``input_hw = (H, W)`` when given."""
        if self.whole_input:
            if input_hw is None:
                raise ValueError("this unit sees the whole input: pass input_hw to get its window")
            return 0, int(input_hw[0]), 0, int(input_hw[1])
        top = self.start[0] + row * self.jump[0]
        left = self.start[1] + col * self.jump[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if input_hw is not None:
            top, left = max(top, 0), max(left, 0)
            bottom, right = min(bottom, int(input_hw[0])), min(right, int(input_hw[1]))
        return top, bottom, left, right

    def then(self, kernel, stride=1, padding=0, dilation=1) -> "ReceptiveField":
        """The receptive field after one more windowed layer (conv or pool) with this geometry."""
        if self.whole_input:
            return self
        k, s, p, d = (pair(v, name, "receptive field") for v, name in
                      ((kernel, "kernel_size"), (stride, "stride"), (padding, "padding"), (dilation, "dilation")))
        size = tuple(self.size[a] + d[a] * (k[a] - 1) * self.jump[a] for a in (0, 1))
        jump = tuple(self.jump[a] * s[a] for a in (0, 1))
        start = tuple(self.start[a] - p[a] * self.jump[a] for a in (0, 1))
        return ReceptiveField(size, jump, start)

    def union(self, other: "ReceptiveField") -> "ReceptiveField":
        """What a unit fed by two parallel branches sees (they must agree on the jump)."""
        if self.whole_input or other.whole_input:
            return ReceptiveField(whole_input=True)
        if self.jump != other.jump:
            raise ValueError(f"parallel branches with different strides cannot be added or concatenated: "
                             f"jumps {self.jump} and {other.jump}")
        start = tuple(min(self.start[a], other.start[a]) for a in (0, 1))
        end = tuple(max(self.start[a] + self.size[a], other.start[a] + other.size[a]) for a in (0, 1))
        return ReceptiveField(tuple(end[a] - start[a] for a in (0, 1)), self.jump, start)


WHOLE = ReceptiveField(whole_input=True)


def _padding(module):
    padding = getattr(module, "padding", 0)
    if isinstance(padding, str):
        raise ValueError(f"{type(module).__name__}: padding={padding!r} is not supported by the receptive-field "
                         "arithmetic; use explicit padding")
    return padding


def _leaf(module, rf: ReceptiveField) -> ReceptiveField:
    """The receptive field after one leaf layer."""
    name = type(module).__name__
    if name.startswith("Adaptive") or name in ("Linear", "Flatten", "GlobalAvgPool2d"):
        return WHOLE
    if hasattr(module, "kernel_size"):
        stride = getattr(module, "stride", None)
        if stride is None:  # pooling's PyTorch default: stride = kernel_size
            stride = module.kernel_size
        return rf.then(module.kernel_size, stride, _padding(module), getattr(module, "dilation", 1) or 1)
    if hasattr(module, "stride"):  # a subsampling layer without a kernel (e.g. ResNet's option-A shortcut)
        return rf.then(1, module.stride, 0, 1)
    return rf  # element-wise: activations, normalisation, dropout


def _chain(named, rf, prefix, target):
    found = None
    for name, child in named:
        rf, hit = _walk(child, rf, f"{prefix}.{name}" if prefix else name, target)
        found = found or hit
    return rf, found


def _walk(module, rf, name, target):
    """``(receptive field after module, receptive field at target or None)``."""
    from ..nn.containers import Concat, Residual

    children = list(module.named_children())
    if not children:
        out, found = _leaf(module, rf), None
    elif isinstance(module, Residual):
        body, found = _chain(module.named_branch("body"), rf, name, target)
        skip, hit = _chain(module.named_branch("shortcut"), rf, name, target)
        out, found = body.union(skip), found or hit
        out, hit = _chain(module.named_branch("after"), out, name, target)  # a ReLU keeps the window
        found = found or hit
    elif isinstance(module, Concat):
        out, found = None, None
        for child_name, child in children:
            branch, hit = _walk(child, rf, f"{name}.{child_name}" if name else child_name, target)
            out = branch if out is None else out.union(branch)
            found = found or hit
    else:
        # Sequential and other containers: children run in definition order
        out, found = _chain(children, rf, name, target)
    if name == target and name:
        found = out
    return out, found


def receptive_field(model, layer: str) -> ReceptiveField:
    """Receptive field, in input pixels, of the units of the output of ``layer`` (a dotted name).

    Example: LeNet-5's ``features.3`` (the second 5x5 conv, after a 2x2/2 pool) sees 14x14
    pixels with a jump of 2: ``ReceptiveField(size=(14, 14), jump=(2, 2), start=(-2, -2))``
    (the first conv pads by 2).
    """
    from .layers import resolve_layer

    name, _ = resolve_layer(model, layer)
    _, found = _walk(model, ReceptiveField(), "", name)
    if found is None:
        raise ValueError(f"layer {name!r} is not on the forward path the receptive-field walk follows")
    return found
