"""What a run of ``cnnkit train`` is: its settings, how a new run gets them (the dataset's recipe,
``default`` or the one ``--recipe`` names, plus the flags given) and how ``--resume`` gets them
back from the checkpoint.

Every checkpoint a run writes records, in the model's ``config``: ``dataset``, ``input_shape``,
``classes``, ``data_dir`` (the absolute data folder, None for the bundled digits) and ``train`` —
the settings below. ``cnnkit train --resume CKPT`` therefore needs nothing else: a flag that
contradicts the recorded run is refused; ``--epochs`` may set a new total and ``--data-dir`` a
new place for the same data.
"""
from __future__ import annotations

import math
from pathlib import Path

from .errors import UsageError

# Settings a new run takes from the flags when given, else from the recipe or these defaults. A run
# recorded before a setting existed gets its default here when resumed.
DEFAULTS = dict(recipe="default", warmup_epochs=0, val_split=0.1, limit=None, seed=0, early_stop=None,
                diagnostics=None, num_classes=None, init=None, freeze=None, freeze_bn=False, nesterov=False,
                flip="random", label_smoothing=0.0, ema=0.0, tta=False)
RECIPE_KEYS = ("model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "augment")
SETTINGS = RECIPE_KEYS + tuple(DEFAULTS)
# Flags a resumed run may give although the checkpoint recorded them.
RESUME_MAY_CHANGE = ("epochs",)


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _dataset_and_recipe(args) -> tuple[str, str]:
    """``--dataset`` and ``--recipe`` with their defaults: digits, or the one dataset that has the
    recipe named; the recipe ``default``."""
    from ..train.recipes import DEFAULT, datasets_with, recipe_names

    name = getattr(args, "recipe", None) or DEFAULT
    dataset = args.dataset
    if dataset is None:
        having = datasets_with(name) if name != DEFAULT else ["digits"]
        if len(having) != 1:
            raise UsageError(f"--recipe {name}: " + ("no dataset has a recipe of that name" if not having else
                             f"{', '.join(having)} have a recipe of that name; choose one with --dataset"))
        dataset = having[0]
    if name not in recipe_names(dataset):
        raise UsageError(f"--recipe {name}: no such recipe for {dataset}; its recipes: {', '.join(recipe_names(dataset))}")
    return dataset, name


def new_run_settings(args) -> dict:
    """The settings of a new run: the recipe (``--recipe``, else ``default``) of the dataset,
    overridden by the flags given."""
    from ..train.recipes import recipe

    dataset, name = _dataset_and_recipe(args)
    settings = {"dataset": dataset, **DEFAULTS, **recipe(dataset, name), "recipe": name}
    for key in SETTINGS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    settings["schedule_epochs"] = settings["epochs"]
    validate(settings)
    return settings


def resumed_run_settings(args, checkpoint, path) -> dict:
    """The settings recorded in ``checkpoint`` (read from ``path``), with ``--epochs`` applied;
    refuses flags that contradict them."""
    from .common import describe_checkpoint

    config = checkpoint.config or {}
    recorded = config.get("train")
    if not isinstance(recorded, dict) or not config.get("dataset"):
        raise UsageError(f"--resume {path}: the file does not record the run that wrote it (not written by "
                         f"`cnnkit train`); start a new run from its weights with --init {path}")
    if checkpoint.training_state is None:
        raise UsageError(f"--resume {path}: the file holds weights only, no training state; start a new run "
                         f"from them with --init {path}")
    settings = {**DEFAULTS, **recorded, "dataset": config["dataset"]}
    settings.setdefault("schedule_epochs", settings.get("epochs"))
    conflicts = []
    if args.dataset is not None and args.dataset != settings["dataset"]:
        conflicts.append(f"--dataset {args.dataset} (the run's is {settings['dataset']})")
    for key in SETTINGS:
        value = getattr(args, key, None)
        if key in RESUME_MAY_CHANGE or value is None:
            continue
        if key == "init":
            conflicts.append(f"--init {value} (a resumed run continues from the checkpoint's weights)")
        elif value != settings.get(key):
            conflicts.append(f"{_flag(key)} {_show(value)} (the run's is {_show(settings.get(key))})")
    run_folder = Path(path).parent
    if args.out is not None and Path(args.out).resolve() != run_folder.resolve():
        conflicts.append(f"--out {args.out} (a resumed run continues in its folder {run_folder})")
    if conflicts:
        raise UsageError(f"{describe_checkpoint(path, config)}; --resume takes the run's settings from it, and these "
                         f"flags contradict them: {'; '.join(conflicts)}. Drop them, or start a new run without --resume")
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    validate(settings)
    return settings


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def validate(settings: dict) -> None:
    """Refuse settings no run can use, naming the flag (not the optimizer's or scheduler's internals)."""
    if not settings["lr"] > 0:
        raise UsageError(f"--lr must be > 0, got {settings['lr']}")
    for key in ("momentum", "weight_decay"):
        value = settings[key]
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise UsageError(f"{_flag(key)} must be a number >= 0, got {value}")
    if settings["nesterov"] and (settings["optimizer"] != "sgd" or not settings["momentum"] > 0):
        raise UsageError(f"--nesterov needs --optimizer sgd with --momentum > 0, got --optimizer {settings['optimizer']} "
                         f"--momentum {settings['momentum']}")
    if not 0 <= settings["label_smoothing"] < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {settings['label_smoothing']}")
    if not 0 <= settings["ema"] < 1:
        raise UsageError(f"--ema must be a decay in [0, 1) (e.g. 0.99; 0 for none), got {settings['ema']}")
    if not 0 <= settings["val_split"] < 1:
        raise UsageError(f"--val-split must be in [0, 1), got {settings['val_split']}")
    warmup, epochs = settings["warmup_epochs"], settings["schedule_epochs"]
    if warmup and warmup >= epochs:
        raise UsageError(f"--warmup-epochs {warmup} must be fewer than the run's {epochs} epochs (--epochs), "
                         "or the schedule after the warmup never starts")
    if warmup and settings["schedule"] in ("onecycle", "plateau"):
        raise UsageError(f"--warmup-epochs cannot be combined with --schedule {settings['schedule']} "
                         "(onecycle has its own warmup; plateau follows the validation accuracy)")
