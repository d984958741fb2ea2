"""Normalisation layers: ``BatchNorm1d``, ``BatchNorm2d`` and ``LocalResponseNorm`` (PyTorch's names).

BatchNorm keeps PyTorch's parameters and buffers (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``) so state dicts move between the two unchanged.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np

from ..backend import DEFAULT_DTYPE
from ..functional.memory import ArraySpec, LayerMemory
from ..functional.norm import BATCH_NORM, LOCAL_RESPONSE_NORM
from .module import Module, Parameter
from .validation import check_input, check_parameter_size

__all__ = ["BatchNorm1d", "BatchNorm2d", "LocalResponseNorm"]  # what cnnkit.nn exports from here


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


class _BatchNorm(Module):
    """Shared body of ``BatchNorm1d`` and ``BatchNorm2d``; subclasses set the accepted ranks."""

    _accepted_ndims: tuple[int, ...] = ()
    _layouts: str = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, *, dtype=DEFAULT_DTYPE,
                 algorithm: str = "auto"):
        super().__init__()
        name = type(self).__name__
        self.algorithm = BATCH_NORM.check_algorithm(algorithm, name)
        self.last_algorithm = None
        if not isinstance(num_features, Integral) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive int, got {num_features!r}")
        if not _is_number(eps) or eps <= 0:
            raise ValueError(f"{name}: eps must be a positive number, got {eps!r}")
        if momentum is not None and (not _is_number(momentum) or not 0 <= momentum <= 1):
            raise ValueError(
                f"{name}: momentum must be a number in [0, 1] or None (cumulative average), got {momentum!r}"
            )
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(f"{name}: dtype must be a floating type, got {dtype}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        check_parameter_size(name, f"num_features={num_features} (weight, bias, running mean and variance)",
                             (2 * self.affine + 2 * self.track_running_stats, num_features))

        self.weight = Parameter(np.ones(num_features, dtype)) if affine else None
        self.bias = Parameter(np.zeros(num_features, dtype)) if affine else None
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            # As in PyTorch: no buffers, so nothing in the state dict, batch statistics always.
            self.running_mean = None
            self.running_var = None
            self.num_batches_tracked = None

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def _param_dtype(self):
        """The dtype inputs must have (None when the layer holds no arrays at all)."""
        if self.weight is not None:
            return self.weight.dtype
        if self.running_mean is not None:
            return self.running_mean.dtype
        return None

    def _check(self, x) -> None:
        name = type(self).__name__
        ndim = getattr(x, "ndim", None)
        if ndim is not None and ndim not in self._accepted_ndims:
            raise ValueError(f"{name} expects a {self._layouts} input, got shape {tuple(x.shape)}")
        check_input(x, name, ndim, self.num_features, self._param_dtype())

    def forward(self, x):
        self._check(x)
        use_batch_stats = self.training or not self.track_running_stats
        update_running_stats = self.training and self.track_running_stats
        factor = 0.0
        if update_running_stats:
            if x.size // x.shape[1] == 1:  # (an empty batch is fine, as in PyTorch)
                # Fail before touching num_batches_tracked, so a rejected batch leaves no trace.
                raise ValueError(
                    f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}"
                )
            self.num_batches_tracked += 1
            # momentum=None: cumulative moving average, the k-th batch weighs 1/k.
            factor = 1.0 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        # A container may fuse the ReLU that follows (nn.containers.fuse_norm_relu): the op then
        # applies it, and its backward the ReLU's mask.
        relu = vars(self).pop("fuse_relu_once", False)
        self.relu_fused = relu
        y, cache = self._run(
            BATCH_NORM, x,
            None if self.weight is None else self.weight.data,
            None if self.bias is None else self.bias.data,
            self.running_mean if (update_running_stats or not use_batch_stats) else None,
            self.running_var if (update_running_stats or not use_batch_stats) else None,
            training=use_batch_stats, momentum=factor, eps=self.eps, **({"relu": True} if relu else {}),
        )
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        dx, dweight, dbias = BATCH_NORM.backward(
            dy, cache, need_dx=input_grad,
            need_dweight=self._wants_grad("weight"),
            need_dbias=self._wants_grad("bias"),
        )
        self._accumulate_grads(weight=dweight, bias=dbias)
        return dx

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) + 1 not in self._accepted_ndims or shape[0] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expects one sample of shape "
                f"{self._sample_layout()}, got {shape}"
            )
        return shape

    def macs(self, input_shape, output_shape) -> int:
        return 0  # normalisation is not counted, as in the papers' tables

    def step_memory(self, input_shape, output_shape, batch_size, dtype, relu: bool = False) -> LayerMemory:
        """``relu``: with the ReLU after it fused in (see ``nn.containers.fuse_norm_relu``)."""
        x = ArraySpec((batch_size,) + tuple(input_shape), dtype)
        stats = ArraySpec((self.num_features,), dtype)
        affine = stats if self.affine else None
        batch_stats = self.training or not self.track_running_stats
        return BATCH_NORM.memory(self.algorithm, x, affine, affine, stats, stats, batch_stats,
                                 **({"relu": True} if relu else {}))

    def onnx_export(self, ctx, x, prefix):
        if not self.track_running_stats:
            raise NotImplementedError(
                f"ONNX export: {type(self).__name__} {prefix!r} has no running statistics "
                "(track_running_stats=False), so its inference output depends on the batch"
            )
        c = self.num_features
        scale = self.weight.data if self.weight is not None else np.ones(c)
        bias = self.bias.data if self.bias is not None else np.zeros(c)
        inputs = [x] + [ctx.constant(ctx.join(prefix, n), v) for n, v in
                        (("weight", scale), ("bias", bias), ("running_mean", self.running_mean),
                         ("running_var", self.running_var))]
        momentum = 0.9 if self.momentum is None else 1.0 - self.momentum
        return ctx.node("BatchNormalization", inputs, ctx.join(prefix, "BatchNormalization"), epsilon=self.eps,
                        momentum=momentum)

    def _sample_layout(self) -> str:
        return " or ".join(
            {2: f"({self.num_features},)", 3: f"({self.num_features}, L)", 4: f"({self.num_features}, H, W)"}[n]
            for n in self._accepted_ndims
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of ``(N, C)`` features or ``(N, C, L)`` sequences, per channel ``C``.

    Training mode normalises with the batch mean and biased variance over ``N`` (and ``L``) and
    updates ``running_mean``/``running_var`` (unbiased) with ``momentum``; eval mode uses them.

    Shape:
        input (N, C) or (N, C, L) -> output: same
    """

    _accepted_ndims = (2, 3)
    _layouts = "2-D (N, C) or 3-D (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of ``(N, C, H, W)`` images, statistics per channel over ``N, H, W``.

    Shape:
        input (N, C, H, W) -> output: same
    """

    _accepted_ndims = (4,)
    _layouts = "4-D (N, C, H, W)"


class LocalResponseNorm(Module):
    """Local response normalisation across channels (AlexNet), PyTorch's formula::

        y_c = x_c / (k + alpha/size * sum_{c' = c - size//2}^{c + (size-1)//2} x_c'^2) ** beta

    Shape:
        input (N, C, *) with at least 3 axes -> output: same
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, *,
                 algorithm: str = "auto"):
        super().__init__()
        self.algorithm = LOCAL_RESPONSE_NORM.check_algorithm(algorithm, "LocalResponseNorm")
        self.last_algorithm = None
        if not isinstance(size, Integral) or isinstance(size, bool) or size < 1:
            raise ValueError(f"LocalResponseNorm: size must be a positive int, got {size!r}")
        for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
            if not _is_number(value):
                raise ValueError(f"LocalResponseNorm: {name} must be a number, got {value!r}")
        self.size = int(size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)

    def forward(self, x):
        ndim = getattr(x, "ndim", None)
        if ndim is not None and ndim < 3:
            raise ValueError(
                f"LocalResponseNorm expects an input (N, C, *) with at least 3 axes, e.g. (N, C, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        check_input(x, "LocalResponseNorm", ndim)
        y, cache = self._run(LOCAL_RESPONSE_NORM, x, self.size, self.alpha, self.beta, self.k)
        self._save(cache)
        return y

    def backward(self, dy, input_grad: bool = True):
        cache = self._restore()
        return LOCAL_RESPONSE_NORM.backward(dy, cache, need_dx=input_grad)

    def macs(self, input_shape, output_shape) -> int:
        return 0  # normalisation is not counted, as in the papers' tables

    def step_memory(self, input_shape, output_shape, batch_size, dtype) -> LayerMemory:
        return LOCAL_RESPONSE_NORM.memory(self.algorithm, ArraySpec((batch_size,) + tuple(input_shape), dtype),
                                          self.size, self.alpha, self.beta, self.k)

    def onnx_export(self, ctx, x, prefix):
        if self.size % 2 == 0:
            raise NotImplementedError(f"ONNX export: LRN {prefix!r} with an even size {self.size} places its "
                                      "window differently in ONNX than in PyTorch/cnnkit")
        return ctx.node("LRN", [x], ctx.join(prefix, "LRN"), size=self.size, alpha=self.alpha, beta=self.beta,
                        bias=self.k)

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) < 2:
            raise ValueError(f"LocalResponseNorm expects one sample of shape (C, *) such as (C, H, W), got {shape}")
        return shape

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
