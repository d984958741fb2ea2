"""Read files written by ``torch.save`` without importing torch and without running their code.

A ``.pt`` file is a pickle: unpickling it with :mod:`pickle` can call any function the file
names (``os.system`` included). This module unpickles through :class:`WeightsUnpickler`, whose
``find_class`` hands out only what a state dict needs — stand-ins for torch's tensor-rebuilding
functions, ``collections.OrderedDict`` and the storage types — and refuses every other global
with :class:`RefusedGlobalError`. Tensors come back as NumPy arrays.

Two layouts exist (facts from ``torch/serialization.py``):

* zip (PyTorch >= 1.6, the default): ``<root>/data.pkl`` is the pickled object, whose storages
  are persistent ids ``("storage", storage_type, key, location, numel)`` pointing at the raw
  bytes in ``<root>/data/<key>``; ``<root>/byteorder`` says ``little`` or ``big``.
* legacy (``_use_new_zipfile_serialization=False``): one stream of pickles — magic number,
  protocol version, system info (``little_endian``), the object (persistent ids
  ``("storage", storage_type, key, location, numel, view_metadata)``), the list of storage keys —
  followed, for each key, by its element count (int64) and its raw bytes.

A tensor is rebuilt from ``(storage, storage_offset, size, stride)``: any view (offset, a
transposed stride) is read through ``as_strided`` after checking that it stays inside its
storage, then copied, so every returned array is contiguous, writable and owns its memory
(tensors that shared a storage in torch no longer share memory).
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

# Magic number and protocol version at the head of a legacy torch.save stream.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

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


class _TorchDtype:
    """Stand-in for a ``torch.<dtype>`` object: just the NumPy dtype it stands for."""

    def __init__(self, name: str, dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _StorageType:
    """Stand-in for a storage class such as ``torch.FloatStorage`` (only its dtype is used)."""

    def __init__(self, name: str, dtype):
        self.name = name
        self.dtype = dtype  # None for untyped (byte) storages

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage:
    """The raw bytes of one torch storage, read as a flat array of ``dtype``.

    ``data`` is None during the legacy format's first pass, when the bytes are not read yet.
    """

    def __init__(self, key: str, dtype, data: bytes | None, byteorder: str):
        self.key = key
        self.dtype = dtype  # NumPy dtype, _BFLOAT16, or None (untyped: bytes)
        self.data = data
        self.byteorder = byteorder

    def flat(self, dtype) -> np.ndarray:
        """The storage's bytes as a read-only 1-D array of ``dtype`` in the file's byte order."""
        raw = np.dtype(np.uint16) if _is_bfloat16(dtype) else np.dtype(dtype)
        raw = raw.newbyteorder("<" if self.byteorder == "little" else ">")
        usable = len(self.data) - len(self.data) % raw.itemsize
        return np.frombuffer(self.data, dtype=raw, count=usable // raw.itemsize)


def _is_bfloat16(dtype) -> bool:
    return isinstance(dtype, str) and dtype == _BFLOAT16


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 is the upper half of a float32: shift the 16 bits up and reinterpret."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _check_geometry(size, stride, offset) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    size = tuple(size)
    stride = tuple(stride)
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (*size, *stride, offset))
    if not ints or len(size) != len(stride):
        raise pickle.UnpicklingError(
            f"corrupt tensor record: size {size}, stride {stride}, offset {offset!r} must be "
            "non-negative ints with one stride per dimension"
        )
    return size, stride, offset


def _rebuild_array(storage: _Storage, storage_offset, size, stride, dtype=None):
    """The tensor ``storage[offset + sum(i_k * stride_k)]`` for every index, as a fresh array."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"corrupt tensor record: expected a storage, got {type(storage).__name__}")
    if storage.data is None:  # legacy format, first pass: only the storage dtypes are wanted
        return None
    dtype = storage.dtype if dtype is None else dtype
    if dtype is None:
        raise pickle.UnpicklingError(f"storage {storage.key!r} is untyped and the tensor names no dtype")
    size, stride, offset = _check_geometry(size, stride, storage_offset)
    flat = storage.flat(dtype)
    if 0 in size:
        result = np.zeros(size, dtype=flat.dtype)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= flat.size:
            raise pickle.UnpicklingError(
                f"corrupt file: a tensor of size {size}, stride {stride}, offset {offset} reaches "
                f"element {last} of storage {storage.key!r}, which holds {flat.size}"
            )
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
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
        raise pickle.UnpicklingError(f"corrupt tensor record: expected a torch dtype, got {dtype!r}")
    return _rebuild_array(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data  # a Parameter's values are its tensor's values


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data


def _allowed_globals() -> dict[tuple[str, str], object]:
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


_ALLOWED_GLOBALS = _allowed_globals()


class WeightsUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds tensors as NumPy arrays and refuses every other global.

    ``read_storage(key, dtype, numel)`` returns a storage's bytes (or None to defer them).
    """

    def __init__(self, file, source: str, read_storage, byteorder: str = "little"):
        super().__init__(file)
        self._source = source
        self._read_storage = read_storage
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}  # one per key: shared storages are read once
        self.storage_dtypes: dict[str, object] = {}

    def find_class(self, module: str, name: str):
        allowed = _ALLOWED_GLOBALS.get((module, name))
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
            raise pickle.UnpicklingError(f"{self._source}: unsupported persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"{self._source}: expected a storage type, got {storage_type!r}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            self.storage_dtypes[key] = storage_type.dtype
            data = self._read_storage(key, storage_type.dtype, numel)
            storage = _Storage(key, storage_type.dtype, data, self._byteorder)
            self._storages[key] = storage
        if view_metadata is not None:  # legacy files from PyTorch < 1.0 had views of storages
            view_key, view_offset, view_size = view_metadata
            itemsize = _itemsize(storage_type.dtype)
            start, stop = view_offset * itemsize, (view_offset + view_size) * itemsize
            data = None if storage.data is None else storage.data[start:stop]
            storage = _Storage(str(view_key), storage_type.dtype, data, self._byteorder)
        return storage


def _itemsize(dtype) -> int:
    if dtype is None:
        return 1
    return 2 if _is_bfloat16(dtype) else np.dtype(dtype).itemsize


def _load_zip(path: Path, archive: zipfile.ZipFile):
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pickles:
        raise pickle.UnpicklingError(
            f"{path}: a zip file without '<root>/data.pkl', so not a torch.save file"
        )
    root = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{root}byteorder" in archive.namelist():
        byteorder = archive.read(f"{root}byteorder").decode("ascii").strip()
        if byteorder not in ("little", "big"):
            raise pickle.UnpicklingError(f"{path}: unknown byteorder {byteorder!r}")

    def read_storage(key, dtype, numel):
        name = f"{root}data/{key}"
        try:
            data = archive.read(name)
        except KeyError:
            raise pickle.UnpicklingError(f"{path}: storage {name!r} is missing from the archive") from None
        if isinstance(numel, int) and len(data) < numel * _itemsize(dtype):
            raise pickle.UnpicklingError(
                f"{path}: storage {name!r} holds {len(data)} bytes, {numel * _itemsize(dtype)} expected"
            )
        return data

    with archive.open(pickles[0]) as f:
        return WeightsUnpickler(io.BytesIO(f.read()), str(path), read_storage, byteorder).load()


def _load_legacy(path: Path, f):
    def no_storage(key, dtype, numel):
        raise pickle.UnpicklingError(f"{path}: a storage outside the object pickle")

    def header():
        return WeightsUnpickler(f, str(path), no_storage).load()

    try:
        magic = header()
    except RefusedGlobalError:
        raise
    except Exception as error:
        raise pickle.UnpicklingError(
            f"{path}: not a PyTorch file (neither a zip archive nor a legacy torch.save stream; "
            f"the tar format of PyTorch < 0.4 is not supported): {error}"
        ) from None
    if magic != LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError(f"{path}: not a PyTorch file (wrong magic number)")
    if header() != LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError(f"{path}: unsupported legacy protocol version")
    sys_info = header()
    byteorder = "little" if sys_info.get("little_endian", True) else "big"

    # First pass: learn each storage's dtype (the raw bytes come after the object pickle).
    object_start = f.tell()
    first = WeightsUnpickler(f, str(path), lambda key, dtype, numel: None, byteorder)
    first.load()
    keys = header()
    if not isinstance(keys, list):
        raise pickle.UnpicklingError(f"{path}: corrupt legacy file (no storage key list)")
    count_format = "<q" if byteorder == "little" else ">q"
    storages = {}
    for key in keys:
        if key not in first.storage_dtypes:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} is not used by any tensor")
        (numel,) = struct.unpack(count_format, f.read(8))
        nbytes = numel * _itemsize(first.storage_dtypes[key])
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise pickle.UnpicklingError(f"{path}: file ends inside storage {key!r}")
        storages[key] = data

    # Second pass: the same object pickle, now with every storage's bytes at hand.
    def read_storage(key, dtype, numel):
        if key not in storages:
            raise pickle.UnpicklingError(f"{path}: storage {key!r} is missing")
        return storages[key]

    f.seek(object_start)
    return WeightsUnpickler(f, str(path), read_storage, byteorder).load()


def load_torch(path) -> object:
    """The object stored by ``torch.save`` at ``path``, with every tensor as a NumPy array.

    Reads the zip format and the legacy (``_use_new_zipfile_serialization=False``) format
    through :class:`WeightsUnpickler`: no code from the file runs, and a file naming any global
    beyond tensors, storages and ``OrderedDict`` raises :class:`RefusedGlobalError` (an
    ``UnpicklingError``). bfloat16 tensors become float32; tensors sharing a storage become
    independent arrays. torch is never imported.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    with open(path, "rb") as f:
        # torch's own test: a zip archive starts with a local file header.
        is_zip = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        if is_zip:
            with zipfile.ZipFile(f) as archive:
                return _load_zip(path, archive)
        return _load_legacy(path, f)
