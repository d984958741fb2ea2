"""Nested Python structures <-> JSON plus named arrays, with an exact round trip.

A checkpoint's ``training_state`` (optimizer state, scheduler state, epoch, RNG states, history)
is a tree of dicts, lists, tuples, scalars, strings and NumPy arrays. ``encode`` turns it into
JSON-ready data, moving every array into a separate ``name -> array`` dict (stored as tensors);
``decode`` reverses it. JSON alone would lose types, so these are tagged as one-key objects:

================  ==============================================================
``__array__``     an ndarray: the name of its stored tensor (dtype and shape kept)
``__scalar__``    a NumPy scalar (``np.float32(1.5)``): a stored 0-d tensor
``__tuple__``     a tuple: the list of its items
``__dict__``      a dict whose keys are not all strings (e.g. ``{0: ...}`` in optimizer
                  state) or that would look like a tag: a list of ``[key, value]`` pairs
``__float__``     ``nan``, ``inf`` or ``-inf`` (not standard JSON)
``__bytes__``     bytes, base64
``__dtype__``     a NumPy dtype or scalar type (``np.float64``): comes back as ``np.dtype``
================  ==============================================================

Python ints of any size (``bit_generator.state`` holds 128-bit ones) are JSON integers, which
Python's ``json`` reads back exactly. Mappings come back as ``dict`` (an ``OrderedDict``'s order
is kept); anything else (sets, objects) raises ``TypeError`` naming where it sits.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Mapping

import numpy as np

from ..backend import to_numpy

_TAGS = ("__array__", "__scalar__", "__tuple__", "__dict__", "__float__", "__bytes__", "__dtype__")


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__module__.startswith("cupy")


def encode(value, arrays: dict, prefix: str, where: str = "value"):
    """JSON-ready form of ``value``; arrays are added to ``arrays`` under ``prefix + index``."""

    def store(array) -> str:
        name = f"{prefix}{len(arrays)}"
        arrays[name] = array
        return name

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic):  # before int/float: np.float64 is a float subclass
        if value.dtype.kind not in "biufc":
            raise TypeError(f"{where}: cannot store a NumPy scalar of dtype {value.dtype}")
        return {"__scalar__": store(np.asarray(value))}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return float(value)
        return {"__float__": repr(float(value))}  # 'nan', 'inf', '-inf'
    if _is_array(value):
        array = to_numpy(value)
        if array.dtype.kind not in "biufc":
            raise TypeError(f"{where}: cannot store an array of dtype {array.dtype}; only numbers and bools")
        return {"__array__": store(array)}
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).str}  # e.g. a model's dtype= argument
    if isinstance(value, bytes):
        return {"__bytes__": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, arrays, prefix, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, arrays, prefix, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        plain = all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS)
        if plain:
            return {k: encode(v, arrays, prefix, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__dict__": [
            [encode(k, arrays, prefix, f"{where} key {k!r}"), encode(v, arrays, prefix, f"{where}[{k!r}]")]
            for k, v in value.items()
        ]}
    raise TypeError(
        f"{where}: cannot store a {type(value).__name__} in a checkpoint; supported: dict, list, "
        "tuple, str, bytes, int, float, bool, None, NumPy arrays, scalars and dtypes"
    )


def decode(data, arrays: Mapping):
    """Inverse of :func:`encode`: ``arrays`` maps the stored names back to arrays."""
    if isinstance(data, list):
        return [decode(v, arrays) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        (tag, body), = data.items()
        if tag == "__array__":
            return arrays[body]
        if tag == "__scalar__":
            return arrays[body][()]
        if tag == "__tuple__":
            return tuple(decode(v, arrays) for v in body)
        if tag == "__dict__":
            return {decode(k, arrays): decode(v, arrays) for k, v in body}
        if tag == "__float__":
            return float(body)
        if tag == "__bytes__":
            return base64.b64decode(body)
        if tag == "__dtype__":
            return np.dtype(body)
    return {k: decode(v, arrays) for k, v in data.items()}
