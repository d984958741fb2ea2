"""What the importer knows while it walks an ONNX graph: constants, shapes and the batch axis.

Shapes are *full* static shapes, batch axis included. The batch is a property of the imported
graph, not an assumption:

* the first graph input's leading dimension is the batch. When the file declares it as a number
  (a fixed-batch export: the Model Zoo, Caffe conversions, PyTorch exported without dynamic axes)
  that number is ``batch``; when it is symbolic (``"N"``), ``batch`` is ``None`` and the shapes
  carry ``1`` there while the importer reasons symbolically;
* every tensor whose leading axis still *is* that batch is in ``batched``. Layers that keep it
  (convolutions, pooling, a ``Reshape`` to ``(batch, -1)``) run at any batch size; a graph whose
  outputs all stay batched runs at any batch size, the others only at the declared one;
* ``Shape`` of a batched tensor folds to the declared batch, or, when it is symbolic, to the
  marker :data:`BATCH`, which ``Gather``/``Concat``/``Unsqueeze``... carry along unchanged and
  ``Reshape``/``Expand`` turn back into "this is the batch axis".

Constants that the import itself creates (folded ``ConstantOfShape``, ``Expand``, ``Tile``...)
are charged against ``max_folded_bytes`` *before* they are allocated: a 156-byte file must not
make the importer allocate half a gigabyte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..nn.graph import Graph
from .registry import NeedsConstantError, UnsupportedOperatorError

# The symbolic batch size inside folded shape vectors (``Shape`` of a batched tensor when the
# file leaves the batch symbolic). No real dimension is this large.
BATCH = np.int64(-(2 ** 62))

# Constants created by folding: at most this many bytes in all, unless the caller allows more.
DEFAULT_MAX_FOLDED_BYTES = 256 << 20
# One sample of one tensor: at most this many elements (2**31: 8 GiB of float32 per sample).
MAX_SAMPLE_ELEMENTS = 1 << 31


class Unread:
    """An initializer whose data has not been read yet: its declared shape and type are known, the
    bytes are read (once) when a rule asks for the value. A node refused for its shapes never
    makes the importer read a gigabyte weight, and unused initializers are never read."""

    def __init__(self, read, shape: tuple, dtype):
        self.read, self.shape, self.dtype = read, tuple(shape), np.dtype(dtype)


def has_batch_marker(value) -> bool:
    value = np.asarray(value)
    return value.dtype == np.int64 and bool((value == BATCH).any())


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 2 ** 20:,.1f} MiB"


@dataclass
class ImportContext:
    opset: int
    graph: Graph
    dtype: np.dtype
    batch: int | None                                 # the declared batch size; None when symbolic
    max_folded_bytes: int = DEFAULT_MAX_FOLDED_BYTES
    graph_inputs: set = field(default_factory=set)    # names of the graph's (non-constant) inputs
    base_dir: str | None = None                       # the model's folder (external data lives there)
    constants: dict = field(default_factory=dict)     # tensor name -> np.ndarray
    trainable: set = field(default_factory=set)       # constants that came from initializers
    weight_names: dict = field(default_factory=dict)  # folded weight -> the initializer it rearranges
    shapes: dict = field(default_factory=dict)        # tensor name -> full shape (batch axis included)
    batched: set = field(default_factory=set)         # tensors whose axis 0 is the batch
    dtypes: dict = field(default_factory=dict)        # tensor name -> element type, where known
    aliases: dict = field(default_factory=dict)       # onnx tensor name -> graph tensor name
    consumers: dict = field(default_factory=dict)     # onnx tensor name -> number of readers
    producers: dict = field(default_factory=dict)     # graph tensor name -> graph node name
    folded_bytes: int = 0
    batch_note: str = ""                              # the first node that moves or merges the batch axis

    # -- names ----------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        while name in self.aliases:
            name = self.aliases[name]
        return name

    def input(self, node, i: int, default=None):
        """Name of input ``i`` of ``node`` (``default`` when absent or empty)."""
        return node.input[i] if len(node.input) > i and node.input[i] != "" else default

    # -- constants -----------------------------------------------------------------------------
    def is_const(self, name: str) -> bool:
        return name == "" or self.resolve(name) in self.constants

    def const(self, name: str, default=None):
        if name == "" or name is None:
            return default
        name = self.resolve(name)
        value = self.constants.get(name, default)
        if isinstance(value, Unread):
            value = self.constants[name] = value.read()
        return value

    def is_trainable(self, name: str) -> bool:
        return self.resolve(name) in self.trainable

    def require_const(self, node, i: int, what: str, *, batch_ok: bool = False):
        """The constant value of input ``i`` (``None`` when the input is absent).

        Raises :class:`NeedsConstantError` when it is computed: cnnkit builds layers from
        constant weights, shapes and pads. Unless ``batch_ok``, a value that depends on a
        symbolic batch size (:data:`BATCH`) is refused.
        """
        name = self.input(node, i)
        if name is None:
            return None
        value = self.const(name)
        if value is None:
            raise NeedsConstantError(f"the {what} (input {i}, {name!r}) must be a constant (an initializer "
                                     "or computed from constants), not a computed tensor", self.resolve(name))
        if not batch_ok and has_batch_marker(value):
            raise UnsupportedOperatorError(
                f"the {what} (input {i}) depends on the symbolic batch size; cnnkit needs it fixed here: give "
                "the input a fixed batch size in the file")
        return value

    def check_fold_size(self, shape, dtype, what: str = "the result") -> None:
        """Refuse, before allocating, a folded constant that would exceed the import's budget."""
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise ValueError(f"{what} would have a negative dimension: shape {shape}")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        if self.folded_bytes + nbytes > self.max_folded_bytes:
            raise ValueError(
                f"{what} would be a constant of shape {shape} ({megabytes(nbytes)}) created at import; constants "
                f"the import computes are limited to {megabytes(self.max_folded_bytes)} in all "
                f"({megabytes(self.folded_bytes)} used). If you trust the file, pass a larger max_folded_bytes "
                "to cnnkit.onnx.load"
            )

    def add_folded(self, name: str, value) -> None:
        value = np.asarray(value)
        self.check_fold_size(value.shape, value.dtype)
        self.folded_bytes += value.nbytes
        self.constants[name] = value

    # -- shapes --------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple:
        """The full static shape of a computed tensor (its batch axis as ``batch`` or 1)."""
        name = self.resolve(name)
        if name in self.constants:
            value = self.constants[name]
            return value.shape if isinstance(value, Unread) else tuple(np.shape(value))
        if name not in self.shapes:
            raise ValueError(f"the shape of tensor {name!r} is unknown")
        return self.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shape(name))

    def dtype_of(self, name: str) -> np.dtype:
        """The element type of a tensor (the graph's float type unless the file says otherwise)."""
        name = self.resolve(name)
        if name in self.constants:
            value = self.constants[name]
            return value.dtype if isinstance(value, Unread) else np.asarray(value).dtype
        return self.dtypes.get(name, self.dtype)

    def is_batched(self, name: str) -> bool:
        return self.resolve(name) in self.batched

    def batch_axis_value(self) -> int:
        """What the leading axis of a batched tensor holds in the tracked shapes."""
        return 1 if self.batch is None else self.batch

    def module_producing(self, name: str):
        """The cnnkit module whose node produced tensor ``name`` (``None`` for inputs/constants)."""
        node = self.producers.get(self.resolve(name))
        return None if node is None else getattr(self.graph, node)
