"""The two file containers cnnkit writes — ``.safetensors`` and ``.npz`` — and atomic writes.

Both hold named arrays plus an optional metadata string (JSON written by cnnkit):

* ``.safetensors``: through the ``safetensors`` package's NumPy API; the metadata string sits in
  the header's ``__metadata__`` under the key ``"cnnkit"``. bfloat16 tensors (which NumPy lacks)
  are read from the package's raw byte view and widened to float32.
* ``.npz``: a zip of ``.npy`` files written with ``numpy.lib.format``; read member by member,
  each header checked against the member's size before its array is allocated, never unpickling
  (object arrays are refused, as ``allow_pickle=False`` does); the metadata string is the UTF-8
  bytes of the entry ``__cnnkit__/metadata`` (a uint8 array).

Every write goes to a temporary file in the destination's folder, is flushed to disk, then
renamed over the destination with ``os.replace`` (atomic on POSIX and Windows): a crash
mid-write leaves the previous file intact, and the temporary file is removed on error.
"""
from __future__ import annotations

import math
import os
import secrets
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from ..backend import to_numpy
from .zip_records import ZipRecords, read_into

METADATA_KEY = "cnnkit"  # key of cnnkit's JSON in a safetensors header's __metadata__
RESERVED_PREFIX = "__cnnkit__/"  # array names cnnkit uses for its own entries (never model keys)
NPZ_METADATA_ENTRY = RESERVED_PREFIX + "metadata"

# safetensors dtype codes that NumPy can hold (bfloat16 is handled separately).
_SAFETENSORS_NUMPY_DTYPES = {
    "F64", "F32", "F16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL", "C64",
}
_SAFETENSORS_WRITABLE = {
    np.dtype(t) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8,
                          np.uint64, np.uint32, np.uint16, np.uint8, np.bool_, np.complex64)
}


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401  (the NumPy API)
    except ImportError:
        raise ImportError(
            "reading or writing .safetensors files needs the safetensors package: "
            "pip install safetensors"
        ) from None
    return safetensors


# -- atomic writes ------------------------------------------------------------------------------
def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one step.

    The temporary file lives next to ``path`` (``os.replace`` is atomic only within one file
    system) and is removed if ``write`` raises, so ``path`` holds either its old content or the
    complete new one.
    """
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    temporary = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    # O_EXCL: never clobber somebody else's file; mode 0o666 lets the umask decide as for open().
    os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    mode = os.stat(temporary).st_mode & 0o777
    try:
        write(str(temporary))
        # Some writers replace the file with their own private one (safetensors makes it 0600):
        # give it back the mode every other file gets (0644 under the usual umask).
        os.chmod(temporary, mode)
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


# -- writing ------------------------------------------------------------------------------------
def _as_arrays(tensors) -> "OrderedDict[str, np.ndarray]":
    """Contiguous NumPy arrays (copied from the GPU if needed), checking names and dtypes."""
    arrays = OrderedDict()
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"array names must be str, got {name!r} ({type(name).__name__})")
        array = np.asarray(to_numpy(value), order="C")  # (ascontiguousarray turns 0-d into 1-d)
        if array.dtype.kind not in "biufc":
            raise TypeError(f"{name!r}: cannot store an array of dtype {array.dtype}; only numbers and bools")
        arrays[name] = array
    return arrays


def _write_safetensors(temporary: str, arrays, metadata: str | None) -> None:
    st = _safetensors()
    for name, array in arrays.items():
        if array.dtype.newbyteorder("=") not in _SAFETENSORS_WRITABLE:
            raise TypeError(f"{name!r}: safetensors cannot store dtype {array.dtype}; use .npz")
    header = None if metadata is None else {METADATA_KEY: metadata}
    st.numpy.save_file(dict(arrays), temporary, metadata=header)


def _write_npz(temporary: str, arrays, metadata: str | None) -> None:
    entries = list(arrays.items())
    if metadata is not None:
        entries.append((NPZ_METADATA_ENTRY, np.frombuffer(metadata.encode("utf-8"), dtype=np.uint8)))
    with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in entries:
            with archive.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)


_WRITERS = {".safetensors": _write_safetensors, ".npz": _write_npz}


def write_container(path, tensors, metadata: str | None = None) -> None:
    """Write ``tensors`` (name -> array) and a ``metadata`` string to ``path`` atomically."""
    suffix = Path(path).suffix.lower()
    if suffix not in _WRITERS:
        raise ValueError(f"cannot write {path}: supported extensions are .safetensors and .npz")
    arrays = _as_arrays(tensors)
    if suffix == ".npz" and NPZ_METADATA_ENTRY in arrays:
        raise ValueError(f"{NPZ_METADATA_ENTRY!r} is reserved for cnnkit's metadata")
    writer = _WRITERS[suffix]
    atomic_write(path, lambda temporary: writer(temporary, arrays, metadata))


# -- reading ------------------------------------------------------------------------------------
def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable and array.flags.owndata else np.array(array)


def _safetensors_error(path, error) -> ValueError:
    return ValueError(f"{path}: not a valid .safetensors file ({str(error)[:300]})")


def read_safetensors(path) -> tuple["OrderedDict[str, np.ndarray]", str | None]:
    """Arrays (sorted by name, as the format's header has no order) and cnnkit's metadata.

    The ``safetensors`` package checks the header against the file (every tensor's bytes lie in
    it, no overlaps, a header of at most 100 MB) before anything is copied; a file it refuses
    raises ``ValueError`` naming the file.
    """
    st = _safetensors()
    arrays = OrderedDict()
    bfloat16_names = []
    try:
        with st.safe_open(str(path), framework="np") as f:
            metadata = (f.metadata() or {}).get(METADATA_KEY)
            for name in f.keys():
                code = f.get_slice(name).get_dtype()
                if code == "BF16":
                    bfloat16_names.append(name)
                    arrays[name] = None  # filled below, keeping the order
                elif code in _SAFETENSORS_NUMPY_DTYPES:
                    arrays[name] = _writable(f.get_tensor(name))
                else:
                    raise TypeError(f"{path}: tensor {name!r} has dtype {code}, which NumPy cannot represent")
        if bfloat16_names:
            # The NumPy API refuses BF16: take the raw bytes and widen them (float32 = bf16 << 16).
            wanted = set(bfloat16_names)
            for name, view in st.deserialize(Path(path).read_bytes()):
                if name in wanted:
                    bits = np.frombuffer(view["data"], dtype="<u2").astype(np.uint32)
                    arrays[name] = (bits << 16).view(np.float32).reshape(view["shape"])
    except st.SafetensorError as error:
        raise _safetensors_error(path, error) from None
    return arrays, metadata


def read_metadata_string(path) -> str | None:
    """cnnkit's metadata string of a ``.safetensors``/``.npz`` file, without reading the arrays."""
    if Path(path).suffix.lower() == ".safetensors":
        st = _safetensors()
        try:
            with st.safe_open(str(path), framework="np") as f:
                return (f.metadata() or {}).get(METADATA_KEY)
        except st.SafetensorError as error:
            raise _safetensors_error(path, error) from None
    return read_npz(path, only=NPZ_METADATA_ENTRY)[1]


# Zip-level failures of a damaged archive, reported as ValueError naming the file.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, NotImplementedError, RuntimeError,
               OSError, zlib.error)


