"""Pieces shared by the sub-commands: argument types, model building from a name or a spec,
reading checkpoints and datasets with errors that name the file or the flag."""
from __future__ import annotations

import argparse
import inspect
import math
from pathlib import Path

from .errors import CommandError, UsageError, reading

# Registered for checkpoints and for Python, but not names to type: `spec` is built from a spec
# string (give the spec itself), `vgg` is the family (vgg11..vgg19 name its configurations).
GENERIC_MODEL_NAMES = {
    "spec": "give the spec itself, e.g. 'conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10'",
    "vgg": "name a configuration: vgg11, vgg13, vgg16 or vgg19 (or their _bn variants)",
}


# -- argument types (argparse turns their ArgumentTypeError into a one-line usage error) ---------
def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; argparse type with a clear message."""
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must look like 3x224x224, got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers like 3x224x224, got {text!r}")
    return shape


def _integer(text: str, least: int, rule: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1, "an integer >= 1")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


# -- models -------------------------------------------------------------------------------------
def model_names() -> list[str]:
    """The model names a user can type (the registry without its generic entries)."""
    from .. import models

    return [name for name in models.list_models() if name not in GENERIC_MODEL_NAMES]


def _parameters(name: str):
    from ..models.registry import constructor

    return inspect.signature(constructor(name)).parameters


def is_spec(text: str) -> bool:
    """A spec in the notes' vocabulary rather than a model name (it has words or ``conv5-6``)."""
    return " " in text.strip() or "," in text or "-" in text


def check_model_name(name_or_spec: str, flag: str | None = None) -> None:
    """Refuse names that are not models one can build from the name alone (``flag``: the option
    that gave it, for the message)."""
    given = f"{flag} {name_or_spec}" if flag else repr(name_or_spec)
    if name_or_spec in GENERIC_MODEL_NAMES:
        raise UsageError(f"{given} is not a model to build by name: {GENERIC_MODEL_NAMES[name_or_spec]}")
    if name_or_spec not in model_names() and not is_spec(name_or_spec):
        raise UsageError(f"{given}: unknown model; known models: {', '.join(model_names())} "
                         "(or give a spec such as 'conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10')")


def build_model(name_or_spec: str, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None,
                **kwargs):
    """A registered model by name, or a network from the notes' spec vocabulary
    (e.g. ``"conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10"``).

    ``seed`` seeds the initial weights (every zoo constructor, ``digitnet`` and specs take it):
    the same seed builds bit-identical weights.
    """
    from .. import models

    check_model_name(name_or_spec, "--model")
    seeded = {} if seed is None else {"seed": int(seed)}
    if name_or_spec in models.list_models():
        params = _parameters(name_or_spec)
        kw = {"num_classes": num_classes, **kwargs}
        if "in_channels" in params and input_shape:
            kw["in_channels"] = input_shape[0]
        if "seed" in params:
            kw.update(seeded)
        return models.create(name_or_spec, **kw)
    return models.create("spec", spec=name_or_spec, input_shape=tuple(input_shape), **seeded)


def model_and_shape(name_or_spec: str, input_shape, num_classes):
    """The model ``summary`` and ``profile`` look at: a zoo name (at its usual input unless
    ``--input``) or a spec (which needs ``--input``)."""
    from .. import models

    check_model_name(name_or_spec)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name_or_spec in model_names():
        return models.create(name_or_spec, **kwargs), tuple(input_shape or models.default_input_shape(name_or_spec))
    if input_shape is None:
        raise UsageError(f"the spec {name_or_spec!r} needs --input, e.g. --input 1x28x28")
    if num_classes is not None:
        raise UsageError("--num-classes does not apply to a spec: its last fc-N sets the classes")
    return models.create("spec", spec=name_or_spec, input_shape=tuple(input_shape)), tuple(input_shape)


def model_label(name_or_spec: str) -> str:
    """A short name for folders and messages: the model name, or ``spec`` for a spec."""
    return "spec" if is_spec(name_or_spec) and name_or_spec not in model_names() else name_or_spec


# -- checkpoints --------------------------------------------------------------------------------
def _shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def describe_checkpoint(path, config: dict) -> str:
    """``"runs/x/best.safetensors is lenet5 trained on mnist (1x28x28, 10 classes)"``."""
    config = config or {}
    name = config.get("name") or "a model"
    if name == "spec":
        spec = (config.get("kwargs") or {}).get("spec")
        name = f"the spec {spec!r}" if spec else "a spec model"
    facts = []
    if config.get("input_shape"):
        facts.append(_shape_text(config["input_shape"]))
    if config.get("classes"):
        facts.append(f"{len(config['classes'])} classes")
    trained = f" trained on {config['dataset']}" if config.get("dataset") else ""
    return f"{path} is {name}{trained}" + (f" ({', '.join(facts)})" if facts else "")


