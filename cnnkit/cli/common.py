"""Pieces shared by the sub-commands: shape parsing, model building from a name or a spec."""
from __future__ import annotations

import argparse


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> ``(3, 224, 224)``; argparse type with a clear message."""
    try:
        shape = tuple(int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"input shape must look like 3x224x224, got {text!r}") from None
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"input shape must be positive integers like 3x224x224, got {text!r}")
    return shape


def build_model(name_or_spec: str, input_shape: tuple[int, ...], num_classes: int, **kwargs):
    """A registered model by name, or a network from the notes' spec vocabulary
    (e.g. ``"conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10"``)."""
    from .. import models

    if name_or_spec in models.list_models():
        kw = {"num_classes": num_classes, **kwargs}
        if "in_channels" in _parameters(name_or_spec) and input_shape:
            kw["in_channels"] = input_shape[0]
        return models.create(name_or_spec, **kw)
    if " " in name_or_spec.strip() or "-" in name_or_spec:
        return models.create("spec", spec=name_or_spec, input_shape=tuple(input_shape))
    raise ValueError(f"unknown model {name_or_spec!r}; known models: {', '.join(models.list_models())} "
                     "(or give a spec such as 'conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10')")


def _parameters(name: str):
    import inspect

    from ..models.registry import _MODELS

    return inspect.signature(_MODELS[name]).parameters


def dataset_for(args, config: dict):
    """The dataset a command works on: ``--dataset`` if given, else the one the checkpoint was
    trained on. Returns ``(name, dataset)`` with ``args.split`` loaded from ``args.data_dir``."""
    from .. import data

    name = getattr(args, "dataset", None) or config.get("dataset")
    if not name:
        raise ValueError("the checkpoint does not record its dataset: pass --dataset")
    return name, data.load(name, args.split, root=args.data_dir)
