"""Static accounting of a model: shapes, parameters, multiply-adds and memory, without running it.

    >>> s = cnnkit.summary(cnnkit.models.vgg16(), (3, 224, 224), batch_size=32)
    >>> print(s)                     # a table with human units
    >>> s.rows[1]["output_shape"], s.total_params, s.total_macs
    >>> s.to_dict()                  # JSON-ready

How the tree is walked
----------------------
``summary`` calls ``model.output_shape(input_shape)`` once, with every module's
``output_shape`` temporarily wrapped so that each call is recorded: which module, with which
input shape, giving which output shape. Containers (``Sequential``, ``Residual``, ``Concat``) and
custom blocks (ResNet blocks, GoogLeNet) compute their output shape by calling their children's
``output_shape`` in the order forward runs them, so the record is exactly the forward pass on
shapes. A custom block only has to follow that rule -- its ``output_shape`` calls the children's
``output_shape`` in forward order -- to be fully walkable; nothing else to implement. (A module
whose ``output_shape`` does not consult its children still gets its own row; its children are
then reported without shapes.)

The wrapper also knows *which array* each shape stands for: a shape passed on unchanged refers
to the same array (a block hands its input to both the residual path and the shortcut), a
layer's output is a new array, and a layer whose memory rule says so (Flatten, Identity) returns
a view of its input. That identity is what makes the training-memory estimate count an array
kept by two caches once.

A geometry error is re-raised by the innermost module that failed, naming it by its dotted name
(``features.0 (Conv2d) with input (3, 224, 224): Conv2d: width 224 with kernel 11 ...``), as a
:class:`ShapeError` (a ``ValueError``).

Per-layer rules
---------------
A registry maps a layer type to a :class:`LayerRule` (looked up along the class's MRO):
``macs(module, in_shape, out_shape)`` -- multiply-adds for one sample; ``memory(module,
in_shape, out_shape, batch, itemsize)`` -- a :class:`LayerMemory` that mirrors what the layer's
kernel caches for backward (read from ``cnnkit.functional``: convolution keeps its im2col
columns, not its input; max pooling keeps the argmax switches; BatchNorm keeps ``xhat``; ReLU
keeps its output; dropout a boolean mask; Linear its input); ``counts_activation`` -- whether the
output counts as a new activation in the notes' forward-memory convention (ReLU and dropout run
in place there). Add rules for new layers with :func:`register_layer`.

MACs count the multiply-adds of convolutions and fully connected layers, as the papers' FLOP
columns do; pooling, normalisation and activations are not counted (their cost is a few percent
and is memory-bound anyway).

Training memory
---------------
The estimate simulates one training step on the recorded layer sequence: forward keeps each
layer's cache, backward frees them in reverse while parameter gradients appear, the optimizer
then updates with its state (SGD none, momentum one copy of the parameters, Adam two). The peak
of that timeline, with the parameters and the input batch, is ``training_memory(...)["total"]``.
``tests/test_summary.py`` checks it against ``tracemalloc`` on a real training step.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .functional.conv import KEEP_COLUMNS_MAX_BYTES, planned_algorithm
from .functional.conv_flat import flat_geometry
from .nn.activation import Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .nn.conv import Conv2d, LocallyConnected2d
from .nn.dropout import Dropout
from .nn.flatten import Flatten
from .nn.linear import Linear
from .nn.module import Module, Parameter
from .nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from .nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d


class ShapeError(ValueError):
    """A module cannot take the shape it is given; ``layer`` is its dotted name in the model."""

    def __init__(self, layer: str, type_name: str, input_shape: tuple, cause: Exception):
        self.layer = layer
        self.input_shape = tuple(input_shape)
        super().__init__(f"{layer} ({type_name}) with input {self.input_shape}: {cause}")


# -- per-layer rules ------------------------------------------------------------------------------
@dataclass
class LayerMemory:
    """Bytes one layer holds during a training step, for a whole batch.

    ``keeps_input``/``keeps_output``: the cache references the input/output array itself (no copy);
    ``aliases_input``: the output *is* the input (a view: Flatten, Identity);
    ``saved``: new arrays the cache holds until backward (im2col columns, switches, masks);
    ``forward_temp``/``backward_temp``: short-lived arrays at the layer's forward/backward peak,
    beyond its input and output (forward) or ``dy`` and ``dx`` (backward);
    ``scratch``: bytes per name of the shared scratch buffers the kernel uses
    (:func:`cnnkit.functional.workspace.scratch`): they outlive the step, and each name holds as
    much as its largest request, so the model counts the maximum per name once, all step long.
    """

    keeps_input: bool = False
    keeps_output: bool = False
    aliases_input: bool = False
    saved: int = 0
    forward_temp: int = 0
    backward_temp: int = 0
    scratch: dict = field(default_factory=dict)


def _no_macs(module, in_shape, out_shape) -> int:
    return 0


def _keeps_input(module, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    """Fallback for layers without a rule: assume the cache holds the input."""
    return LayerMemory(keeps_input=True)


@dataclass(frozen=True)
class LayerRule:
    macs: Callable = _no_macs
    memory: Callable = _keeps_input
    counts_activation: bool | Callable = True  # or a function (module, in_shape, out_shape) -> bool

    def new_activation(self, module, in_shape, out_shape) -> bool:
        if callable(self.counts_activation):
            return bool(self.counts_activation(module, in_shape, out_shape))
        return self.counts_activation


_RULES: dict[type, LayerRule] = {}


def register_layer(*types: type, macs: Callable | None = None, memory: Callable | None = None,
                   counts_activation: bool | Callable = True) -> None:
    """Give layer ``types`` their MAC and memory rules (see the module docstring for signatures)."""
    rule = LayerRule(macs or _no_macs, memory or _keeps_input, counts_activation)
    for t in types:
        _RULES[t] = rule


def rule_for(module: Module) -> LayerRule:
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return LayerRule()


def _numel(shape) -> int:
    return int(math.prod(shape))


def _conv_macs(m, in_shape, out_shape) -> int:
    kh, kw = m.kernel_size
    return _numel(out_shape) * (m.in_channels // getattr(m, "groups", 1)) * kh * kw


def _linear_macs(m, in_shape, out_shape) -> int:
    return m.in_features * m.out_features


def _conv_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    algorithm = getattr(m, "algorithm", "im2col")
    if algorithm != "im2col":
        stride, padding, dilation = (tuple(getattr(m, a)) for a in ("stride", "padding", "dilation"))
        algorithm = planned_algorithm(algorithm, (batch,) + tuple(in_shape), m.weight.shape, stride, padding,
                                      dilation, getattr(m, "groups", 1))
    if algorithm == "flat":
        return _flat_conv_memory(m, in_shape, batch, itemsize)
    # functional.conv: the cache holds the im2col columns (N, C*kh*kw, P); a 1x1 unpadded conv
    # uses the input itself (a view at stride 1, a subsampled copy otherwise) as its columns.
    c, h, w = in_shape
    f, oh, ow = out_shape
    kh, kw = m.kernel_size
    ph, pw = m.padding
    groups = getattr(m, "groups", 1)
    p = oh * ow
    k = (c // groups) * kh * kw
    pointwise = (kh, kw) == (1, 1) and (ph, pw) == (0, 0)
    cols = batch * c * kh * kw * p * itemsize
    padded = batch * c * (h + 2 * ph) * (w + 2 * pw) * itemsize if (ph or pw) else 0
    weight = m.weight.size * itemsize
    # Backward: dcols (the size of the columns) then col2im into dx; dweight is either one
    # (Fg, Kg) product per image summed over the batch or, with few positions, one GEMM on
    # transposed copies of dy and the columns; plus the gradient's copy into .grad.
    if (f // groups) <= p:
        dweight_work = batch * f * k * itemsize
    else:
        dweight_work = cols + batch * f * p * itemsize
    if pointwise and tuple(m.stride) == (1, 1):
        return LayerMemory(keeps_input=True, backward_temp=dweight_work + weight)
    if pointwise:
        return LayerMemory(saved=cols, backward_temp=cols + dweight_work + weight)
    return LayerMemory(saved=cols, forward_temp=padded, backward_temp=cols + dweight_work + weight)


def _flat_conv_memory(m, in_shape, batch, itemsize) -> LayerMemory:
    # functional.conv_flat: the cache holds the input itself (plus the columns when they are
    # small enough to keep). Shared scratch buffers: the phase buffer, dy on the grid with
    # margins of `tail` zeros, per thread one chunk of columns and of output (the columns are
    # never built whole; with kept columns also the output grid), and for dx the phases of dx
    # (strided layers) or dcols and the phases (fewer than DIRECT_DX_MIN_CHANNELS channels);
    # stride-1 dx is written straight from the GEMM chunks.
    from .functional.conv_flat import DIRECT_DX_MIN_CHANNELS, _chunk_length, _image_chunks
    from .functional.parallel import MIN_PARALLEL_BYTES, num_threads

    g = flat_geometry((batch,) + tuple(in_shape), m.kernel_size, m.stride, m.padding, m.dilation)
    f, c = m.weight.shape[:2]
    k = c * g.kernel[0] * g.kernel[1]
    phases = len(g.phases) * c * (g.length + g.tail) * itemsize
    cols = k * g.length * itemsize
    grid = f * g.length * itemsize
    kept = cols if cols <= KEEP_COLUMNS_MAX_BYTES else 0
    # forward: (F, K) @ chunks of the input's columns; backward: (C, F*T) @ chunks of dY's. Each
    # thread that takes part holds one chunk; small jobs run on the calling thread alone.
    def widest(k_rows, rows, length, image_aligned):
        chunk = _chunk_length(k_rows, itemsize, rows, length)
        bounds = _image_chunks(g, chunk) if image_aligned else [(0, min(chunk, length))]
        threads = num_threads() if k_rows * length * itemsize >= MIN_PARALLEL_BYTES and len(bounds) > 1 else 1
        return max(b - a for a, b in bounds), threads

    forward_chunk, forward_threads = widest(k, f, g.length, True)
    backward_chunk, backward_threads = widest(f * len(g.taps), c, g.length + g.tail, tuple(g.stride) == (1, 1))
    chunk_cols = max(forward_threads * k * forward_chunk, backward_threads * f * len(g.taps) * backward_chunk)
    chunk_out = max(forward_threads * f * forward_chunk, backward_threads * c * backward_chunk)
    scratch = {"flat_phases": phases, "flat_dy": f * (g.length + 2 * g.tail) * itemsize,
               "flat_chunk_cols": chunk_cols * itemsize, "flat_chunk_out": chunk_out * itemsize}
    if kept:  # the whole-column path writes the output grid (F, L) before its layout copy
        scratch["flat_y"] = grid
    if c < DIRECT_DX_MIN_CHANNELS:  # dx through dcols (C*kh*kw, L) and col2im into phases
        scratch["flat_cols"] = cols
        scratch["flat_dphases"] = phases
    elif tuple(g.stride) != (1, 1):  # dx phase by phase, then interleaved
        scratch["flat_dphases"] = phases
    return LayerMemory(keeps_input=True, saved=kept, backward_temp=2 * m.weight.size * itemsize, scratch=scratch)


def _linear_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # functional.linear caches (x, weight); backward makes dweight then copies it into .grad.
    return LayerMemory(keeps_input=True, backward_temp=2 * m.weight.size * itemsize)


def _batchnorm_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # functional.norm: in training the cache holds xc = x - mean (a new array the size of x) and
    # (C,) statistics, neither x nor y; in eval (running statistics) it references x itself.
    size = batch * _numel(in_shape) * itemsize
    if not m.training and getattr(m, "track_running_stats", True):
        return LayerMemory(keeps_input=True)
    return LayerMemory(saved=size, backward_temp=0)


def _lrn_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # The cache holds x, denom and scale: the input plus two new arrays of its size.
    size = batch * _numel(in_shape) * itemsize
    return LayerMemory(keeps_input=True, saved=2 * size, forward_temp=size, backward_temp=2 * size)


def _output_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # ReLU, tanh, sigmoid, softmax cache their output y.
    return LayerMemory(keeps_output=True)


def _leaky_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # The cache is the boolean mask x > 0: one byte per element.
    return LayerMemory(saved=batch * _numel(in_shape))


def _dropout_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # Training mode: a boolean keep mask (one byte per element); the float32 uniform draws are
    # a forward temporary. p = 0 or eval mode: the identity, nothing kept.
    if not m.training or m.p == 0:
        return LayerMemory(aliases_input=True)
    n = batch * _numel(in_shape)
    return LayerMemory(saved=n, forward_temp=4 * n)


def _view_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # Flatten and Identity return (a view of) their input and cache only its shape.
    return LayerMemory(aliases_input=True)


def _pool_scatter_bytes(m, in_shape, batch, itemsize) -> int:
    # functional.pool's backward adds each kernel offset's gradient onto the stride phases of a
    # padded input-sized buffer, then interleaves them into dx (a second buffer when strided).
    c, h, w = in_shape
    ph, pw = _pair(getattr(m, "padding", 0))
    sh, sw = _pair(m.stride if getattr(m, "stride", None) is not None else m.kernel_size)
    padded = batch * c * (h + 2 * ph + sh) * (w + 2 * pw + sw) * itemsize
    return padded if (sh, sw) != (1, 1) or (ph, pw) != (0, 0) else 0


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _maxpool_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # The cache is the argmax switches: the kernel offset of each output's winner, uint8 for
    # kernels up to 16x16. Forward also makes the padded input, a window copy and two masks.
    kh, kw = _pair(m.kernel_size)
    out = batch * _numel(out_shape)
    switch = 1 if kh * kw <= 256 else 4
    ph, pw = _pair(m.padding)
    c, h, w = in_shape
    padded = batch * c * (h + 2 * ph) * (w + 2 * pw) * itemsize if (ph or pw) else 0
    return LayerMemory(saved=out * switch, forward_temp=padded + out * (itemsize + 2),
                       backward_temp=_pool_scatter_bytes(m, in_shape, batch, itemsize) + out * (itemsize + 1))


def _avgpool_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # Average pooling keeps only its divisor and geometry; backward scatters like max pooling.
    return LayerMemory(backward_temp=_pool_scatter_bytes(m, in_shape, batch, itemsize)
                       + batch * _numel(out_shape) * itemsize)


def _adaptive_memory(m, in_shape, out_shape, batch, itemsize) -> LayerMemory:
    # The cache is the input shape (and small pooling matrices); backward is two small GEMMs.
    return LayerMemory(backward_temp=batch * _numel(out_shape) * itemsize)


register_layer(Conv2d, LocallyConnected2d, macs=_conv_macs, memory=_conv_memory)
register_layer(Linear, macs=_linear_macs, memory=_linear_memory)
register_layer(BatchNorm1d, BatchNorm2d, memory=_batchnorm_memory)
register_layer(LocalResponseNorm, memory=_lrn_memory)
register_layer(ReLU, memory=_output_memory, counts_activation=False)
register_layer(Tanh, Sigmoid, Softmax, memory=_output_memory)
register_layer(LeakyReLU, memory=_leaky_memory, counts_activation=False)
register_layer(Dropout, memory=_dropout_memory, counts_activation=False)
register_layer(Flatten, Identity, memory=_view_memory, counts_activation=False)
register_layer(MaxPool2d, memory=_maxpool_memory)
register_layer(AvgPool2d, memory=_avgpool_memory)
# torchvision's AdaptiveAvgPool2d(7) in VGG (6 in AlexNet) is the identity at the usual input
# size; the notes' tables have no such layer, so it only counts when it changes the shape.
register_layer(AdaptiveAvgPool2d, memory=_adaptive_memory, counts_activation=lambda m, i, o: tuple(i) != tuple(o))


# -- tracing --------------------------------------------------------------------------------------
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


def _is_leaf(module: Module) -> bool:
    return next(module.children(), None) is None


def _trace(model: Module, input_shape: tuple, batch: int, itemsize: int):
    """Run ``model.output_shape`` with every module's ``output_shape`` recording its calls."""
    named = []
    seen = set()
    for name, module in model.named_modules():
        if id(module) not in seen:
            seen.add(id(module))
            named.append((name, module))
    calls: list[_Call] = []
    leaf_calls: list[_Call] = []
    tensor_size: dict[int, int] = {0: _numel(input_shape)}  # tensor id -> elements per sample
    stack: list[_Call] = []
    counter = [0]

    def new_tensor(shape) -> int:
        counter[0] += 1
        tensor_size[counter[0]] = _numel(shape)
        return counter[0]

    def wrap(name: str, module: Module):
        bound = module.output_shape
        leaf = _is_leaf(module)

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
                memory = rule_for(module).memory(module, call.input_shape, call.output_shape, batch, itemsize)
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


