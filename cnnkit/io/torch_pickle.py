"""Read files written by ``torch.save`` without importing torch and without running their code.

A ``.pt`` file is a pickle: unpickling it with :mod:`pickle` can call any function the file
names (``os.system`` included). This module never hands a file to :mod:`pickle`. It runs the
pickle through :class:`WeightsUnpickler`, a small pickle machine of its own that knows only the
opcodes a saved state dict uses and enforces the rules of torch's ``weights_only`` loader:

* a global resolves only to what a state dict needs -- stand-ins for torch's tensor-rebuilding
  functions, ``collections.OrderedDict``, the storage types and dtypes -- and every other
  global raises :class:`RefusedGlobalError`; the stand-ins are made afresh for every load and
  are immutable, so nothing one file does can reach the next load;
* only those functions (and ``OrderedDict``) can be called (REDUCE, NEWOBJ);
* BUILD only sets attributes of an ``OrderedDict`` (torch's ``state_dict._metadata``), SETITEM(S)
  only fill a dict or ``OrderedDict``, APPEND(S) only extend a list.

Tensors come back as NumPy arrays. Two layouts exist (facts from ``torch/serialization.py``):

* zip (PyTorch >= 1.6, the default): ``<root>/data.pkl`` is the pickled object, whose storages
  are persistent ids ``("storage", storage_type, key, location, numel)`` pointing at the raw
  bytes in ``<root>/data/<key>``; ``<root>/byteorder`` says ``little`` or ``big``.
* legacy (``_use_new_zipfile_serialization=False``): one stream of pickles — magic number,
  protocol version, system info (``little_endian``), the object (persistent ids
  ``("storage", storage_type, key, location, numel, view_metadata)``), the list of storage keys —
  followed, for each key, by its element count (int64) and its raw bytes.

Sizes are checked before anything is allocated: a storage's declared bytes must be in the file
(zip records through :class:`~cnnkit.io.zip_records.ZipRecords`: stored or deflated, no more
than deflate can produce, streamed by chunks straight into the storage's array; legacy storages
within the bytes left in the file); the pickle itself is limited in size and steps.

A tensor is rebuilt from ``(storage, storage_offset, size, stride)``: any view (offset, a
transposed stride) is read through ``as_strided`` after checking that it stays inside its
storage, then copied, so the returned arrays are contiguous, writable and own their memory
(tensors that shared a storage in torch no longer share memory). The copies of one load stay
within twice the bytes of the storages it read plus 64 MiB (room for tied weights and a few
views of one storage): past that (a tensor with more elements than its storage, such as
``expand()``'s stride 0, or many tensors over one storage) a tensor comes back as a read-only
view of its storage, as torch returns a view -- a 400-byte file cannot become a 512 MB array.
"""
from __future__ import annotations

import io
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .zip_records import ZipRecords

# Magic number and protocol version at the head of a legacy torch.save stream.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# The pickle of a state dict holds ~100 bytes and ~20 opcodes per tensor (ResNet-50: 32 KB);
# these bounds allow a million tensors and stop a pickle that would build objects without end.
MAX_PICKLE_BYTES = 1 << 28
MAX_PICKLE_OPS = 1 << 25
# The copies one load makes: at most this many times the bytes of its storages, plus the slack.
COPY_FACTOR = 2
COPY_SLACK_BYTES = 64 << 20
_MAX_DIMS = 64  # NumPy's limit on array dimensions
_MAX_INDEX = 1 << 62  # sizes, strides and offsets beyond this cannot describe a real tensor

_BFLOAT16 = "bfloat16"  # NumPy has no bfloat16: such storages are read as uint16, then widened

# Typed storage classes named in persistent ids -> element dtype.
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
}
# Untyped storages hold bytes; the tensor's dtype then comes from _rebuild_tensor_v3's argument.
_UNTYPED_STORAGES = {("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage")}

