"""Walking a model on shapes: every module's ``output_shape`` call recorded, with the array each
shape stands for (see the package docstring)."""
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


@dataclass
class _Call:
    """One recorded ``output_shape`` call: a module applied to an array during forward."""

    name: str
    module: Module
    input_shape: tuple
    output_shape: tuple | None = None
    in_tensor: int = 0
    out_tensor: int = 0
    order: int = 0  # position among leaf calls (forward order)
    last_child_out: int | None = None


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

    def wrap(name: str, module: Module):
        bound = module.output_shape
        leaf = is_leaf(module)

        def traced(shape):
            if isinstance(shape, _Shape):
                in_tensor = shape.tensor
            elif stack:  # a container passed a plain tuple: its input, or its last child's output
                parent = stack[-1]
                in_tensor = parent.last_child_out if parent.last_child_out is not None else parent.in_tensor
            else:
                in_tensor = 0
            call = _Call(name or "(model)", module, tuple(int(s) for s in shape), in_tensor=in_tensor)
            stack.append(call)
            try:
                out = bound(_tag(shape, in_tensor))
            except ShapeError:
                raise
            except (ValueError, TypeError, IndexError) as err:
                raise ShapeError(name or "(model)", type(module).__name__, tuple(shape), err) from err
            finally:
                stack.pop()
            call.output_shape = tuple(int(s) for s in out)
            if leaf:
                memory = memory_of(module, call.input_shape, call.output_shape, batch, dtype)
                call.out_tensor = in_tensor if memory.aliases_input else new_tensor(out)
                call.order = len(leaf_calls)
                leaf_calls.append(call)
            elif isinstance(out, _Shape):
                call.out_tensor = out.tensor
            else:  # a container that builds a new array (a residual sum, a concatenation)
                call.out_tensor = new_tensor(out)
            if stack:
                stack[-1].last_child_out = call.out_tensor
            calls.append(call)
            return _tag(out, call.out_tensor)

        return traced

    for name, module in named:
        module.output_shape = wrap(name, module)  # an instance attribute shadows the method
    try:
        model.output_shape(_tag(input_shape, 0))
    finally:
        for _, module in named:
            vars(module).pop("output_shape", None)
    return named, calls, leaf_calls, tensor_size