# -- the summary ----------------------------------------------------------------------------------
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1, "adagrad": 1, "adam": 2, "adamw": 2}


@dataclass
class Summary:
    """What :func:`summary` returns; see the module docstring."""

    model_name: str
    input_shape: tuple
    output_shape: tuple
    dtype: str
    itemsize: int
    rows: list[dict]
    total_params: int
    trainable_params: int
    total_macs: int
    input_activations: int
    total_activations: int
    batch_size: int
    optimizer: str
    training: dict = field(default_factory=dict)
    _context: object = field(default=None, repr=False)

    @property
    def forward_bytes(self) -> int:
        """Forward activation memory per image, the notes' convention (ReLU in place)."""
        return self.total_activations * self.itemsize

    @property
    def param_bytes(self) -> int:
        return self.total_params * self.itemsize

    def training_memory(self, batch_size: int | None = None, optimizer: str | None = None) -> dict:
        """Bytes for one training step: ``params``, ``grads``, ``optimizer_state``,
        ``activations`` (kept for backward), ``input``, ``workspace`` and the ``total`` peak."""
        batch = self.batch_size if batch_size is None else batch_size
        return _training_memory(self._context, batch, optimizer or self.optimizer, self.itemsize)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "dtype": self.dtype,
            "rows": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in self.rows],
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "total_macs": self.total_macs,
            "input_activations": self.input_activations,
            "total_activations": self.total_activations,
            "forward_bytes_per_image": self.forward_bytes,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "training_memory": self.training,
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def table(self):
        """The per-layer table as a ``rich.table.Table``."""
        from rich.table import Table

        table = Table(title=f"{self.model_name}: input {_fmt_shape(self.input_shape)} ({self.dtype})")
        for column, justify in (("Layer", "left"), ("Type", "left"), ("Output", "right"), ("Params", "right"),
                                ("MACs", "right"), ("Activations", "right"), ("Act. memory", "right")):
            table.add_column(column, justify=justify)
        for row in self.rows[1:]:
            style = None if row["leaf"] else "bold"
            table.add_row("  " * (row["depth"] - 1) + row["name"].rsplit(".", 1)[-1], row["type"],
                          _fmt_shape(row["output_shape"]), _count(row["params"]), _count(row["macs"]),
                          _count(row["activations"]), _bytes(row["activation_bytes"]), style=style)
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buffer = io.StringIO()
        console = Console(file=buffer, width=124, force_terminal=False, color_system=None)
        console.print(self.table())
        t = self.training
        lines = [
            f"Total params: {self.total_params:,} ({_count(self.total_params)}; trainable {self.trainable_params:,}), "
            f"{_bytes(self.param_bytes)}",
            f"Total multiply-adds per image: {self.total_macs:,} ({_count(self.total_macs)})",
            f"Forward activations per image (input + layer outputs; ReLU, dropout in place): "
            f"{self.total_activations:,} values = {_bytes(self.forward_bytes)}",
            f"Training step, batch {self.batch_size}, {self.optimizer}: kept for backward "
            f"{_bytes(t['activations'])} ({_bytes(t['activations'] // self.batch_size)}/image), gradients "
            f"{_bytes(t['grads'])}, optimizer state {_bytes(t['optimizer_state'])}",
            f"Peak {_bytes(t['total'])} at the {t['peak_at']}: parameters {_bytes(t['params'])} + optimizer "
            f"state {_bytes(t['optimizer_state'])} + input {_bytes(t['input'])} + activations "
            f"{_bytes(t['activations_at_peak'])} + gradients {_bytes(t['grads_at_peak'])} + workspace "
            f"{_bytes(t['workspace'])} + kernel scratch {_bytes(t['scratch'])}",
        ]
        return buffer.getvalue() + "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Summary({self.model_name}, input={self.input_shape}, params={self.total_params:,}, "
                f"macs={self.total_macs:,})")


