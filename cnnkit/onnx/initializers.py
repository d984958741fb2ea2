"""Reading the tensors of an ONNX file (initializers, ``Constant`` values) as untrusted input.

Every size is checked against the bytes that are really there *before* anything is allocated:
the product of the declared ``dims`` must match the length of the raw data, of the typed data
fields, or of the external-data record, which must lie inside its file. External data is read
straight from its file into one array (no intermediate ``bytes``, no second copy) and only from
files inside the model's folder. Errors name the tensor, the file and the field.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ._deps import require

# ONNX element types read directly (little-endian on disk, as the format specifies).
_NATIVE = {1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?", 10: "<f2",
           11: "<f8", 12: "<u4", 13: "<u8"}
# Where each native type keeps its values when it is not stored as raw bytes.
_TYPED_FIELD = {1: "float_data", 2: "int32_data", 3: "int32_data", 4: "int32_data", 5: "int32_data",
                6: "int32_data", 7: "int64_data", 9: "int32_data", 10: "int32_data", 11: "double_data",
                12: "uint64_data", 13: "uint64_data"}


def onnx_dtype(code) -> np.dtype:
    """The NumPy type of ONNX element type ``code`` (a ``TensorProto.DataType`` number)."""
    helper = require("onnx").helper
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(code)))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"unknown element type {code!r}") from None


def declared_dims(tensor, where: str) -> tuple[tuple[int, ...], int]:
    """The tensor's ``dims`` (refused when negative) and their product."""
    dims = tuple(int(d) for d in tensor.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{where}: negative dimension in dims {list(dims)}")
    return dims, math.prod(dims)


def _external_path(tensor, info: dict, base_dir: str | None, where: str) -> str:
    location = info.get("location")
    if not location:
        raise ValueError(f"{where}: external data without a 'location'")
    if base_dir is None:
        raise ValueError(f"{where}: the tensor's data is in the external file {location!r}; load the model "
                         "from its path (not from a ModelProto) so that cnnkit knows its folder")
    if os.path.isabs(location) or location.startswith(("/", "\\")):
        raise ValueError(f"{where}: external data location {location!r} must be a path relative to the model's folder")
    folder = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(folder, location))
    if os.path.commonpath([folder, path]) != folder:
        raise ValueError(f"{where}: external data location {location!r} points outside the model's folder {folder}")
    if not os.path.isfile(path):
        raise ValueError(f"{where}: external data file {location!r} not found in {folder}")
    return path


def _int_field(info: dict, key: str, where: str, default: int) -> int:
    if key not in info:
        return default
    try:
        value = int(info[key])
    except ValueError:
        raise ValueError(f"{where}: external data {key} {info[key]!r} is not an integer") from None
    if value < 0:
        raise ValueError(f"{where}: external data {key} must be >= 0, got {value}")
    return value


def _read_external(tensor, dims, count, dtype: np.dtype, base_dir, where: str) -> np.ndarray:
    info = {entry.key: entry.value for entry in tensor.external_data}
    path = _external_path(tensor, info, base_dir, where)
    file_size = os.path.getsize(path)
    offset = _int_field(info, "offset", where, 0)
    nbytes = count * dtype.itemsize
    length = _int_field(info, "length", where, nbytes)
    if length != nbytes:
        raise ValueError(f"{where}: dims {list(dims)} of {dtype.name} need {nbytes} bytes but the external data "
                         f"'length' is {length}")
    if offset + length > file_size:
        raise ValueError(f"{where}: external data [{offset}, {offset + length}) runs past the end of "
                         f"{info['location']!r} ({file_size} bytes)")
    with open(path, "rb") as f:
        f.seek(offset)
        array = np.fromfile(f, dtype=dtype, count=count)
    if array.size != count:
        raise ValueError(f"{where}: could read only {array.size} of {count} values from {info['location']!r}")
    array.shape = dims  # in place: the array keeps owning its memory (a reshape would be a view)
    return array


def read_tensor(tensor, base_dir: str | None = None, what: str = "tensor", *, float_dtype=None,
                release: bool = False) -> np.ndarray:
    """The value of an ONNX ``TensorProto`` as a NumPy array (native byte order).

    ``base_dir`` is the model's folder, where external data files must lie. Floating values are
    converted to ``float_dtype`` when given. With ``release`` the tensor's ``raw_data`` is cleared
    as soon as it has been read, and the array returned is the only copy of the values (owned,
    writable): a weight is never held twice.
    """
    onnx = require("onnx")
    where = f"ONNX {what} {tensor.name!r}" if tensor.name else f"ONNX {what}"
    dims, count = declared_dims(tensor, where)
    external = tensor.data_location == onnx.TensorProto.EXTERNAL
    if tensor.data_type in _NATIVE:
        dtype = np.dtype(_NATIVE[tensor.data_type])
        if external:
            array = _read_external(tensor, dims, count, dtype, base_dir, where)
        elif tensor.HasField("raw_data"):
            raw = tensor.raw_data  # a bytes copy of the field: clear the field before copying again
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{where}: dims {list(dims)} of {dtype.name} need {count * dtype.itemsize} bytes, "
                                 f"raw_data has {len(raw)}")
            if release:
                tensor.ClearField("raw_data")
            array = np.frombuffer(raw, dtype=dtype).reshape(dims)
        else:
            stored = len(getattr(tensor, _TYPED_FIELD[tensor.data_type]))
            if stored != count:
                raise ValueError(f"{where}: dims {list(dims)} declare {count} values, "
                                 f"{_TYPED_FIELD[tensor.data_type]} holds {stored}")
            array = onnx.numpy_helper.to_array(tensor)
        target = array.dtype.newbyteorder("=")
        if float_dtype is not None and np.issubdtype(target, np.floating):
            target = np.dtype(float_dtype)
        # one owned, writable copy, unless the array already is one (read from an external file)
        return array.astype(target, copy=not (array.flags.owndata and array.flags.writeable))
    if external:
        raise ValueError(f"{where}: external data of element type "
                         f"{onnx.TensorProto.DataType.Name(tensor.data_type)} is not supported")
    if tensor.data_type == onnx.TensorProto.UNDEFINED:
        raise ValueError(f"{where}: the element type is UNDEFINED")
    try:  # bfloat16, float8, int4, strings...: small and bounded by the file; onnx decodes them
        return onnx.numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
