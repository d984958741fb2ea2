"""Checkpoints: a model's weights, how to rebuild it, and the training state, in one file.

``save(model, path, training_state=None)`` writes a ``.safetensors`` file (or ``.npz``; see
:mod:`cnnkit.io.containers`) holding

* the model's ``state_dict()`` arrays under their own keys, so any safetensors reader (PyTorch's
  included) sees plain weights;
* the arrays found inside ``training_state`` under the reserved prefix
  ``__cnnkit__/training_state/`` (and ``__cnnkit__/config/`` for arrays in the config);
* one JSON document (safetensors header metadata ``"cnnkit"``) with ``format``
  (``"cnnkit-checkpoint"``), ``format_version``, ``cnnkit_version``, the model's ``config``
  (``{"name", "kwargs"}``, set by ``cnnkit.models.create``; null for a model built by hand),
  ``keys`` (the state dict's order) and ``training_state`` with every array replaced by a
  reference (encoding in :mod:`cnnkit.io.structure`; round trips exactly).

The write is atomic. ``load(path)`` rebuilds the model; ``load_checkpoint(path)`` also returns
the training state.
"""
from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from .containers import RESERVED_PREFIX, write_container
from .state_dict import (CHECKPOINT_FORMAT, WRITABLE_SUFFIXES, _read_container, _suffix, model_arrays,
                         parse_metadata)
from .structure import decode, encode

