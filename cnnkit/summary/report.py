"""``summary(model, input_shape)``: the per-module rows, the totals and the :class:`Summary` report."""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np

from ..functional.memory import numel
from ..models.registry import default_input_shape as registered_input_shape
from ..nn.module import Module
from .memory import OPTIMIZER_STATE, Context, training_memory
from .rules import counts_activation_of, macs_of
from .trace import is_leaf, is_multi, shape_list, trace


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
        return training_memory(self._context, batch, optimizer or self.optimizer, self.dtype)

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
    named, calls, leaf_calls, tensor_size = trace(model, shape, batch_size, dtype)

    by_module: dict[int, list] = {}
    for call in calls:
        by_module.setdefault(id(call.module), []).append(call)
    rows = []
    for name, module in named:
        own_calls = by_module.get(id(module), [])
        first = own_calls[0] if own_calls else None
        leaf = is_leaf(module)
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
            "activations": _values(out_shape),
            "activation_bytes": _values(out_shape) * itemsize,
            "calls": len(own_calls),
            "leaf": leaf,
        })
    # MACs of each leaf call, added to the leaf and to every ancestor row (prefix of its name).
    row_of = {row["name"]: row for row in rows}
    total_macs = 0
    total_activations = numel(shape)
    for call in leaf_calls:
        macs = macs_of(call.module, call.input_shape, call.output_shape)
        total_macs += macs
        if counts_activation_of(call.module, call.input_shape, call.output_shape):
            total_activations += _values(call.output_shape)
        for ancestor in _ancestors(call.name):
            row_of[ancestor]["macs"] += macs

    unique = {id(p): p for p in model.parameters()}
    context = Context(
        leaf_calls, tensor_size, shape,
        param_sizes=[p.size for p in unique.values()],
        trainable_sizes=[p.size for p in unique.values() if p.requires_grad],
        buffer_bytes=sum(int(getattr(b, "nbytes", 0)) for b in model.buffers()),
    )
    result = Summary(
        model_name=type(model).__name__, input_shape=shape,
        output_shape=rows[0]["output_shape"], dtype=dtype.name, itemsize=itemsize, rows=rows,
        total_params=sum(context.param_sizes), trainable_params=sum(context.trainable_sizes),
        total_macs=total_macs, input_activations=numel(shape), total_activations=total_activations,
        batch_size=int(batch_size), optimizer=optimizer, _context=context,
    )
    result.training = result.training_memory()
    return result


def _values(shape) -> int:
    """Values per sample of an output shape (of all outputs, for a module with several)."""
    return 0 if shape is None else sum(numel(s) for s in shape_list(shape))


def _ancestors(name: str) -> list[str]:
    if name == "(model)":
        return ["(model)"]
    parts = name.split(".")
    return ["(model)"] + [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


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
    if is_multi(shape):
        return ", ".join(_fmt_shape(s) for s in shape)
    return "-" if shape is None else "x".join(str(s) for s in shape)


def default_input_shape(name: str) -> tuple:
    """The usual input of a registered model (``(3, 224, 224)`` unless it says otherwise)."""
    return registered_input_shape(name)
