"""Containers: ``Sequential`` (a chain), ``Residual`` (sum of two branches), ``Concat`` (channel
concatenation of parallel branches, the inception pattern).

Backward composes the children's backwards: ``Sequential`` runs them in reverse, ``Residual``
sums the gradients of its two branches, ``Concat`` splits ``dy`` along channels. The
``input_grad`` flag reaches the first layers only: inner layers always need their input gradient.
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import array_module
from .module import Module


def _named(args, kind: str) -> list[tuple[str, Module]]:
    """Children from ``*modules`` (named 0, 1, ...) or one ``OrderedDict``/dict of name -> module."""
    if len(args) == 1 and isinstance(args[0], (dict, OrderedDict)):
        items = list(args[0].items())
    else:
        items = [(str(i), m) for i, m in enumerate(args)]
    for name, m in items:
        if not isinstance(m, Module):
            raise TypeError(f"{kind}: child {name!r} must be a cnnkit Module, got {type(m).__name__}")
    return items


def _first_trainable(children) -> int:
    """Index of the first child with a trainable parameter (``len(children)`` if none)."""
    for i, child in enumerate(children):
        if any(p.requires_grad for p in child.parameters()):
            return i
    return len(children)


def _drop_caches(module: Module) -> None:
    for m in module.modules():
        m._cache = None


class Sequential(Module):
    """Apply children in order; backward applies their backwards in reverse order."""

    def __init__(self, *modules):
        super().__init__()
        for name, m in _named(modules, "Sequential"):
            setattr(self, name, m)

    def __len__(self) -> int:
        return sum(1 for _ in self.named_children())

    def __iter__(self):
        return self.children()

    def __getitem__(self, index):
        children = list(self.named_children())
        if isinstance(index, slice):
            return Sequential(OrderedDict(children[index]))
        if isinstance(index, str):
            return getattr(self, index)
        return children[index][1]

    def append(self, module: Module) -> "Sequential":
        _named([module], "Sequential")
        setattr(self, str(len(self)), module)
        return self

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x

    def backward(self, dy, input_grad: bool = True):
        children = list(self.children())
        # Without an input gradient, a frozen prefix (fine-tuning only the head) needs no
        # backward at all: stop at the first child that has something to learn.
        first = 0 if input_grad else _first_trainable(children)
        for i in range(len(children) - 1, first - 1, -1):
            dy = children[i].backward(dy, input_grad=input_grad or i > first)
        for child in children[:first]:
            _drop_caches(child)  # their forward caches will never be consumed
        return dy if input_grad else None

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for m in self.children():
            shape = m.output_shape(shape)
        return shape


class Residual(Module):
    """``y = body(x) + shortcut(x)``; the shortcut is the identity when ``None``.

    Shape:
        body and shortcut must give the same output shape; that is checked by ``output_shape``
        and at forward time.
    """

    def __init__(self, body: Module, shortcut: Module | None = None):
        super().__init__()
        _named([body] + ([shortcut] if shortcut is not None else []), "Residual")
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        y = self.body(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if y.shape != skip.shape:
            raise ValueError(
                f"Residual: body output {tuple(y.shape)} and shortcut output {tuple(skip.shape)} differ; "
                "give the shortcut a projection (e.g. a 1x1 Conv2d with the body's stride)"
            )
        return y + skip

    def backward(self, dy, input_grad: bool = True):
        dx = self.body.backward(dy, input_grad=input_grad)
        if self.shortcut is None:
            return dx + dy if input_grad else None
        dskip = self.shortcut.backward(dy, input_grad=input_grad)
        return dx + dskip if input_grad else None

    def output_shape(self, input_shape):
        body = self.body.output_shape(input_shape)
        skip = tuple(input_shape) if self.shortcut is None else self.shortcut.output_shape(input_shape)
        if tuple(body) != tuple(skip):
            raise ValueError(f"Residual: body output {tuple(body)} and shortcut output {tuple(skip)} differ")
        return tuple(body)


class Concat(Module):
    """Run every branch on the same input and concatenate the outputs along channels (axis 1).

    Shape:
        branches must agree on every axis but the channel axis;
        out channels = sum of the branches' channels.
    """

    def __init__(self, *branches):
        super().__init__()
        items = _named(branches, "Concat")
        if not items:
            raise ValueError("Concat needs at least one branch")
        for name, m in items:
            setattr(self, name, m)

    def forward(self, x):
        outputs = [branch(x) for branch in self.children()]
        rest = {tuple(o.shape[:1] + o.shape[2:]) for o in outputs}
        if len(rest) > 1:
            raise ValueError(
                "Concat: branch outputs differ outside the channel axis: "
                + ", ".join(str(tuple(o.shape)) for o in outputs)
            )
        self._save([o.shape[1] for o in outputs])
        return array_module(x).concatenate(outputs, axis=1)

    def backward(self, dy, input_grad: bool = True):
        widths = self._restore()
        dx = None
        start = 0
        for branch, width in zip(self.children(), widths):
            part = branch.backward(dy[:, start:start + width], input_grad=input_grad)
            start += width
            if input_grad:
                dx = part if dx is None else dx + part
        return dx

    def output_shape(self, input_shape):
        shapes = [tuple(b.output_shape(input_shape)) for b in self.children()]
        if len({s[1:] for s in shapes}) > 1:
            raise ValueError(f"Concat: branch outputs differ outside the channel axis: {shapes}")
        return (sum(s[0] for s in shapes),) + shapes[0][1:]
