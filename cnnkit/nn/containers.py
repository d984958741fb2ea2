"""Containers: ``Sequential`` (a chain), ``Residual`` (sum of two branches, then an optional
activation), ``Concat`` (channel concatenation of parallel branches, the inception pattern);
:class:`cnnkit.nn.graph.Graph` for any other DAG. These are the one way to build branches: the
zoo's ResNet blocks are ``Residual``s, its inception modules ``Concat``s, GoogLeNet a ``Graph``.

Backward composes the children's backwards: ``Sequential`` runs them in reverse, ``Residual``
sums the gradients of its two branches, ``Concat`` splits ``dy`` along channels. The
``input_grad`` flag reaches the first layers only: inner layers always need their input gradient.
"""
from __future__ import annotations

from collections import OrderedDict

from ..backend import array_module
from ..functional.add import ADD
from .activation import ReLU
from .module import Module
from .normalization import BatchNorm2d

__all__ = ["Sequential", "Residual", "Concat"]  # what cnnkit.nn exports from here


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


# -- a chain of modules: Sequential's work, and each branch of a Residual -------------------------
def fuse_norm_relu(module, following) -> bool:
    """Whether a chain runs ``module`` (a training-mode BatchNorm2d) and the plain ReLU after it as
    one op: the normalisation writes ``max(y, 0)`` in the same pass (oneDNN's fused kernel; NumPy
    in place) and its backward applies the ReLU's mask, so the ReLU layer runs neither. Eval mode
    keeps them apart (``cnnkit.nn.fuse`` folds the BatchNorm into the convolution instead)."""
    return (type(module) is BatchNorm2d and module.training and type(following) is ReLU
            and following.algorithm == "auto")


def _chain_forward(modules, x):
    skip = False
    for m, following in zip(modules, modules[1:] + [None]):
        if skip:  # the ReLU that the BatchNorm before it applied
            skip = False
            continue
        if fuse_norm_relu(m, following):
            m.fuse_relu_once = skip = True
        x = m(x)
    return x


def _chain_backward(modules, dy, input_grad: bool):
    """Children's backwards in reverse; the input gradient only where asked for."""
    # Without an input gradient, a frozen prefix (fine-tuning only the head) needs no
    # backward at all: stop at the first child that has something to learn.
    first = 0 if input_grad else _first_trainable(modules)
    for i in range(len(modules) - 1, first - 1, -1):
        if i > 0 and type(modules[i]) is ReLU and getattr(modules[i - 1], "relu_fused", False):
            continue  # its forward ran inside the BatchNorm before it, and so does its backward
        dy = modules[i].backward(dy, input_grad=input_grad or i > first)
    for child in modules[:first]:
        _drop_caches(child)  # their forward caches will never be consumed
    return dy if input_grad else None


def _chain_shape(modules, shape):
    # Children are asked in forward order with the shapes passed on as given (cnnkit.summary
    # follows which array each shape stands for).
    for m in modules:
        shape = m.output_shape(shape)
    return shape


def _chain_export(ctx, parent: Module, names, x, prefix: str):
    for name in names:
        x = ctx.export(getattr(parent, name), x, ctx.join(prefix, name))
    return x


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
        return _chain_forward(list(self.children()), x)

    def backward(self, dy, input_grad: bool = True):
        return _chain_backward(list(self.children()), dy, input_grad)

    def output_shape(self, input_shape):
        return _chain_shape(list(self.children()), input_shape)

    def onnx_export(self, ctx, x, prefix):
        return _chain_export(ctx, self, [name for name, _ in self.named_children()], x, prefix)


