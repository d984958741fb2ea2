"""``Graph``: a general DAG of modules (what ONNX import builds), and the merge layers it needs.

A graph has one or more named input tensors, named nodes in topological order and one or more
output tensors::

    g = Graph(input="x")
    g.add_node("conv1", Conv2d(16, 16, 3, padding=1), "x")      # output tensor "conv1"
    g.add_node("relu1", ReLU(), "conv1")
    g.add_node("sum", Add(), ["relu1", "x"])                     # a residual connection
    g.set_outputs("sum")

Forward runs the nodes in order, keeping each tensor until its last consumer has run. Backward
runs them in reverse; where a tensor fans out to several consumers their gradients are summed
(the multivariate chain rule). Nodes whose output needs no gradient -- nothing trainable at or
before them, and no input gradient asked for -- are skipped entirely, so a frozen prefix of a
network costs no backward work at all.

A node's module takes one input (every ordinary layer) or several (``Add``, ``Mul``, ``Cat``,
the subclasses of :class:`MultiInputModule`, whose ``forward(*xs)`` returns one array and whose
``backward(dy, input_grad)`` returns a tuple with one gradient per input). A node may also
produce several tensors (``output=["y", "indices"]``): its module's ``forward`` then returns a
tuple, and its ``backward`` receives a tuple of gradients with ``None`` for the outputs nothing
flowed back to (an index output, an unused mask).

A graph with several inputs (``Graph(input=["a", "b"])``) is called as ``g(a, b)``; its
``backward`` returns one input gradient per input and ``output_shape`` takes one sample shape
per input.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..backend import array_module
from ..functional.memory import LayerMemory
from .module import Module

__all__ = ["Graph", "MultiInputModule", "Add", "Mul", "Cat"]  # what cnnkit.nn exports from here


class Node(NamedTuple):
    name: str                 # attribute name of the module on the graph (its state-dict prefix)
    inputs: tuple[str, ...]   # tensor names consumed
    output: str               # tensor name produced (the first, when there are several)
    outputs: tuple[str, ...] = ()  # every tensor produced, when the module returns several

    @property
    def produced(self) -> tuple[str, ...]:
        return self.outputs or (self.output,)


class MultiInputModule(Module):
    """A module with several inputs: ``forward(*xs) -> y``, ``backward(dy) -> (dx0, dx1, ...)``.

    ``output_shape(*shapes)`` takes one sample's shape per input; ``onnx_export(ctx, inputs,
    prefix)`` one tensor name per input; the rules ``macs``, ``step_memory`` and
    ``counts_activation`` get a tuple of the input shapes as ``input_shape`` (``cnnkit.summary``
    calls them so). A module with several outputs returns a tuple of shapes from
    ``output_shape``, gets that tuple as ``output_shape`` in its rules, and returns a tuple of
    tensor names from ``onnx_export``.
    """

    def __call__(self, *xs):
        return self.forward(*xs)

    def macs(self, input_shape, output_shape) -> int:
        return 0  # element-wise merges are not counted


def _named_results(node: Node, result) -> dict | None:
    """What ``node``'s module (or exporter) returned, by tensor name; None when a node with several
    ``outputs`` did not get a tuple of that many."""
    if not node.outputs:
        return {node.output: result}
    if not isinstance(result, tuple) or len(result) != len(node.outputs):
        return None
    return dict(zip(node.outputs, result))


def _is_trainable(module: Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _names(value, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Graph: {what} must be non-empty tensor names, got {value!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"Graph: {what} {names} repeat a name")
    return names


class Graph(Module):
    """Modules wired as a directed acyclic graph over named tensors.

    Args:
        nodes: optional iterable of ``(name, module, inputs)`` or ``(name, module, inputs, output)``;
            ``inputs`` is a tensor name or a list of names; ``output`` defaults to ``name`` (a list
            of names for a module that returns several tensors).
        input: the name of the graph's input tensor, or a list of names for several inputs.
        outputs: the name (or names) of the output tensors; default: the last node's output.

    Shape:
        whatever the nodes make of it: ``output_shape`` propagates one sample's shape through them.

    ``batch_size`` is ``None`` (any batch size) unless the graph only works at one (an imported
    graph that moves or merges its batch axis sets it); forward then refuses other batch sizes
    with ``batch_note`` saying why.
    """

    batch_size: int | None = None
    batch_note: str = ""

    def __init__(self, nodes: Sequence = (), input: str | Sequence[str] = "input",
                 outputs: str | Sequence[str] | None = None):
        super().__init__()
        if not isinstance(input, (str, list, tuple)) or not input:
            raise ValueError(f"Graph: input must be a non-empty tensor name (or a list of names), got {input!r}")
        self.input_names: list[str] = _names(input, "input")
        self.nodes: list[Node] = []
        self.output_names: list[str] = []
        self._producers: dict[str, int] = {}
        for spec in nodes:
            if not 3 <= len(spec) <= 4:
                raise ValueError(f"Graph: a node is (name, module, inputs[, output]), got {spec!r}")
            self.add_node(*spec)
        if outputs is not None:
            self.set_outputs(outputs)

    @property
    def input_name(self) -> str:
        """The first (usually the only) input tensor."""
        return self.input_names[0]

    def _known(self, tensor: str) -> bool:
        return tensor in self.input_names or tensor in self._producers

    # -- building -----------------------------------------------------------------------------
    def add_node(self, name: str, module: Module, inputs: str | Sequence[str],
                 output: str | Sequence[str] | None = None) -> str:
        """Append a node; returns the name of its (first) output tensor (``output`` or ``name``)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"Graph.add_node: node name must be a Python identifier (no dots), got {name!r}")
        if not isinstance(module, Module):
            raise TypeError(f"Graph.add_node: node {name!r} must hold a cnnkit Module, got {type(module).__name__}")
        if name in vars(self) or hasattr(type(self), name):
            raise ValueError(f"Graph.add_node: node name {name!r} is already used (by a node or a Graph attribute)")
        inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        if not inputs:
            raise ValueError(f"Graph.add_node: node {name!r} needs at least one input tensor")
        for tensor in inputs:
            if not self._known(tensor):
                raise ValueError(
                    f"Graph.add_node: node {name!r} reads tensor {tensor!r}, which no earlier node produces "
                    f"(nodes must be added in topological order; known tensors: "
                    f"{self.input_names + list(self._producers)})"
                )
        if len(inputs) > 1 and not isinstance(module, (MultiInputModule, Graph)):
            raise ValueError(
                f"Graph.add_node: node {name!r} has {len(inputs)} inputs but {type(module).__name__} takes one; "
                "merge tensors with a MultiInputModule such as Add, Mul or Cat"
            )
        outputs = _names(name if output is None else output, f"outputs of node {name!r}")
        for tensor in outputs:
            if self._known(tensor):
                raise ValueError(f"Graph.add_node: tensor {tensor!r} (output of node {name!r}) is already defined")
        setattr(self, name, module)
        for tensor in outputs:
            self._producers[tensor] = len(self.nodes)
        self.nodes.append(Node(name, inputs, outputs[0], tuple(outputs) if len(outputs) > 1 else ()))
        return outputs[0]

    def set_outputs(self, outputs: str | Sequence[str]) -> None:
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        for tensor in outputs:
            if not self._known(tensor):
                raise ValueError(f"Graph: output tensor {tensor!r} is not produced by any node")
        if not outputs:
            raise ValueError("Graph: at least one output tensor is needed")
        self.output_names = outputs

    def remove_unused_nodes(self) -> list[str]:
        """Drop the nodes none of the outputs depends on (e.g. a softmax cut off by
        ``set_outputs``); returns their names."""
        needed = set(self._outputs())
        keep = [False] * len(self.nodes)
        for i in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[i]
            if needed.intersection(node.produced):
                keep[i] = True
                needed.update(node.inputs)
        removed = [node.name for node, kept in zip(self.nodes, keep) if not kept]
        for name in removed:
            delattr(self, name)
        self.nodes = [node for node, kept in zip(self.nodes, keep) if kept]
        self._producers = {t: i for i, node in enumerate(self.nodes) for t in node.produced}
        return removed

    def _outputs(self) -> list[str]:
        if self.output_names:
            return self.output_names
        if not self.nodes:
            return [self.input_names[0]]
        return [self.nodes[-1].output]

    def _last_uses(self, live) -> dict[str, int]:
        """For each tensor, the index of the last live node reading it (graph outputs live to the end)."""
        last = {}
        for i, node in enumerate(self.nodes):
            if node not in live:
                continue
            for tensor in node.inputs:
                last[tensor] = i
        for tensor in self._outputs():
            last[tensor] = len(self.nodes)
        return last

    def _live_nodes(self) -> list[Node]:
        """The nodes the current outputs depend on, in order (a head not asked for does not run)."""
        wanted = set(self._outputs())
        live = []
        for node in reversed(self.nodes):
            if wanted.intersection(node.produced):
                live.append(node)
                wanted.update(node.inputs)
        return live[::-1]

    # -- forward / backward -------------------------------------------------------------------
    def __call__(self, *xs):
        return self.forward(*xs)

    def forward(self, *xs):
        if len(xs) != len(self.input_names):
            raise ValueError(f"Graph: expects {len(self.input_names)} input(s) {self.input_names}, got {len(xs)}")
        if self.batch_size is not None and xs and np.ndim(xs[0]) and np.shape(xs[0])[0] != self.batch_size:
            raise ValueError(f"Graph: this graph runs only at batch size {self.batch_size}"
                             f"{f' ({self.batch_note})' if self.batch_note else ''}; got a batch of {np.shape(xs[0])[0]}")
        live = set(self._live_nodes())
        values = dict(zip(self.input_names, xs))
        last_use = self._last_uses(live)
        for i, node in enumerate(self.nodes):
            if node not in live:
                continue
            module = getattr(self, node.name)
            args = [values[t] for t in node.inputs]
            result = module(*args) if len(args) > 1 else module(args[0])
            produced = _named_results(node, result)
            if produced is None:
                raise ValueError(f"Graph node {node.name!r}: {type(module).__name__} must return "
                                 f"{len(node.outputs)} arrays for outputs {list(node.outputs)}")
            values.update(produced)
            for tensor in node.inputs:  # free what no later node reads
                if last_use.get(tensor) == i:
                    values.pop(tensor, None)
        self._save([(x.shape, x.dtype) for x in xs])
        outputs = self._outputs()
        return values[outputs[0]] if len(outputs) == 1 else tuple(values[t] for t in outputs)

    def _needs_grad(self, input_grad: bool) -> dict[str, bool]:
        """Whether each tensor's gradient is needed: something trainable (or an input) lies behind it."""
        needs = {name: bool(input_grad) for name in self.input_names}
        for node in self.nodes:
            wanted = _is_trainable(getattr(self, node.name)) or any(needs[t] for t in node.inputs)
            for tensor in node.produced:
                needs[tensor] = wanted
        return needs

    def backward(self, dy, input_grad: bool = True):
        inputs = self._restore()
        outputs = self._outputs()
        if len(outputs) == 1:
            dys = (dy,)
        elif isinstance(dy, (tuple, list)) and len(dy) == len(outputs):
            dys = tuple(dy)
        else:
            raise ValueError(f"{type(self).__name__}.backward: the forward returned {len(outputs)} outputs "
                             f"({', '.join(outputs)}); pass a tuple of {len(outputs)} gradients in that order "
                             "(None for an output that gets no gradient)")
        grads: dict[str, object] = {}
        for tensor, g in zip(outputs, dys):
            if g is not None:
                _accumulate(grads, tensor, g)
        needs = self._needs_grad(input_grad)
        for node in reversed(self._live_nodes()):
            module = getattr(self, node.name)
            if node.outputs:
                g = tuple(grads.pop(t, None) for t in node.outputs)
                flowing = any(part is not None for part in g)
            else:
                g = grads.pop(node.output, None)
                flowing = g is not None
            if not flowing or not needs[node.output]:
                continue  # nothing flows here, or nothing behind this node wants a gradient
            want_inputs = any(needs[t] for t in node.inputs)
            result = module.backward(g, input_grad=want_inputs)
            if not want_inputs:
                continue
            parts = (result,) if len(node.inputs) == 1 else tuple(result)
            for tensor, part in zip(node.inputs, parts):
                if part is not None and needs[tensor]:
                    _accumulate(grads, tensor, part)
        if not input_grad:
            return None
        xp = array_module(next((g for g in dys if g is not None), np.empty(0)))
        dxs = []
        for name, (shape, dtype) in zip(self.input_names, inputs):
            dx = grads.get(name)
            dxs.append(xp.zeros(shape, dtype=dtype) if dx is None else dx)  # None: no output depends on it
        return dxs[0] if len(dxs) == 1 else tuple(dxs)

    def output_shape(self, *input_shapes):
        if len(input_shapes) != len(self.input_names):
            raise ValueError(f"Graph.output_shape: expects {len(self.input_names)} input shape(s) "
                             f"{self.input_names}, got {len(input_shapes)}")
        # Shapes are passed on as the children return them (cnnkit.summary tags each with the
        # array it stands for); every node is checked, also heads the current outputs skip.
        shapes = dict(zip(self.input_names, input_shapes))
        for node in self.nodes:
            module = getattr(self, node.name)
            args = [shapes[t] for t in node.inputs]
            try:
                result = module.output_shape(*args)
            except ValueError as exc:
                raise ValueError(f"Graph node {node.name!r} ({type(module).__name__}): {exc}") from exc
            if node.outputs:
                shapes.update(zip(node.outputs, result))
            else:
                shapes[node.output] = result
        outputs = self._outputs()
        return shapes[outputs[0]] if len(outputs) == 1 else tuple(shapes[t] for t in outputs)

    def onnx_export(self, ctx, x, prefix):
        """The live nodes in order; a node with several outputs gets a tuple of names from its
        module. Several graph outputs give a tuple of names."""
        if len(self.input_names) != 1:
            raise NotImplementedError(f"ONNX export: a Graph with several inputs {self.input_names} "
                                      f"({prefix or 'the model'!r}) is not supported")
        names = {self.input_name: x}
        for node in self._live_nodes():
            child = getattr(self, node.name)
            args = [names[t] for t in node.inputs]
            child_prefix = ctx.join(prefix, node.name)
            if len(args) > 1:
                result = ctx.export_multi(child, args, child_prefix)
            else:
                result = ctx.export(child, args[0], child_prefix)
            produced = _named_results(node, result)
            if produced is None:
                raise NotImplementedError(f"ONNX export: node {child_prefix!r} ({type(child).__name__}) "
                                          f"has outputs {list(node.outputs)}, but its exporter gave {result!r}")
            names.update(produced)
        outputs = self._outputs()
        return names[outputs[0]] if len(outputs) == 1 else tuple(names[t] for t in outputs)

    def extra_repr(self) -> str:
        inputs = repr(self.input_name) if len(self.input_names) == 1 else repr(self.input_names)
        return f"input={inputs}, outputs={self._outputs()}"

    def __repr__(self) -> str:
        lines = [f"Graph({self.extra_repr()}"]
        for node in self.nodes:
            body = repr(getattr(self, node.name)).replace("\n", "\n  ")
            produced = f" -> {', '.join(node.produced)}" if node.outputs else ""
            lines.append(f"  ({node.name}): {body}  <- {', '.join(node.inputs)}{produced}")
        return "\n".join(lines) + "\n)"


