"""``load_state_dict(path)`` and ``save_state_dict(state, path)``: weights as NumPy arrays.

Formats, chosen by the file extension:

======================================  =================  ====================================
extension                               read               write
======================================  =================  ====================================
``.pt`` ``.pth`` ``.bin`` ``.ckpt``     yes (no torch)     no (PyTorch reads .safetensors)
``.safetensors``                        yes                yes
``.npz``                                yes                yes
======================================  =================  ====================================
"""
from __future__ import annotations

import json
import reprlib
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .containers import RESERVED_PREFIX, read_metadata_string, read_npz, read_safetensors, write_container
from .torch_pickle import load_torch

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
READABLE_SUFFIXES = TORCH_SUFFIXES + (".safetensors", ".npz")
WRITABLE_SUFFIXES = (".safetensors", ".npz")

# Keys under which training scripts commonly nest the weights in a checkpoint dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."

STATE_DICT_FORMAT = "cnnkit-state-dict"
CHECKPOINT_FORMAT = "cnnkit-checkpoint"


def _suffix(path: Path, allowed: tuple[str, ...], verb: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise ValueError(
            f"cannot {verb} {path}: unknown extension {path.suffix or '(none)'!r}; supported: "
            + ", ".join(allowed)
        )
    return suffix


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()
    )


def _find_state_dict(obj, path: Path) -> Mapping:
    """``obj`` itself, or the state dict a training checkpoint nests under a wrapper key."""
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if key in obj and _is_state_dict(obj[key]):
                return obj[key]
        # reprlib: keys come from the file and may be huge or deeply nested
        others = [f"{reprlib.repr(k)} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, np.ndarray)]
        raise ValueError(
            f"{path}: holds a dict that is not a state dict (entries that are not tensors: "
            f"{', '.join(others[:8])}{' ...' if len(others) > 8 else ''}) and no "
            f"{' / '.join(repr(k) for k in WRAPPER_KEYS)} entry holding one; "
            "cnnkit.io.load_torch(path) returns the whole object"
        )
    what = "a single tensor" if isinstance(obj, np.ndarray) else f"a {type(obj).__name__}"
    raise ValueError(f"{path}: holds {what}, not a state dict (a dict of name -> tensor)")


def _strip_data_parallel(state: Mapping) -> Mapping:
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        return OrderedDict((k[len(DATA_PARALLEL_PREFIX):], v) for k, v in state.items())
    return state


def parse_metadata(text: str | None, path) -> dict | None:
    """cnnkit's metadata string of the file ``path`` as a dict (None for None); ``ValueError``
    naming the file when it is not a JSON object (too deeply nested JSON included)."""
    if text is None:
        return None
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"{path}: cnnkit's metadata is not valid JSON ({type(error).__name__}: {str(error)[:200]})") \
            from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: cnnkit's metadata is a JSON {type(metadata).__name__}, not an object")
    return metadata


def read_metadata(path) -> dict | None:
    """cnnkit's JSON metadata of a ``.safetensors``/``.npz`` file (None if it has none).

    Only the header is read: a cheap way to see a checkpoint's config, version and training
    state layout (arrays appear as ``{"__array__": name}`` references).
    """
    path = Path(path)
    _suffix(path, WRITABLE_SUFFIXES, "read metadata from")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return parse_metadata(read_metadata_string(path), path)


def _read_container(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return read_safetensors(path) if path.suffix.lower() == ".safetensors" else read_npz(path)


def model_arrays(arrays: Mapping, metadata: dict | None, path="the file") -> "OrderedDict[str, np.ndarray]":
    """The model's entries of a cnnkit file, in the order recorded at save time."""
    order = (metadata or {}).get("keys")
    if order is None:
        return OrderedDict((k, v) for k, v in arrays.items() if not k.startswith(RESERVED_PREFIX))
    if not isinstance(order, list) or not all(isinstance(k, str) for k in order):
        raise ValueError(f"{path}: the metadata field 'keys' must be a list of tensor names")
    missing = [k for k in order if k not in arrays]
    if missing:
        raise ValueError(
            f"{path}: the metadata field 'keys' names {len(missing)} tensor(s) the file does not hold, "
            f"e.g. {missing[0][:200]!r}"
        )
    return OrderedDict((k, arrays[k]) for k in order)


def load_state_dict(path, *, strip_data_parallel: bool = True) -> "OrderedDict[str, np.ndarray]":
    """Read the weights in ``path`` as an ``OrderedDict`` of name -> NumPy array.

    * ``.pt``/``.pth``/``.bin``/``.ckpt``: files from ``torch.save(state_dict)``, zip or legacy
      format, read without importing torch through a restricted unpickler that never executes
      code (see :mod:`cnnkit.io.torch_pickle`). Keys keep the file's order. bfloat16 becomes
      float32. A checkpoint dict that nests the weights (``{"state_dict": ...}``,
      ``{"model_state_dict": ...}`` or ``{"model": ...}``, next to e.g. ``"epoch"``) is
      unwrapped. If *every* key starts with ``module.`` (a model saved wrapped in
      ``torch.nn.DataParallel``) the prefix is removed; pass ``strip_data_parallel=False`` to
      keep it (a model whose only child is named ``module``).
    * ``.safetensors``: keys in the order cnnkit recorded, else sorted (the format has no order).
    * ``.npz``: keys in file order; never unpickles (``allow_pickle=False``).

    A cnnkit checkpoint (from ``cnnkit.io.save``) gives its model weights only, so
    ``model.load_state_dict(cnnkit.io.load_state_dict(path))`` works on it too.
    """
    path = Path(path)
    suffix = _suffix(path, READABLE_SUFFIXES, "read")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if suffix in TORCH_SUFFIXES:
        state = _find_state_dict(load_torch(path), path)
        if strip_data_parallel:
            state = _strip_data_parallel(state)
        return OrderedDict(state)
    arrays, metadata = _read_container(path)
    return model_arrays(arrays, parse_metadata(metadata, path), path)


def save_state_dict(state, path) -> None:
    """Write ``state`` (name -> array, or a Module's ``state_dict()``) to ``.safetensors``/``.npz``.

    The write is atomic: a temporary file in the same folder, renamed over ``path`` when
    complete, so a crash mid-write leaves any previous file intact. The key order is recorded
    and restored by :func:`load_state_dict`.
    """
    path = Path(path)
    _suffix(path, WRITABLE_SUFFIXES, "write")
    if hasattr(state, "state_dict") and callable(state.state_dict):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"save_state_dict: expected a dict of name -> array, got {type(state).__name__}")
    reserved = [k for k in state if isinstance(k, str) and k.startswith(RESERVED_PREFIX)]
    if reserved:
        raise ValueError(f"save_state_dict: keys starting with {RESERVED_PREFIX!r} are reserved: {reserved}")
    metadata = {"format": STATE_DICT_FORMAT, "format_version": 1, "keys": list(state)}
    write_container(path, state, json.dumps(metadata))