FORMAT_VERSION = 1
TRAINING_STATE_PREFIX = RESERVED_PREFIX + "training_state/"
CONFIG_PREFIX = RESERVED_PREFIX + "config/"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns."""

    model: object
    training_state: object = None
    config: dict | None = None
    metadata: dict = field(default_factory=dict)  # format, format_version, cnnkit_version

    def __iter__(self):  # unpack as ``model, training_state = load_checkpoint(path)``
        return iter((self.model, self.training_state))


def save(model, path, training_state=None) -> None:
    """Write ``model``'s weights, its ``config`` and ``training_state`` to one file, atomically.

    ``training_state`` may be any nest of dicts (any hashable keys), lists, tuples, str, bytes,
    int (big ones too: ``np.random.Generator.bit_generator.state``), float, bool, None, NumPy
    arrays and scalars: e.g. ``{"epoch": 3, "optimizer": opt.state_dict(), "rng":
    gen.bit_generator.state, "history": [...]}``. The extension picks the container:
    ``.safetensors`` (recommended) or ``.npz``.
    """

    path = Path(path)
    _suffix(path, WRITABLE_SUFFIXES, "write a checkpoint to")
    state = model.state_dict()
    reserved = [k for k in state if k.startswith(RESERVED_PREFIX)]
    if reserved:
        raise ValueError(f"save: model keys starting with {RESERVED_PREFIX!r} are reserved: {reserved}")
    arrays = dict(state)
    config = getattr(model, "config", None)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "cnnkit_version": __version__,
        "config": None if config is None else encode(config, arrays, CONFIG_PREFIX, "model.config"),
        "keys": list(state),
        "training_state": encode(training_state, arrays, TRAINING_STATE_PREFIX, "training_state"),
    }
    write_container(path, arrays, json.dumps(metadata))


def _read_checkpoint(path):
    path = Path(path)
    _suffix(path, WRITABLE_SUFFIXES, "read a cnnkit checkpoint from")
    arrays, text = _read_container(path)
    metadata = parse_metadata(text, path)
    if metadata is None or metadata.get("format") != CHECKPOINT_FORMAT:
        metadata = None
    return path, arrays, metadata


def _no_config_error(path) -> ValueError:
    return ValueError(
        f"{path} does not say how to build its model (no model config: the model was not made "
        "with cnnkit.models.create, or the file is plain weights). Build the model yourself and "
        f"load the weights with model.load_state_dict(cnnkit.io.load_state_dict({str(path)!r})), "
        "or pass it: cnnkit.io.load_checkpoint(path, model=model)"
    )


def _decode_field(metadata: dict, field: str, arrays, path):
    """``metadata[field]`` decoded (None if absent); a corrupt one raises ``ValueError`` naming it."""
    try:
        return decode(metadata.get(field), arrays)
    except (KeyError, IndexError, TypeError, ValueError, RecursionError) as error:
        raise ValueError(
            f"{path}: the metadata field {field!r} is corrupt ({type(error).__name__}: {str(error)[:200]})"
        ) from None


def _build(config, path, state):
    """The model ``config`` describes, built only as far as the weights in the file reach.

    The file's model tensors are everything the model may hold: the build runs under
    ``parameter_budget`` with their number of values, so a config whose layers are larger than
    its weights (``num_classes=150000`` beside 10-class weights) fails before the oversized
    layer is allocated.
    """
    from ..models import create  # late: the model zoo imports much of cnnkit
    from ..nn.validation import parameter_budget

    if not isinstance(config, dict) or "name" not in config:
        raise _no_config_error(path)
    name, kwargs = config["name"], config.get("kwargs", {})
    if not isinstance(name, str) or not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"{path}: the metadata field 'config' must hold a model name and a dict of keyword arguments")
    values = sum(int(np.size(a)) for a in state.values())
    described = f"{name}({', '.join(f'{k}={reprlib.repr(v)}' for k, v in list(kwargs.items())[:8])})"
    budget = f"{values:,} values of the weights in {path}: its config ({described}) does not match its weights"
    try:
        with parameter_budget(values, budget):
            model = create(name, **kwargs)
    except (TypeError, ValueError) as error:  # unknown model or argument, a value a layer refuses
        message = str(error)
        if budget in message:
            raise ValueError(message) from None
        raise ValueError(f"{path}: the metadata field 'config' ({described}) does not build a model: {message}") \
            from None
    model.config = dict(config)  # keep what the run recorded beside name/kwargs (dataset, classes, ...)
    return model


def _floating_dtype(state) -> np.dtype | None:
    for value in state.values():
        if np.issubdtype(value.dtype, np.floating):
            return value.dtype
    return None


def load_checkpoint(path, model=None) -> Checkpoint:
    """Read a checkpoint written by :func:`save`.

    Without ``model`` the model is rebuilt with ``cnnkit.models.create(name, **kwargs)`` from
    the stored config and cast to the saved floating dtype; with ``model`` the weights load into
    it (``strict=True``). Returns a :class:`Checkpoint` with ``model``, ``training_state``
    (arrays restored in place, exact dtypes and values; mappings come back as dict), ``config``
    and ``metadata``.

    The file is untrusted: the metadata is checked against the tensors it holds before the model
    is built (a config that would build more than the file's weights is refused before the
    oversized layer is allocated), and a damaged file raises ``ValueError`` naming the file and
    the field.
    """
    path, arrays, metadata = _read_checkpoint(path)
    if metadata is None:
        if model is None:
            raise _no_config_error(path)
        metadata = {}
    config = _decode_field(metadata, "config", arrays, path)
    state = model_arrays(arrays, metadata, path)
    if model is None:
        model = _build(config, path, state)
        dtype = _floating_dtype(state)
        if dtype is not None and model.dtype != dtype:
            model.to(dtype)  # load_state_dict casts to the model's dtype: keep the saved one
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as error:  # missing/unexpected keys, shapes
        raise ValueError(f"{path}: its weights do not fit the model: {error.args[0] if error.args else error}") \
            from None
    training_state = _decode_field(metadata, "training_state", arrays, path)
    info = {k: metadata[k] for k in ("format", "format_version", "cnnkit_version") if k in metadata}
    return Checkpoint(model=model, training_state=training_state, config=config, metadata=info)


def load(path):
    """The model saved at ``path`` by :func:`save`, rebuilt from its config, weights loaded."""
    return load_checkpoint(path).model