# torch dtype objects (named as globals by _rebuild_tensor_v3) -> NumPy dtype.
_TORCH_DTYPES = {
    "float32": np.dtype(np.float32), "float": np.dtype(np.float32),
    "float64": np.dtype(np.float64), "double": np.dtype(np.float64),
    "float16": np.dtype(np.float16), "half": np.dtype(np.float16),
    "bfloat16": _BFLOAT16,
    "int64": np.dtype(np.int64), "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32), "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16), "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8), "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32), "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64), "cfloat": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128), "cdouble": np.dtype(np.complex128),
}
# torch dtypes with no NumPy counterpart: refused with a message about the dtype, not about code.
_UNSUPPORTED_TORCH_DTYPES = {
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "complex32", "chalf", "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
}


class RefusedGlobalError(pickle.UnpicklingError):
    """The file names a Python global that a state dict does not need; nothing was executed."""


def _kind(value) -> str:
    """A short description of a value from the file for error messages (never its repr:
    a nested value from a hostile file could be huge or too deep to print)."""
    return type(value).__name__


class _TorchDtype(NamedTuple):
    """Stand-in for a ``torch.<dtype>`` object: just the NumPy dtype it stands for (immutable)."""

    name: str
    dtype: object

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageType(NamedTuple):
    """Stand-in for a storage class such as ``torch.FloatStorage`` (immutable; only its dtype is used)."""

    name: str
    dtype: object  # None for untyped (byte) storages

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _LoadState:
    """What one load keeps across its tensors: the bytes it may still copy."""

    def __init__(self):
        self.copy_bytes_left = COPY_SLACK_BYTES  # grows with each storage read, shrinks with each copy


class _Storage:
    """The raw bytes of one torch storage (a uint8 array), read as a flat array of ``dtype``.

    ``data`` is None during the legacy format's first pass, when the bytes are not read yet.
    """

    def __init__(self, key: str, dtype, data: np.ndarray | None, byteorder: str, load: _LoadState):
        self.key = key
        self.dtype = dtype  # NumPy dtype, _BFLOAT16, or None (untyped: bytes)
        self.data = data
        self.byteorder = byteorder
        self.load = load
        self._widened = None  # bfloat16 storages: the whole storage as float32, for views

    def flat(self, dtype) -> np.ndarray:
        """The storage's bytes as a read-only 1-D array of ``dtype`` in the file's byte order."""
        raw = np.dtype(np.uint16) if _is_bfloat16(dtype) else np.dtype(dtype)
        raw = raw.newbyteorder("<" if self.byteorder == "little" else ">")
        usable = len(self.data) - len(self.data) % raw.itemsize
        flat = self.data[:usable].view(raw)
        flat.flags.writeable = False
        return flat

    def widened(self, flat: np.ndarray) -> np.ndarray:
        """The bfloat16 storage ``flat`` as float32 (once per storage; the size of the storage)."""
        if self._widened is None:
            self._widened = _bfloat16_to_float32(flat)
            self._widened.flags.writeable = False
        return self._widened


def _is_bfloat16(dtype) -> bool:
    return isinstance(dtype, str) and dtype == _BFLOAT16


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the upper half of a float32: shift the 16 bits up and reinterpret."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _is_index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_INDEX