def _accumulate(grads: dict, tensor: str, g) -> None:
    """Sum gradients arriving at a tensor from its several consumers (fan-out)."""
    if tensor in grads:
        grads[tensor] = grads[tensor] + g
    else:
        grads[tensor] = g


# ---- merge layers ---------------------------------------------------------------------------------
def unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting expanded, so it gets ``shape`` back."""
    shape = tuple(shape)
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)


def _broadcast_shapes(layer: str, shapes) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise ValueError(f"{layer}: input shapes {[tuple(s) for s in shapes]} do not broadcast together") from None


class Add(MultiInputModule):
    """Element-wise sum of any number of inputs, with NumPy broadcasting (ONNX ``Add``/``Sum``).

    Shape:
        inputs broadcast together -> output of the broadcast shape
    """

    def forward(self, *xs):
        if not xs:
            raise ValueError("Add needs at least one input")
        shape = _broadcast_shapes("Add", [x.shape for x in xs])
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        self._save([x.shape for x in xs])
        return y if y.shape == shape else array_module(y).broadcast_to(y, shape).copy()

    def backward(self, dy, input_grad: bool = True):
        shapes = self._restore()
        if not input_grad:
            return None
        return tuple(unbroadcast(dy, s) for s in shapes)

    def output_shape(self, *shapes):
        return _broadcast_shapes("Add", shapes)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the input shapes are cached

    def onnx_export(self, ctx, inputs, prefix):
        op = "Sum" if len(inputs) > 2 else "Add"
        return ctx.node(op, inputs, prefix or op, shape=self.output_shape(*[ctx.shape(a) for a in inputs]))


class Mul(MultiInputModule):
    """Element-wise product of two inputs, with broadcasting (ONNX ``Mul``); ``dx_a = dy * x_b``.

    Shape:
        inputs broadcast together -> output of the broadcast shape
    """

    def forward(self, a, b):
        _broadcast_shapes("Mul", [a.shape, b.shape])
        self._save((a, b))
        return a * b

    def backward(self, dy, input_grad: bool = True):
        a, b = self._restore()
        if not input_grad:
            return None
        return unbroadcast(dy * b, a.shape), unbroadcast(dy * a, b.shape)

    def output_shape(self, a, b):
        return _broadcast_shapes("Mul", [a, b])

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory(keeps_input=True)  # both inputs are cached (each the other's gradient)

    def onnx_export(self, ctx, inputs, prefix):
        return ctx.node("Mul", inputs, prefix or "Mul", shape=self.output_shape(*[ctx.shape(a) for a in inputs]))


class Cat(MultiInputModule):
    """Concatenate inputs along ``dim`` (default 1, channels), as ``torch.cat`` (ONNX ``Concat``).

    ``dim`` counts the batch axis (0), as ``torch.cat``; ``output_shape`` works per sample.

    Shape:
        inputs agree on every axis but ``dim`` -> output with the sizes along ``dim`` summed
    """

    def __init__(self, dim: int = 1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"Cat: dim must be an int, got {dim!r}")
        self.dim = int(dim)

    def _axis(self, ndim: int) -> int:
        axis = self.dim + ndim if self.dim < 0 else self.dim
        if not 0 <= axis < ndim:
            raise ValueError(f"Cat: dim={self.dim} is out of range for {ndim}-D inputs")
        return axis

    def forward(self, *xs):
        axis = self._axis(xs[0].ndim)
        rest = {tuple(s for i, s in enumerate(x.shape) if i != axis) for x in xs}
        if len(rest) > 1 or len({x.ndim for x in xs}) > 1:
            raise ValueError(f"Cat(dim={self.dim}): inputs differ outside dim: {[tuple(x.shape) for x in xs]}")
        self._save((axis, [x.shape[axis] for x in xs]))
        return array_module(xs[0]).concatenate(xs, axis=axis)

    def backward(self, dy, input_grad: bool = True):
        axis, widths = self._restore()
        if not input_grad:
            return None
        bounds = np.cumsum(widths)[:-1]
        return tuple(array_module(dy).split(dy, bounds, axis=axis))

    def output_shape(self, *shapes):
        axis = self._axis(len(shapes[0]) + 1) - 1
        if axis < 0:
            raise ValueError(f"Cat(dim={self.dim}) joins along the batch axis; no per-sample shape")
        rest = {tuple(s for i, s in enumerate(shape) if i != axis) for shape in shapes}
        if len(rest) > 1:
            raise ValueError(f"Cat(dim={self.dim}): inputs differ outside dim: {list(shapes)}")
        out = list(shapes[0])
        out[axis] = sum(s[axis] for s in shapes)
        return tuple(out)

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LayerMemory()  # only the widths are cached

    def onnx_export(self, ctx, inputs, prefix):
        return ctx.node("Concat", inputs, prefix or "Concat", axis=self.dim,
                        shape=self.output_shape(*[ctx.shape(a) for a in inputs]))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