@dataclass
class _Context:
    leaf_calls: list
    tensor_size: dict
    input_shape: tuple
    param_sizes: list
    trainable_sizes: list
    buffer_bytes: int


def summary(model: Module, input_shape, batch_size: int = 1, optimizer: str = "momentum", *,
            dtype=None) -> Summary:
    """Shapes, parameters, multiply-adds and memory of ``model`` for one sample of ``input_shape``.

    ``batch_size`` and ``optimizer`` (``"sgd"``, ``"momentum"``, ``"adam"``, ...) set the
    training-memory estimate; ``dtype`` defaults to the model's parameter dtype. The model is not
    run and not modified.
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or min(shape) < 1:
        raise ValueError(f"summary: input_shape must be positive ints such as (3, 224, 224), got {input_shape!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"summary: batch_size must be a positive int, got {batch_size!r}")
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"summary: optimizer must be one of {sorted(OPTIMIZER_STATE)}, got {optimizer!r}")
    dtype = np.dtype(model.dtype if dtype is None else dtype)
    itemsize = dtype.itemsize
    named, calls, leaf_calls, tensor_size = _trace(model, shape, batch_size, itemsize)

    by_module: dict[int, list[_Call]] = {}
    for call in calls:
        by_module.setdefault(id(call.module), []).append(call)
    rows = []
    for name, module in named:
        own_calls = by_module.get(id(module), [])
        first = own_calls[0] if own_calls else None
        leaf = _is_leaf(module)
        params = sum(p.size for _, p in module.named_parameters())
        trainable = sum(p.size for _, p in module.named_parameters() if p.requires_grad)
        out_shape = first.output_shape if first else None
        rows.append({
            "name": name or "(model)",
            "type": type(module).__name__,
            "depth": 0 if not name else name.count(".") + 1,
            "input_shape": first.input_shape if first else None,
            "output_shape": out_shape,
            "params": params,
            "trainable_params": trainable,
            "macs": 0,
            "activations": _numel(out_shape) if out_shape else 0,
            "activation_bytes": _numel(out_shape) * itemsize if out_shape else 0,
            "calls": len(own_calls),
            "leaf": leaf,
        })
    # MACs of each leaf call, added to the leaf and to every ancestor row (prefix of its name).
    row_of = {row["name"]: row for row in rows}
    total_macs = 0
    total_activations = _numel(shape)
    for call in leaf_calls:
        rule = rule_for(call.module)
        macs = int(rule.macs(call.module, call.input_shape, call.output_shape))
        total_macs += macs
        if rule.new_activation(call.module, call.input_shape, call.output_shape):
            total_activations += _numel(call.output_shape)
        for ancestor in _ancestors(call.name):
            row_of[ancestor]["macs"] += macs

    unique = {id(p): p for p in model.parameters()}
    context = _Context(
        leaf_calls, tensor_size, shape,
        param_sizes=[p.size for p in unique.values()],
        trainable_sizes=[p.size for p in unique.values() if p.requires_grad],
        buffer_bytes=sum(int(getattr(b, "nbytes", 0)) for b in model.buffers()),
    )
    result = Summary(
        model_name=type(model).__name__, input_shape=shape,
        output_shape=rows[0]["output_shape"], dtype=dtype.name, itemsize=itemsize, rows=rows,
        total_params=sum(context.param_sizes), trainable_params=sum(context.trainable_sizes),
        total_macs=total_macs, input_activations=_numel(shape), total_activations=total_activations,
        batch_size=int(batch_size), optimizer=optimizer, _context=context,
    )
    result.training = result.training_memory()
    return result


def _ancestors(name: str) -> list[str]:
    if name == "(model)":
        return ["(model)"]
    parts = name.split(".")
    return ["(model)"] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _training_memory(ctx: _Context, batch: int, optimizer: str, itemsize: int) -> dict:
    """Simulate one step (forward, backward, optimizer update) and return its peak in bytes."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATE)}, got {optimizer!r}")
    calls = ctx.leaf_calls
    memories = [rule_for(c.module).memory(c.module, c.input_shape, c.output_shape, batch, itemsize) for c in calls]
    tensor_bytes = {t: batch * n * itemsize for t, n in ctx.tensor_size.items()}
    params = sum(ctx.param_sizes) * itemsize + ctx.buffer_bytes
    state = OPTIMIZER_STATE[optimizer] * sum(ctx.trainable_sizes) * itemsize
    input_bytes = tensor_bytes[0]
    scratch: dict[str, int] = {}
    for mem in memories:
        for name, size in mem.scratch.items():
            scratch[name] = max(scratch.get(name, 0), size)
    scratch_bytes = sum(scratch.values())
    persistent = params + state + input_bytes + scratch_bytes

    # Which arrays the caches keep, each attributed to the earliest leaf holding it (freed last).
    holder: dict[int, int] = {}
    for call, mem in zip(calls, memories):
        for tensor, keep in ((call.in_tensor, mem.keeps_input), (call.out_tensor, mem.keeps_output)):
            if keep and tensor != 0:  # the input batch is counted once, as persistent
                holder[tensor] = min(holder.get(tensor, call.order), call.order)
    kept_by = [0] * len(calls)
    for tensor, order in holder.items():
        kept_by[order] += tensor_bytes[tensor]
    for i, mem in enumerate(memories):
        kept_by[i] += mem.saved
    own_grads = [sum(p.size for p in vars(c.module).values() if isinstance(p, Parameter) and p.requires_grad)
                 * itemsize for c in calls]

    # The peak and what is live at that moment: (total, kept activations, gradients, transient, where).
    peak = (persistent, 0, 0, 0, "start")

    def consider(kept_now, grads_now, transient, where):
        nonlocal peak
        total = persistent + kept_now + grads_now + transient
        if total > peak[0]:
            peak = (total, kept_now, grads_now, transient, where)

    kept = 0
    kept_tensors: set[int] = set()
    for i, (call, mem) in enumerate(zip(calls, memories)):
        live_io = sum(tensor_bytes[t] for t in {call.in_tensor, call.out_tensor} - kept_tensors - {0})
        consider(kept, 0, live_io + mem.forward_temp, f"forward of {call.name}")
        kept += kept_by[i]
        kept_tensors |= {t for t, order in holder.items() if order == i}
    activations = kept
    grads = 0
    for i in range(len(calls) - 1, -1, -1):
        call, mem = calls[i], memories[i]
        grads += own_grads[i]
        dy = tensor_bytes[call.out_tensor]
        dx = tensor_bytes[call.in_tensor] if i > 0 else 0
        consider(kept, grads, dy + dx + mem.backward_temp, f"backward of {call.name}")
        kept -= kept_by[i]
    # The optimizer step: every gradient, the state, and a parameter-sized temporary.
    largest = max(ctx.trainable_sizes, default=0) * itemsize
    consider(0, grads, 2 * largest, "optimizer step")
    total, kept_at_peak, grads_at_peak, transient, where = peak
    return {
        "batch_size": batch,
        "optimizer": optimizer,
        "params": params,                          # parameters and buffers
        "grads": sum(ctx.trainable_sizes) * itemsize,
        "optimizer_state": state,
        "activations": activations,                # kept for backward at the end of forward
        "input": input_bytes,
        "peak_at": where,
        "activations_at_peak": kept_at_peak,
        "grads_at_peak": grads_at_peak,
        "workspace": transient,                    # short-lived arrays at the peak
        "scratch": scratch_bytes,                  # kernels' shared work buffers, all step long
        "total": total,
    }


# -- units ----------------------------------------------------------------------------------------
def _count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _fmt_shape(shape) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


# -- for the CLI (cnnkit/cli/summary.py) and users ------------------------------------------------------------------------
def default_input_shape(name: str) -> tuple:
    """The usual input of a registered model (``(3, 224, 224)`` unless it says otherwise)."""
    from .models.registry import default_input_shape as lookup

    return lookup(name)
