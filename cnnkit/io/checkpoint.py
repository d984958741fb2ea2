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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from .containers import RESERVED_PREFIX, write_container
from .state_dict import CHECKPOINT_FORMAT, WRITABLE_SUFFIXES, _read_container, _suffix, model_arrays
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
    metadata = None if text is None else json.loads(text)
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


def _build(config, path):
    from ..models import create  # late: the model zoo imports much of cnnkit

    if not isinstance(config, dict) or "name" not in config:
        raise _no_config_error(path)
    model = create(config["name"], **config.get("kwargs", {}))
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
    """
    path, arrays, metadata = _read_checkpoint(path)
    if metadata is None:
        if model is None:
            raise _no_config_error(path)
        metadata = {}
    config = None if metadata.get("config") is None else decode(metadata["config"], arrays)
    state = model_arrays(arrays, metadata)
    if model is None:
        model = _build(config, path)
        dtype = _floating_dtype(state)
        if dtype is not None and model.dtype != dtype:
            model.to(dtype)  # load_state_dict casts to the model's dtype: keep the saved one
    model.load_state_dict(state)
    training_state = decode(metadata.get("training_state"), arrays)
    info = {k: metadata[k] for k in ("format", "format_version", "cnnkit_version") if k in metadata}
    return Checkpoint(model=model, training_state=training_state, config=config, metadata=info)


def load(path):
    """The model saved at ``path`` by :func:`save`, rebuilt from its config, weights loaded."""
    return load_checkpoint(path).model
