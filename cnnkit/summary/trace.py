"""Walking a model on shapes: every module's ``output_shape`` call recorded, with the array each
shape stands for (see the package docstring).

Modules with several inputs (``Add``, ``Cat``, ``MatMul``... in a ``Graph``) are called as
``output_shape(*shapes)``, each shape tagged with its own array; a module with several outputs
(``Split``, a ``MaxPool`` with indices) returns a tuple of shapes, each output a new array (or
the input itself, for views). Such a call is recorded with ``input_shape`` a tuple of the input
shapes and ``output_shape`` a tuple of the output shapes, which is what the layers' rules then
receive; ``in_tensors``/``out_tensors`` hold one array id per input/output.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..functional.memory import numel
from ..nn.module import Module
from .rules import memory_of


class ShapeError(ValueError):
    """A module cannot take the shape it is given; ``layer`` is its dotted name in the model."""

    def __init__(self, layer: str, type_name: str, input_shape: tuple, cause: Exception):
        self.layer = layer
        self.input_shape = tuple(input_shape)
        super().__init__(f"{layer} ({type_name}) with input {self.input_shape}: {cause}")


class _Shape(tuple):
    """A shape tagged with the id of the array it describes."""

    tensor: int


def _tag(shape, tensor: int) -> _Shape:
    out = _Shape(int(s) for s in shape)
    out.tensor = tensor
    return out


def is_multi(shape) -> bool:
    """Whether ``shape`` is several shapes (the outputs of a multi-output module) rather than one."""
    return isinstance(shape, (tuple, list)) and len(shape) > 0 and all(isinstance(s, (tuple, list)) for s in shape)


def shape_list(shape) -> list[tuple]:
    """The shapes in a recorded ``input_shape``/``output_shape``: one, or several."""
    return [tuple(s) for s in shape] if is_multi(shape) else [tuple(shape)]


def _plain(shapes: list) -> tuple:
    """What a rule is given: the shape itself for one, a tuple of shapes for several."""
    return shapes[0] if len(shapes) == 1 else tuple(shapes)


@dataclass
class _Call:
    """One recorded ``output_shape`` call: a module applied to arrays during forward."""

    name: str
    module: Module
    input_shape: tuple           # one shape, or a tuple of shapes (several inputs)
    output_shape: tuple | None = None  # one shape, or a tuple of shapes (several outputs)
    in_tensors: tuple = (0,)
    out_tensors: tuple = (0,)
    order: int = 0  # position among leaf calls (forward order)
    last_child_out: int | None = None

    @property
    def in_tensor(self) -> int:
        return self.in_tensors[0]

    @property
    def out_tensor(self) -> int:
        return self.out_tensors[0]


def is_leaf(module: Module) -> bool:
    return next(module.children(), None) is None


def trace(model: Module, input_shape: tuple, batch: int, dtype):
    """Run ``model.output_shape`` with every module's ``output_shape`` recording its calls."""
    named = []
    seen = set()
    for name, module in model.named_modules():
        if id(module) not in seen:
            seen.add(id(module))
            named.append((name, module))
    calls: list[_Call] = []
    leaf_calls: list[_Call] = []
    tensor_size: dict[int, int] = {0: numel(input_shape)}  # tensor id -> elements per sample
    stack: list[_Call] = []
    counter = [0]

    def new_tensor(shape) -> int:
        counter[0] += 1
        tensor_size[counter[0]] = numel(shape)
        return counter[0]

    def tensor_of(shape) -> int:
        if isinstance(shape, _Shape):
            return shape.tensor
        if stack:  # a container passed a plain tuple: its input, or its last child's output
            parent = stack[-1]
            return parent.last_child_out if parent.last_child_out is not None else parent.in_tensor
        return 0

    def wrap(name: str, module: Module):
        bound = module.output_shape
        leaf = is_leaf(module)

        def traced(*shapes):
            in_tensors = tuple(tensor_of(s) for s in shapes)
            inputs = [tuple(int(d) for d in s) for s in shapes]
            call = _Call(name or "(model)", module, _plain(inputs), in_tensors=in_tensors)
            stack.append(call)
            try:
                out = bound(*[_tag(s, t) for s, t in zip(shapes, in_tensors)])
            except ShapeError:
                raise
            except (ValueError, TypeError, IndexError) as err:
                raise ShapeError(name or "(model)", type(module).__name__, call.input_shape, err) from err
            finally:
                stack.pop()
            multi = is_multi(out)
            outs = list(out) if multi else [out]
            call.output_shape = tuple(tuple(int(d) for d in s) for s in outs) if multi else tuple(int(d) for d in out)
            if leaf:
                memory = memory_of(module, call.input_shape, call.output_shape, batch, dtype)
                # a view (Flatten, Split's pieces) is its input's array; anything else a new one
                call.out_tensors = tuple(in_tensors[0] if memory.aliases_input else new_tensor(s) for s in outs)
                call.order = len(leaf_calls)
                leaf_calls.append(call)
            else:  # a container passes its children's arrays on, or builds a new one (a sum, a concatenation)
                call.out_tensors = tuple(s.tensor if isinstance(s, _Shape) else new_tensor(s) for s in outs)
            if stack:
                stack[-1].last_child_out = call.out_tensors[0]
            calls.append(call)
            tagged = [_tag(s, t) for s, t in zip(outs, call.out_tensors)]
            return tuple(tagged) if multi else tagged[0]

        return traced

    for name, module in named:
        module.output_shape = wrap(name, module)  # an instance attribute shadows the method
    try:
        model.output_shape(_tag(input_shape, 0))
    finally:
        for _, module in named:
            vars(module).pop("output_shape", None)
    return named, calls, leaf_calls, tensor_size