class Residual(Module):
    """``y = after(body(b) + shortcut(b))`` with ``b = before(x)``: a residual block; the shortcut
    is the identity when ``None``, and so are ``before`` and ``after``.

    ``body`` and ``shortcut`` are each a module, or a dict of name -> module run as a chain. A
    dict's modules become this container's own children under those names, so a block keeps
    torchvision's state-dict keys (``conv1``, ``bn1``, ..., ``downsample.0``) instead of
    ``body.conv1``. ``after`` (e.g. ResNet's ``ReLU``) runs on the sum, as the child ``relu``
    unless given as a dict too; ``before`` (a pre-activation ResNet's BN-ReLU shared by both
    branches) runs first, as the child ``before`` unless given as a dict. Backward hands the
    sum's gradient to both branches and adds their input gradients (the multivariate chain rule
    at the fan-out).

    Shape:
        body and shortcut must give the same output shape; that is checked by ``output_shape``
        and at forward time.
    """

    def __init__(self, body, shortcut=None, after=None, before=None):
        super().__init__()
        self._before = self._adopt(before, "before")
        self._body = self._adopt(body, "body")
        self._shortcut = self._adopt(shortcut, "shortcut")
        self._after = self._adopt(after, "relu")

    def _adopt(self, branch, default_name: str) -> tuple:
        """Store a branch's modules as children; return their names, in order."""
        if branch is None:
            return ()
        items = [(default_name, branch)] if isinstance(branch, Module) else _named([branch], "Residual")
        for name, module in items:
            if name in vars(self) or hasattr(type(self), name):
                raise ValueError(f"Residual: child name {name!r} is used twice")
            setattr(self, name, module)
        return tuple(name for name, _ in items)

    def _chain(self, names) -> list:
        return [getattr(self, name) for name in names]

    def named_branch(self, which: str) -> list:
        """``[(name, module)]`` of ``"before"``, the ``"body"``, the ``"shortcut"`` or ``"after"``, in order."""
        names = {"before": self._before, "body": self._body, "shortcut": self._shortcut, "after": self._after}[which]
        return [(name, getattr(self, name)) for name in names]

    def _relu_after(self) -> bool:
        """Whether ``after`` is one plain ReLU, which the add op then applies in the same pass."""
        after = self._chain(self._after)
        return len(after) == 1 and type(after[0]) is ReLU and after[0].algorithm == "auto"

    def forward(self, x):
        x = _chain_forward(self._chain(self._before), x)
        y = _chain_forward(self._chain(self._body), x)
        skip = _chain_forward(self._chain(self._shortcut), x)
        if y.shape != skip.shape:
            raise ValueError(
                f"{type(self).__name__}: body output {tuple(y.shape)} and shortcut output {tuple(skip.shape)} "
                "differ; give the shortcut a projection (e.g. a 1x1 Conv2d with the body's stride)"
            )
        if self._relu_after():  # relu(body + shortcut) in one pass (oneDNN: a ReLU post-op)
            total, cache = ADD.forward(y, skip, relu=True)
            self._save((cache, True))
            return total
        total, cache = ADD.forward(y, skip)
        self._save((cache, False))
        return _chain_forward(self._chain(self._after), total)

    def backward(self, dy, input_grad: bool = True):
        cache, relu_fused = self._restore()
        dsum = dy if relu_fused else _chain_backward(self._chain(self._after), dy, True)
        dbody, dskip = ADD.backward(dsum, cache)
        # Inside, the branches' input gradients are needed whenever a `before` layer waits for them.
        inner = input_grad or bool(self._before)
        dx = _chain_backward(self._chain(self._body), dbody, inner)
        if self._shortcut:
            dskip = _chain_backward(self._chain(self._shortcut), dskip, inner)
        if inner:
            # The fan-out's two gradients add up: the add op (oneDNN's on every core, where installed).
            dx = ADD.forward(dx, dskip)[0] if dx.shape == dskip.shape else dx + dskip
        return _chain_backward(self._chain(self._before), dx, input_grad) if self._before else dx

    def output_shape(self, input_shape):
        input_shape = _chain_shape(self._chain(self._before), input_shape)
        body = _chain_shape(self._chain(self._body), input_shape)
        skip = _chain_shape(self._chain(self._shortcut), input_shape)
        if tuple(body) != tuple(skip):
            raise ValueError(f"{type(self).__name__}: body output {tuple(body)} and shortcut output "
                             f"{tuple(skip)} differ")
        return _chain_shape(self._chain(self._after), body)

    def onnx_export(self, ctx, x, prefix):
        x = _chain_export(ctx, self, self._before, x, prefix)
        y = _chain_export(ctx, self, self._body, x, prefix)
        skip = _chain_export(ctx, self, self._shortcut, x, prefix)
        total = ctx.node("Add", [y, skip], ctx.join(prefix, "add"), shape=ctx.shape(y))
        return _chain_export(ctx, self, self._after, total, prefix)


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

    def onnx_export(self, ctx, x, prefix):
        outputs = [ctx.export(child, x, ctx.join(prefix, name)) for name, child in self.named_children()]
        return ctx.node("Concat", outputs, ctx.join(prefix, "concat"), axis=1)