def _npy_member(records: ZipRecords, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member as an array; its header is checked against the member's size first."""
    path, name = records.path, info.filename
    with records.archive.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except (ValueError, SyntaxError, TypeError, RecursionError) as error:
            raise ValueError(f"{path}: member {name!r} has no valid .npy header ({str(error)[:200]})") from None
        if dtype.hasobject:
            raise ValueError(
                f"{path}: member {name!r} holds Python objects, which only pickle can load; cnnkit reads "
                ".npz files with allow_pickle=False"
            )
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError(f"{path}: member {name!r} declares shape {shape}, not a shape")
        if dtype.kind not in "biufc":
            raise ValueError(f"{path}: member {name!r} has dtype {dtype}; only numbers and bools are read")
        nbytes = math.prod(shape) * dtype.itemsize
        body = info.file_size - f.tell()
        if nbytes != body:
            raise ValueError(
                f"{path}: member {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) but holds {body} bytes"
            )
        records.check(info, info.file_size, "member")
        data = np.empty(nbytes, dtype=np.uint8)
        if read_into(f, data) != nbytes:
            raise ValueError(f"{path}: member {name!r} ends early")
    array = data.view(dtype)
    return array.reshape(shape, order="F" if fortran else "C")


def read_npz(path, only: str | None = None) -> tuple["OrderedDict[str, np.ndarray]", str | None]:
    """Arrays in file order and cnnkit's metadata (never unpickles: object arrays are refused).

    Every member must be a ``.npy`` array of numbers or bools whose header agrees with its size;
    members are streamed into their arrays (see :mod:`cnnkit.io.zip_records`). ``only`` reads
    just that entry (e.g. the metadata).
    """
    arrays = OrderedDict()
    metadata = None
    try:
        with zipfile.ZipFile(path) as archive:
            records = ZipRecords(path, archive)
            for info in archive.infolist():
                if info.is_dir() or not info.filename.endswith(".npy"):
                    raise ValueError(
                        f"{path}: member {info.filename!r} is not a .npy array; an .npz file holds only .npy members"
                    )
                name = info.filename[: -len(".npy")]
                if only is not None and name != only:
                    continue
                array = _npy_member(records, info)
                if name == NPZ_METADATA_ENTRY:
                    try:
                        metadata = array.tobytes().decode("utf-8")
                    except UnicodeDecodeError:
                        raise ValueError(f"{path}: cnnkit's metadata entry is not UTF-8 text") from None
                else:
                    arrays[name] = array
    except _ZIP_ERRORS as error:
        raise ValueError(f"{path}: not a valid .npz file ({type(error).__name__}: {str(error)[:200]})") from None
    return arrays, metadata