def load_checkpoint(path, flag: str | None = None):
    """``cnnkit.io.load_checkpoint(path)`` with one-line errors naming the file (and ``flag``)."""
    from .. import io

    hint = "give a checkpoint written by `cnnkit train` (best.safetensors or last.safetensors)"
    if flag:
        hint = f"{flag} needs a checkpoint written by `cnnkit train` (best.safetensors or last.safetensors)"
    with reading(path, "cnnkit checkpoint", hint):
        if Path(path).is_dir():
            raise IsADirectoryError(path)
        checkpoint = io.load_checkpoint(path)
    if not isinstance(checkpoint.config, dict):
        checkpoint.config = {}
    return checkpoint


def load_models(paths):
    """``(models, configs)`` for one checkpoint or an ensemble; an ensemble must agree on the
    dataset, the input shape and the classes (averaging other outputs means nothing)."""
    checkpoints = [load_checkpoint(p) for p in paths]
    models = [c.model for c in checkpoints]
    configs = [dict(getattr(m, "config", None) or c.config or {}) for m, c in zip(models, checkpoints)]
    first = configs[0]
    for path, config in zip(paths[1:], configs[1:]):
        for key in ("dataset", "input_shape", "classes"):
            if first.get(key) != config.get(key):
                raise UsageError(f"these checkpoints cannot form an ensemble: {describe_checkpoint(paths[0], first)}, "
                                 f"but {describe_checkpoint(path, config)}")
    return models, configs


def recorded_data_dir(config: dict):
    """The data folder a checkpoint's run read its dataset from (None: the default one)."""
    folder = (config or {}).get("data_dir")
    return folder if isinstance(folder, str) and folder else None


def run_data_dir(run_dir):
    """The data folder recorded by the checkpoints in ``run_dir`` (None when there is none)."""
    for name in ("best.safetensors", "last.safetensors"):
        path = Path(run_dir) / name
        if path.is_file():
            return recorded_data_dir(load_checkpoint(path).config)
    return None


# -- datasets -----------------------------------------------------------------------------------
def load_dataset(name: str, split: str, data_dir=None):
    """``cnnkit.data.load`` with errors that say which flag fixes them (``--data-dir``)."""
    from .. import data

    try:
        return data.load(name, split, root=data_dir)
    except data.DatasetNotFoundError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "not found"
        where = f"the folder --data-dir {data_dir}" if data_dir else f"{data.data_root(None)} (the default)"
        raise CommandError(f"{name} {split} data not found in {where}: {first_line} Pass --data-dir FOLDER "
                           f"with the official files in FOLDER/{name}/ (or set CNNKIT_DATA)") from exc
    except data.DatasetFormatError as exc:
        raise CommandError(f"{name} {split} data cannot be read: {' '.join(str(exc).split())}") from exc


def check_dataset_fits(path, config: dict, dataset_name: str, ds, flag: str = "--dataset") -> None:
    """Refuse a dataset whose images or classes the checkpoint's model cannot take, saying what
    the checkpoint is (instead of a layer's shape error from deep inside the model)."""
    config = config or {}
    recorded = config.get("input_shape")
    shape = tuple(ds.images.shape[1:])
    problems = []
    if recorded and tuple(recorded) != shape:
        problems.append(f"{_shape_text(shape)} images")
    if config.get("classes") and len(config["classes"]) != len(ds.classes):
        problems.append(f"{len(ds.classes)} classes")
    if problems:
        raise UsageError(f"{describe_checkpoint(path, config)}; {flag} {dataset_name} gives {' and '.join(problems)}")


def dataset_for(args, config: dict, path=None):
    """The dataset a command works on: ``--dataset`` if given, else the one the checkpoint was
    trained on, read from ``--data-dir`` if given, else from the folder the run recorded.
    Returns ``(name, dataset)`` with ``args.split`` loaded; refuses a dataset the model cannot take."""
    name = getattr(args, "dataset", None) or config.get("dataset")
    if not name:
        raise UsageError(f"{path or 'the checkpoint'} does not record its dataset: pass --dataset")
    data_dir = getattr(args, "data_dir", None) or recorded_data_dir(config)
    ds = load_dataset(name, args.split, data_dir)
    if path is not None:
        check_dataset_fits(path, config, name, ds)
    return name, ds