def _short(value) -> str:
    """A number from the file for a message, or its kind when printing it would be unwise."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**20:
        return str(value)
    return f"<{_kind(value)}>"


def _values(values) -> str:
    shown = ", ".join(_short(v) for v in values[:8])
    return f"({shown}{', ...' if len(values) > 8 else ''})"


def _check_geometry(size, stride, offset) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        raise pickle.UnpicklingError(
            f"corrupt tensor record: size and stride must be tuples, got a {_kind(size)} and a {_kind(stride)}"
        )
    size, stride = tuple(size), tuple(stride)
    if (len(size) != len(stride) or len(size) > _MAX_DIMS
            or not all(_is_index(v) for v in (*size, *stride, offset))):
        raise pickle.UnpicklingError(
            f"corrupt tensor record: size {_values(size)}, stride {_values(stride)}, offset {_short(offset)} "
            f"must be non-negative ints below 2**62 with one stride per dimension (at most {_MAX_DIMS})"
        )
    return size, stride, offset


def _rebuild_array(storage, storage_offset, size, stride, dtype=None):
    """The tensor ``storage[offset + sum(i_k * stride_k)]`` for every index, as an array.

    A fresh contiguous copy while the load's copies stay within the bytes its storages hold,
    else a read-only view of the storage (see the module docstring).
    """
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"corrupt tensor record: expected a storage, got {_kind(storage)}")
    if storage.data is None:  # legacy format, first pass: only the storage dtypes are wanted
        return None
    dtype = storage.dtype if dtype is None else dtype
    if dtype is None:
        raise pickle.UnpicklingError(f"storage {storage.key!r} is untyped and the tensor names no dtype")
    size, stride, offset = _check_geometry(size, stride, storage_offset)
    flat = storage.flat(dtype)
    count = math.prod(size)
    if count == 0:
        return np.zeros(size, dtype=np.float32 if _is_bfloat16(dtype) else flat.dtype.newbyteorder("="))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise pickle.UnpicklingError(
            f"corrupt file: a tensor of size {size}, stride {stride}, offset {offset} reaches "
            f"element {last} of storage {storage.key!r}, which holds {flat.size}"
        )
    cost = count * flat.dtype.itemsize
    if cost > storage.load.copy_bytes_left:
        # More than the file holds (stride 0, overlapping views): torch's view, not a copy.
        base = storage.widened(flat) if _is_bfloat16(dtype) else flat
        return np.lib.stride_tricks.as_strided(base[offset:], shape=size,
                                               strides=tuple(s * base.itemsize for s in stride), writeable=False)
    storage.load.copy_bytes_left -= cost
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride), writeable=False
    )
    result = view.copy()
    if _is_bfloat16(dtype):
        return _bfloat16_to_float32(result)
    return result.astype(result.dtype.newbyteorder("="), copy=False)


# Stand-ins for torch._utils' rebuild functions; their signatures follow torch's.
def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_array(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_array(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, _TorchDtype):
        raise pickle.UnpicklingError(f"corrupt tensor record: expected a torch dtype, got {_kind(dtype)}")
    return _rebuild_array(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data  # a Parameter's values are its tensor's values


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


def _allowed_globals() -> dict[tuple[str, str], object]:
    """The globals a state dict may name, each load getting its own (immutable) stand-ins."""
    allowed = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        allowed[("torch", name)] = _StorageType(name, dtype)
    for module, name in _UNTYPED_STORAGES:
        allowed[(module, name)] = _StorageType(name, None)
    for name, dtype in _TORCH_DTYPES.items():
        allowed[("torch", name)] = _TorchDtype(name, dtype)
    return allowed


class _Stream:
    """Reads of a pickle that stop at ``end`` bytes: a declared length is checked against what
    is left before anything is read (no 4 GiB buffer for a string the file does not hold)."""

    def __init__(self, file, end: int, source: str):
        self.file = file
        self.position = file.tell()
        self.end = end
        self.source = source

    def read(self, count: int) -> bytes:
        if count > self.end - self.position:
            raise pickle.UnpicklingError(
                f"{self.source}: the pickle is truncated: a field of {count} bytes at byte {self.position}, "
                f"{self.end - self.position} left in the file"
            )
        data = self.file.read(count)
        if len(data) != count:
            raise pickle.UnpicklingError(f"{self.source}: the pickle is truncated at byte {self.position}")
        self.position += count
        return data

    def readline(self) -> bytes:
        line = self.file.readline(min(256, self.end - self.position))
        self.position += len(line)
        if not line.endswith(b"\n"):
            raise pickle.UnpicklingError(f"{self.source}: a GLOBAL name without its line end at byte {self.position}")
        return line[:-1]


class _Stop(Exception):
    """Raised by the STOP opcode with the unpickled object."""

    def __init__(self, value):
        self.value = value


_OPCODES: dict[int, str] = {}  # opcode byte -> method name of WeightsUnpickler


def _opcode(*codes: bytes):
    def register(method):
        for code in codes:
            _OPCODES[code[0]] = method.__name__
        return method

    return register


class WeightsUnpickler:
    """A pickle machine that rebuilds tensors as NumPy arrays and nothing else (see the module docstring).

    ``read_storage(key, dtype, numel)`` returns a storage's bytes as a uint8 array (or None to
    defer them). ``end`` is the file offset the pickle may not read past (default: the end of
    ``file``). Opcodes of pickle protocols 2 to 5 that a state dict uses are understood; any
    other (e.g. INST, OBJ, EXT) is refused.
    """

    def __init__(self, file, source: str, read_storage, byteorder: str = "little", end: int | None = None,
                 load: _LoadState | None = None):
        if end is None:
            here = file.tell()
            end = file.seek(0, io.SEEK_END)
            file.seek(here)
        self._in = _Stream(file, end, source)
        self._source = source
        self._read_storage = read_storage
        self._byteorder = byteorder
        self._load = load if load is not None else _LoadState()
        self._globals = _allowed_globals()
        self._callables = [v for v in self._globals.values() if callable(v)]
        self._storages: dict[str, _Storage] = {}  # one per key: shared storages are read once
        self.storage_dtypes: dict[str, object] = {}

    # -- the machine ----------------------------------------------------------------------------
    def load(self):
        self._stack: list = []
        self._marks: list[list] = []
        self._memo: dict = {}
        for _ in range(MAX_PICKLE_OPS):
            start = self._in.position
            code = self._in.read(1)[0]
            name = _OPCODES.get(code)
            if name is None:
                raise pickle.UnpicklingError(
                    f"{self._source}: pickle opcode {bytes([code])!r} at byte {start} is not one a state dict "
                    "uses; refused"
                )
            try:
                getattr(self, name)()
            except _Stop as stop:
                return stop.value
            except (IndexError, KeyError, TypeError, ValueError, OverflowError, struct.error) as error:
                raise pickle.UnpicklingError(
                    f"{self._source}: corrupt pickle at byte {start} ({name[3:]}): {type(error).__name__}: "
                    f"{str(error)[:200]}"
                ) from None
        raise pickle.UnpicklingError(f"{self._source}: the pickle runs past {MAX_PICKLE_OPS} steps; refused")

    def _push(self, value) -> None:
        self._stack.append(value)

    def _pop_mark(self) -> list:
        items = self._stack
        self._stack = self._marks.pop()
        return items

    def _unpack(self, fmt: str):
        return struct.unpack(fmt, self._in.read(struct.calcsize(fmt)))[0]

    # -- framing and control --------------------------------------------------------------------
    @_opcode(pickle.PROTO)
    def op_proto(self):
        version = self._in.read(1)[0]
        if version > 5:
            raise pickle.UnpicklingError(f"{self._source}: unsupported pickle protocol {version}")

    @_opcode(pickle.FRAME)
    def op_frame(self):
        self._in.read(8)  # the frame's length: the machine reads opcode by opcode anyway

    @_opcode(pickle.STOP)
    def op_stop(self):
        raise _Stop(self._stack.pop())

    @_opcode(pickle.MARK)
    def op_mark(self):
        self._marks.append(self._stack)
        self._stack = []

    @_opcode(pickle.POP)
    def op_pop(self):
        if self._stack:
            self._stack.pop()
        else:
            self._pop_mark()

    @_opcode(pickle.POP_MARK)
    def op_pop_mark(self):
        self._pop_mark()

    # -- plain values ---------------------------------------------------------------------------
    @_opcode(pickle.NONE)
    def op_none(self):
        self._push(None)

    @_opcode(pickle.NEWTRUE)
    def op_true(self):
        self._push(True)

    @_opcode(pickle.NEWFALSE)
    def op_false(self):
        self._push(False)

    @_opcode(pickle.BININT)
    def op_binint(self):
        self._push(self._unpack("<i"))

    @_opcode(pickle.BININT1)
    def op_binint1(self):
        self._push(self._in.read(1)[0])

    @_opcode(pickle.BININT2)
    def op_binint2(self):
        self._push(self._unpack("<H"))

    @_opcode(pickle.LONG1)
    def op_long1(self):
        self._push(int.from_bytes(self._in.read(self._in.read(1)[0]), "little", signed=True))

    @_opcode(pickle.LONG4)
    def op_long4(self):
        size = self._unpack("<i")
        if size < 0:
            raise pickle.UnpicklingError(f"{self._source}: negative LONG4 length {size}")
        self._push(int.from_bytes(self._in.read(size), "little", signed=True))

    @_opcode(pickle.BINFLOAT)
    def op_binfloat(self):
        self._push(self._unpack(">d"))

    def _text(self, size: int) -> str:
        return self._in.read(size).decode("utf-8", "surrogatepass")

    @_opcode(pickle.SHORT_BINUNICODE)
    def op_short_binunicode(self):
        self._push(self._text(self._in.read(1)[0]))

    @_opcode(pickle.BINUNICODE)
    def op_binunicode(self):
        self._push(self._text(self._unpack("<I")))

    @_opcode(pickle.BINUNICODE8)
    def op_binunicode8(self):
        self._push(self._text(self._unpack("<Q")))

    @_opcode(pickle.SHORT_BINSTRING)
    def op_short_binstring(self):  # Python 2's str (old files): text, as torch.load reads it
        self._push(self._text(self._in.read(1)[0]))

    @_opcode(pickle.BINSTRING)
    def op_binstring(self):
        size = self._unpack("<i")
        if size < 0:
            raise pickle.UnpicklingError(f"{self._source}: negative BINSTRING length {size}")
        self._push(self._text(size))

    @_opcode(pickle.SHORT_BINBYTES)
    def op_short_binbytes(self):
        self._push(self._in.read(self._in.read(1)[0]))

    @_opcode(pickle.BINBYTES)
    def op_binbytes(self):
        self._push(self._in.read(self._unpack("<I")))

    @_opcode(pickle.BINBYTES8)
    def op_binbytes8(self):
        self._push(self._in.read(self._unpack("<Q")))

    # -- containers -----------------------------------------------------------------------------
    @_opcode(pickle.EMPTY_TUPLE)
    def op_empty_tuple(self):
        self._push(())

    @_opcode(pickle.TUPLE)
    def op_tuple(self):
        self._push(tuple(self._pop_mark()))

    @_opcode(pickle.TUPLE1)
    def op_tuple1(self):
        self._stack[-1] = (self._stack[-1],)

    @_opcode(pickle.TUPLE2)
    def op_tuple2(self):
        second = self._stack.pop()
        self._stack[-1] = (self._stack[-1], second)

    @_opcode(pickle.TUPLE3)
    def op_tuple3(self):
        third, second = self._stack.pop(), self._stack.pop()
        self._stack[-1] = (self._stack[-1], second, third)

    @_opcode(pickle.EMPTY_LIST)
    def op_empty_list(self):
        self._push([])

    @_opcode(pickle.EMPTY_DICT)
    def op_empty_dict(self):
        self._push({})

    def _target(self, kinds: tuple, opcode: str):
        target = self._stack[-1]
        if type(target) not in kinds:
            names = " or ".join(k.__name__ for k in kinds)
            raise pickle.UnpicklingError(f"{self._source}: {opcode} applies to a {names} only, got a {_kind(target)}")
        return target

    @_opcode(pickle.APPEND)
    def op_append(self):
        value = self._stack.pop()
        self._target((list,), "APPEND").append(value)

    @_opcode(pickle.APPENDS)
    def op_appends(self):
        items = self._pop_mark()
        self._target((list,), "APPENDS").extend(items)

    @_opcode(pickle.SETITEM)
    def op_setitem(self):
        value, key = self._stack.pop(), self._stack.pop()
        self._target((dict, OrderedDict), "SETITEM")[key] = value

    @_opcode(pickle.SETITEMS)
    def op_setitems(self):
        items = self._pop_mark()
        target = self._target((dict, OrderedDict), "SETITEMS")
        if len(items) % 2:
            raise pickle.UnpicklingError(f"{self._source}: SETITEMS with an odd number of items")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    # -- the memo -------------------------------------------------------------------------------
    def _get(self, index: int):
        if index not in self._memo:
            raise pickle.UnpicklingError(f"{self._source}: the pickle refers to memo entry {index}, never stored")
        self._push(self._memo[index])

    @_opcode(pickle.BINGET)
    def op_binget(self):
        self._get(self._in.read(1)[0])

    @_opcode(pickle.LONG_BINGET)
    def op_long_binget(self):
        self._get(self._unpack("<I"))

    @_opcode(pickle.BINPUT)
    def op_binput(self):
        self._memo[self._in.read(1)[0]] = self._stack[-1]

    @_opcode(pickle.LONG_BINPUT)
    def op_long_binput(self):
        self._memo[self._unpack("<I")] = self._stack[-1]

    @_opcode(pickle.MEMOIZE)
    def op_memoize(self):
        self._memo[len(self._memo)] = self._stack[-1]

    # -- globals, calls and state ---------------------------------------------------------------
    @_opcode(pickle.GLOBAL)
    def op_global(self):
        module = self._in.readline().decode("utf-8")
        name = self._in.readline().decode("utf-8")
        self._push(self.find_class(module, name))

    @_opcode(pickle.STACK_GLOBAL)
    def op_stack_global(self):
        name, module = self._stack.pop(), self._stack.pop()
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError(f"{self._source}: STACK_GLOBAL needs two strings")
        self._push(self.find_class(module, name))

    def _callable(self, value, opcode: str):
        if not any(value is allowed for allowed in self._callables):
            raise pickle.UnpicklingError(f"{self._source}: {opcode} on a {_kind(value)}, which cannot be called")
        return value

    @_opcode(pickle.REDUCE)
    def op_reduce(self):
        args = self._stack.pop()
        function = self._callable(self._stack[-1], "REDUCE")
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"{self._source}: REDUCE arguments must be a tuple, got a {_kind(args)}")
        try:
            self._stack[-1] = function(*args)
        except pickle.UnpicklingError as error:  # the rebuild functions do not know the file
            if isinstance(error, RefusedGlobalError) or str(error).startswith(self._source):
                raise
            raise pickle.UnpicklingError(f"{self._source}: {error}") from None

    @_opcode(pickle.NEWOBJ)
    def op_newobj(self):
        args, cls = self._stack.pop(), self._stack.pop()
        if cls is not OrderedDict or not (isinstance(args, tuple) and not args):
            raise pickle.UnpicklingError(f"{self._source}: NEWOBJ builds an empty OrderedDict only, got a {_kind(cls)}")
        self._push(OrderedDict())

    @_opcode(pickle.BUILD)
    def op_build(self):
        # torch's rule: only OrderedDict instances take state (torch's state_dict._metadata).
        state = self._stack.pop()
        target = self._stack[-1]
        if type(target) is not OrderedDict:
            raise pickle.UnpicklingError(
                f"{self._source}: BUILD (setting an object's state) applies to an OrderedDict only, got a "
                f"{_kind(target)}"
            )
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise pickle.UnpicklingError(f"{self._source}: BUILD state must be a dict of names, got a {_kind(state)}")
        vars(target).update(state)

    @_opcode(pickle.BINPERSID)
    def op_binpersid(self):
        self._push(self.persistent_load(self._stack.pop()))

    def find_class(self, module: str, name: str):
        allowed = self._globals.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in _UNSUPPORTED_TORCH_DTYPES:
            raise RefusedGlobalError(
                f"{self._source}: a tensor has dtype torch.{name}, which NumPy cannot represent; "
                "convert it in PyTorch first (e.g. to float32)"
            )
        raise RefusedGlobalError(
            f"{self._source}: refused to load the global '{module}.{name}'. cnnkit reads PyTorch "
            "files with a restricted unpickler that only rebuilds tensors, dicts and lists: "
            "loading weights never executes code from the file. If the file holds a whole "
            "pickled model or other objects, save only the weights in PyTorch with "
            "torch.save(model.state_dict(), path)."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self._source}: unsupported persistent id (a {_kind(pid)})")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._source}: expected a storage type, got a {_kind(storage_type)}")
        if not isinstance(key, (str, int)) or isinstance(key, bool) or not _is_index(numel):
            raise pickle.UnpicklingError(
                f"{self._source}: corrupt storage record: key must be a name and numel a non-negative int, "
                f"got a {_kind(key)} and {_short(numel)}"
            )
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            self.storage_dtypes[key] = storage_type.dtype
            data = self._read_storage(key, storage_type.dtype, numel)
            if data is not None:
                self._load.copy_bytes_left += COPY_FACTOR * data.nbytes
            storage = _Storage(key, storage_type.dtype, data, self._byteorder, self._load)
            self._storages[key] = storage
        if view_metadata is not None:  # legacy files from PyTorch < 1.0 had views of storages
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3
                    and _is_index(view_metadata[1]) and _is_index(view_metadata[2])):
                raise pickle.UnpicklingError(f"{self._source}: corrupt storage view of {key!r}")
            view_key, view_offset, view_size = view_metadata
            itemsize = _itemsize(storage_type.dtype)
            start, stop = view_offset * itemsize, (view_offset + view_size) * itemsize
            if storage.data is not None and stop > len(storage.data):
                raise pickle.UnpicklingError(f"{self._source}: a view reaches past the end of storage {key!r}")
            data = None if storage.data is None else storage.data[start:stop]
            storage = _Storage(str(view_key), storage_type.dtype, data, self._byteorder, self._load)
        return storage


def _itemsize(dtype) -> int:
    if dtype is None:
        return 1
    return 2 if _is_bfloat16(dtype) else np.dtype(dtype).itemsize


# -- reading the zip layout ---------------------------------------------------------------------
def _load_zip(path: Path, archive: zipfile.ZipFile):
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise pickle.UnpicklingError(
            f"{path}: a zip file without '<root>/data.pkl', so not a torch.save file"
        )
    root = pickles[0][: -len("data.pkl")]
    records = ZipRecords(path, archive, error=pickle.UnpicklingError)
    byteorder = "little"
    if f"{root}byteorder" in archive.namelist():
        if archive.getinfo(f"{root}byteorder").file_size > 16:
            raise pickle.UnpicklingError(f"{path}: the byteorder record is not 'little' or 'big'")
        byteorder = records.read(f"{root}byteorder").tobytes().decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise pickle.UnpicklingError(f"{path}: unknown byteorder {byteorder!r}")

    def read_storage(key, dtype, numel):
        return records.read(f"{root}data/{key}", numel * _itemsize(dtype), what="storage")

    size = archive.getinfo(pickles[0]).file_size
    if size > MAX_PICKLE_BYTES:
        raise pickle.UnpicklingError(
            f"{path}: {pickles[0]} declares {size} bytes; a state dict's pickle is far smaller "
            f"(the limit is {MAX_PICKLE_BYTES})"
        )
    data = records.read(pickles[0]).tobytes()
    return WeightsUnpickler(io.BytesIO(data), str(path), read_storage, byteorder).load()


# -- reading the legacy layout ------------------------------------------------------------------
def _load_legacy(path: Path, f, end: int):
    def no_storage(key, dtype, numel):
        raise pickle.UnpicklingError(f"{path}: a storage outside the object pickle")

    def header():
        return WeightsUnpickler(f, str(path), no_storage, end=end).load()

    try:
        magic = header()
    except RefusedGlobalError:
        raise
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(
            f"{path}: not a PyTorch file (neither a zip archive nor a legacy torch.save stream; "
            f"the tar format of PyTorch < 0.4 is not supported): {error}"
        ) from None
    if type(magic) is not int or magic != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError(f"{path}: not a PyTorch file (wrong magic number)")
    version = header()
    if type(version) is not int or version != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"{path}: unsupported legacy protocol version")
    sys_info = header()
    if not isinstance(sys_info, dict):
        raise pickle.UnpicklingError(f"{path}: corrupt legacy file (system info is a {_kind(sys_info)}, not a dict)")
    byteorder = "little" if sys_info.get("little_endian", True) else "big"

    # First pass: learn each storage's dtype (the raw bytes come after the object pickle).
    object_start = f.tell()
    first = WeightsUnpickler(f, str(path), lambda key, dtype, numel: None, byteorder, end=end)
    first.load()
    keys = header()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError(f"{path}: corrupt legacy file (no storage key list)")
    count_format = "<q" if byteorder == "little" else ">q"
    storages = {}
    for key in keys:
        if not isinstance(key, str) or key not in first.storage_dtypes:
            raise pickle.UnpicklingError(f"{path}: storage {key if isinstance(key, str) else _kind(key)!r} "
                                         "is not used by any tensor")
        count = f.read(8)
        if len(count) != 8:
            raise pickle.UnpicklingError(f"{path}: file ends before the size of storage {key!r}")
        (numel,) = struct.unpack(count_format, count)
        nbytes = numel * _itemsize(first.storage_dtypes[key])
        if numel < 0 or nbytes > end - f.tell():
            raise pickle.UnpicklingError(
                f"{path}: storage {key!r} declares {numel} elements ({nbytes} bytes); the file has "
                f"{end - f.tell()} bytes left"
            )
        data = np.empty(nbytes, dtype=np.uint8)
        if f.readinto(memoryview(data)) != nbytes:
            raise pickle.UnpicklingError(f"{path}: file ends inside storage {key!r}")
        storages[key] = data

    # Second pass: the same object pickle, now with every storage's bytes at hand.
    def read_storage(key, dtype, numel):
        if key not in storages:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} is missing")
        return storages[key]

    f.seek(object_start)
    return WeightsUnpickler(f, str(path), read_storage, byteorder, end=end).load()


# Zip-level failures of a damaged archive, each reported as a corrupt file (with the file name).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, NotImplementedError, RuntimeError,
               OSError, ValueError, UnicodeDecodeError)


def load_torch(path) -> object:
    """The object stored by ``torch.save`` at ``path``, with every tensor as a NumPy array.

    Reads the zip format and the legacy (``_use_new_zipfile_serialization=False``) format
    through :class:`WeightsUnpickler`: no code from the file runs, and a file naming any global
    beyond tensors, storages and ``OrderedDict`` raises :class:`RefusedGlobalError` (an
    ``UnpicklingError``); a damaged or hostile file raises ``pickle.UnpicklingError`` naming the
    file and the field, before anything large is allocated. bfloat16 tensors become float32;
    tensors sharing a storage become independent arrays (as long as the copies fit in the bytes
    of the file's storages; past that, read-only views). torch is never imported.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        # torch's own test: a zip archive starts with a local file header.
        is_zip = f.read(4) == b"PK\x03\x04"
        end = f.seek(0, io.SEEK_END)
        f.seek(0)
        if not is_zip:
            return _load_legacy(path, f, end)
        try:
            with zipfile.ZipFile(f) as archive:
                return _load_zip(path, archive)
        except pickle.UnpicklingError:
            raise
        except _ZIP_ERRORS as error:
            raise pickle.UnpicklingError(f"{path}: damaged zip archive ({type(error).__name__}: {error})") from None
