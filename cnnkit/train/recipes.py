"""Training recipes: what ``cnnkit train --dataset NAME [--recipe RECIPE]`` does unless told otherwise.

The notes' recipe: mini-batch SGD with momentum 0.9, L2 weight decay, a learning rate that drops when
validation accuracy stalls (here: cosine or step schedules, or ``plateau``), He initialisation,
data augmentation for natural images.

Each dataset has a ``default`` recipe and may have named ones (``--recipe fast``). A recipe is the
settings of a run (any ``cnnkit train`` flag given on the command line overrides its value) plus
what it was measured to give on this project's 2-core machine (``expected``), which ``--help``
prints so that a user knows the time and accuracy before starting. Every figure there comes from
``benchmarks/accuracy.py`` (accuracy, wall time, and the time per epoch
projected to the full dataset); see BENCHMARKS.md for the commands and the dates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT = "default"


@dataclass(frozen=True)
class Recipe:
    """A named recipe: ``settings`` (flag name with ``_`` -> value) and ``expected`` (measured figures)."""

    dataset: str
    name: str
    settings: dict = field(default_factory=dict)
    about: str = ""
    expected: str = ""

    def describe(self) -> str:
        """One line for ``--help``: the name, what it is and what it was measured to give."""
        parts = [f"{self.dataset} {self.name}: {self.about}"]
        if self.expected:
            parts.append(self.expected)
        return "; ".join(parts)


_R = Recipe
RECIPES: dict[str, dict[str, Recipe]] = {
    "digits": {DEFAULT: _R("digits", DEFAULT, dict(
        model="digitnet", epochs=10, batch_size=32, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        schedule="cosine", augment=False),
        about="the main job: a small ConvNet on scikit-learn's 8x8 digits",
        expected="measured: 98.1% test accuracy in 0.1 min on digits")},
    # LeNet-5 (LeCun et al. 1998 report 99.05% on MNIST).
    "mnist": {DEFAULT: _R("mnist", DEFAULT, dict(
        model="lenet5", epochs=8, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        schedule="cosine", augment=False),
        about="LeNet-5, 8 epochs",
        expected="measured: 99.2% test accuracy in 0.7 min on mnist")},
    "fashion-mnist": {DEFAULT: _R("fashion-mnist", DEFAULT, dict(
        model="lenet5", epochs=10, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        schedule="cosine", augment=False),
        about="LeNet-5, 10 epochs",
        expected="measured: 90.6% test accuracy in 0.9 min on fashion-mnist")},
    "cifar10": {
        # He et al. 2015, section 4.2: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, crop+flip augmentation.
        DEFAULT: _R("cifar10", DEFAULT, dict(
            model="resnet20", epochs=30, batch_size=128, lr=0.1, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
            schedule="cosine", augment=True),
            about="ResNet-20 with the paper's SGD settings (He et al. 2015), 30 epochs",
            expected=("measured: 73.7% test accuracy in 9.6 min on CIFAR-10 subset (8k/1k); full CIFAR-10 "
                      "(50,000 images): 1.8 min/epoch, about 55 min in all (projected from its time per image)")),
        # The speed-run ingredients, measured on 2 CPU cores (BENCHMARKS.md, "A fast recipe"): FastNet
        # (airbench's layout at CPU widths, whitened first layer), augmentation, Nesterov SGD and flip
        # test-time averaging pay; label smoothing and the EMA of the weights came out even.
        "fast": _R("cifar10", "fast", dict(
            model="fastnet", epochs=20, batch_size=256, lr=1.6, optimizer="sgd", momentum=0.9, nesterov=True,
            weight_decay=5e-4, schedule="onecycle", augment=True, label_smoothing=0.2, ema=0.99, tta=True,
            val_split=0.05),
            about="FastNet (whitened first layer), Nesterov SGD, label smoothing 0.2, EMA 0.99, flip TTA",
            expected=("measured: 82.4% test accuracy (flip TTA, ± 0.5 over 3 seeds) in 2.4 min on CIFAR-10 subset "
                      "(8k/1k); full CIFAR-10 (50,000 images): 0.7 min/epoch, about 14 min in all (projected from "
                      "its time per image)")),
    },
}


def recipe_names(dataset: str) -> list[str]:
    """The recipes of ``dataset``, ``default`` first."""
    _check_dataset(dataset)
    return list(RECIPES[dataset])


def get_recipe(dataset: str, name: str = DEFAULT) -> Recipe:
    """The ``Recipe`` called ``name`` for ``dataset``; unknown names list the known ones."""
    _check_dataset(dataset)
    if name not in RECIPES[dataset]:
        raise ValueError(f"no recipe {name!r} for dataset {dataset!r}; its recipes: {', '.join(RECIPES[dataset])}")
    return RECIPES[dataset][name]


def recipe(dataset: str, name: str = DEFAULT) -> dict:
    """The settings of recipe ``name`` for ``dataset`` (a fresh dict)."""
    return dict(get_recipe(dataset, name).settings)


def datasets_with(name: str) -> list[str]:
    """The datasets that have a recipe called ``name``."""
    return [dataset for dataset, recipes in RECIPES.items() if name in recipes]


def all_recipes() -> list[Recipe]:
    return [r for recipes in RECIPES.values() for r in recipes.values()]


def _check_dataset(dataset: str) -> None:
    if dataset not in RECIPES:
        raise ValueError(f"no training recipe for dataset {dataset!r}; known: {', '.join(RECIPES)}")
