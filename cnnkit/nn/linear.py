"""``Linear``: the fully connected layer (weight layout ``(out_features, in_features)`` as PyTorch)."""
from __future__ import annotations

import numpy as np

from ..backend import DEFAULT_DTYPE
from ..functional.linear import LINEAR
from ..functional.memory import ArraySpec, LayerMemory
from .init import default_weight_and_bias
from .module import Module, Parameter
from .validation import check_input, check_parameter_size

__all__ = ["Linear"]  # what cnnkit.nn exports from here


class Linear(Module):
    """``y = x W^T + b``.

    Shape:
        input (N, in_features) -> output (N, out_features)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype=DEFAULT_DTYPE,
                 generator: np.random.Generator | None = None, algorithm: str = "auto"):
        super().__init__()
        self.algorithm = LINEAR.check_algorithm(algorithm, "Linear")
        self.last_algorithm = None
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Linear: {name} must be a positive int, got {value!r}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        check_parameter_size("Linear", "weight", (self.out_features, self.in_features))
        if bias:
            check_parameter_size("Linear", "bias", (self.out_features,))
        weight, b = default_weight_and_bias((out_features, in_features), out_features if bias else 0, dtype, generator)
        self.weight = Parameter(weight)
        self.bias = Parameter(b) if bias else None

    def forward(self, x):
        check_input(x, "Linear", 2, self.in_features, self.weight.dtype)
        y, cache = self._run(LINEAR, x, self.weight.data, None if self.bias is None else self.bias.data)
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        dx, dweight, dbias = LINEAR.backward(
            dy, cache, need_dx=input_grad, need_dweight=self._wants_grad("weight"),
            need_dbias=self._wants_grad("bias"),
        )
        self._accumulate_grads(weight=dweight, bias=dbias)
        return dx

    def output_shape(self, input_shape):
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"Linear expects input shape ({self.in_features},), got {tuple(input_shape)}")
        return (self.out_features,)

    def macs(self, input_shape, output_shape) -> int:
        return self.in_features * self.out_features

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        bias = None if self.bias is None else ArraySpec(self.bias.shape, dtype)
        return LINEAR.memory(self.algorithm, ArraySpec((batch_size,) + tuple(input_shape), dtype),
                             ArraySpec(self.weight.shape, dtype), bias)

    def onnx_export(self, ctx, x, prefix):
        inputs = [x, ctx.constant(ctx.join(prefix, "weight"), self.weight.data)]
        if self.bias is not None:
            inputs.append(ctx.constant(ctx.join(prefix, "bias"), self.bias.data))
        elif ctx.opset < 11:  # Gemm's C became optional in opset 11
            inputs.append(ctx.constant(ctx.join(prefix, "bias"), np.zeros(self.out_features, self.weight.dtype)))
        return ctx.node("Gemm", inputs, ctx.join(prefix, "Gemm"), transB=1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
