"""Fine-tuning: "download a pretrained model and finetune it on your data".

* :func:`freeze` / :func:`unfreeze` set ``requires_grad`` on the parameters whose names match
  glob patterns (``"features.*"``, ``"layer[12].*"``, or a module prefix such as ``"layer1"``).
  Optimizers skip frozen parameters, layers skip their weight gradients, and ``Sequential`` /
  ``Graph`` skip the backward of a frozen prefix of the network altogether (nothing before the
  first trainable layer needs a gradient when the trainer asks for no input gradient).
* :func:`replace_head` swaps the classifier for one with ``num_classes`` outputs: ``fc``
  (ResNet, GoogLeNet), ``classifier.6`` (VGG, AlexNet), the last ``Linear`` otherwise (LeNet-5).
* :func:`param_groups` builds optimizer groups with their own learning rates, e.g. a small rate
  for the pretrained body and a large one for the new head.
* :func:`freeze_batchnorm` keeps BatchNorm layers in eval mode (running statistics, no updates)
  even when the trainer calls ``model.train()``.

The command line's options for these (``cnnkit train --init --freeze --freeze-bn --num-classes``)
live in :mod:`cnnkit.cli.finetune`.
"""
from __future__ import annotations

import fnmatch

import numpy as np

from .nn.linear import Linear
from .nn.module import Module


def _patterns(patterns) -> list[str]:
    if isinstance(patterns, str):
        patterns = [p for p in patterns.split(",") if p.strip()]
    patterns = [p.strip() for p in patterns]
    if not patterns:
        raise ValueError("give at least one name pattern, e.g. 'features.*' or 'layer1'")
    return patterns


def _matches(name: str, pattern: str) -> bool:
    """A glob on the parameter name, or a module prefix (``layer1`` matches ``layer1.0.conv1.weight``)."""
    return fnmatch.fnmatchcase(name, pattern) or name.startswith(pattern.rstrip(".") + ".")


def set_requires_grad(model: Module, patterns, requires_grad: bool) -> list[str]:
    """Set ``requires_grad`` on every parameter matching one of ``patterns``; returns their names.

    Raises ``ValueError`` when a pattern matches nothing (a typo would otherwise freeze nothing).
    """
    patterns = _patterns(patterns)
    named = list(model.named_parameters())
    changed = []
    for pattern in patterns:
        hits = [(n, p) for n, p in named if _matches(n, pattern)]
        if not hits:
            prefixes = sorted({n.split(".")[0] for n, _ in named})
            raise ValueError(f"pattern {pattern!r} matches no parameter; top-level names: {prefixes}")
        for name, p in hits:
            p.requires_grad = bool(requires_grad)
            if not requires_grad:
                p.grad = None
            if name not in changed:
                changed.append(name)
    return changed


def freeze(model: Module, patterns="*") -> list[str]:
    """Freeze the parameters matching ``patterns`` (glob(s) or module prefixes; default: all)."""
    return set_requires_grad(model, patterns, False)


def unfreeze(model: Module, patterns="*") -> list[str]:
    """Unfreeze the parameters matching ``patterns``."""
    return set_requires_grad(model, patterns, True)


def trainable_parameters(model: Module):
    """The parameters an optimizer should update (``requires_grad`` True)."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = sum(p.size for p in model.parameters())
    return sum(p.size for p in model.parameters() if p.requires_grad), total


# ---- heads ---------------------------------------------------------------------------------------


def _resolve(model: Module, dotted: str):
    """``(parent, attribute name, module)`` for a dotted module path, or ``None`` when absent."""
    parent, parts = model, dotted.split(".")
    for part in parts[:-1]:
        parent = getattr(parent, part, None)
        if not isinstance(parent, Module):
            return None
    child = getattr(parent, parts[-1], None)
    return (parent, parts[-1], child) if isinstance(child, Module) else None


# The head of each zoo family, by attribute path: tried in order.
HEAD_NAMES = ("fc", "classifier.6", "classifier")


def find_head(model: Module) -> str:
    """The dotted name of the classifier: ``fc``, ``classifier.6``, else the last ``Linear``."""
    for name in HEAD_NAMES:
        found = _resolve(model, name)
        if found is not None and isinstance(found[2], Linear):
            return name
    last = None
    for name, m in model.named_modules():
        if isinstance(m, Linear) and name:
            last = name
    if last is None:
        raise ValueError(f"{type(model).__name__} has no Linear classifier to replace")
    return last


def replace_head(model: Module, num_classes: int, *, head: str | None = None, generator=None,
                 freeze_body: bool = False) -> Module:
    """Replace the classifier with a fresh ``Linear(in_features, num_classes)``; returns the model.

    ``head`` names the layer (default: :func:`find_head`: ``fc`` for ResNet/GoogLeNet,
    ``classifier.6`` for VGG/AlexNet, the last ``Linear`` for LeNet-5 and others). With
    ``freeze_body=True`` every other parameter is frozen (train the head only). The model's
    ``config`` (used by checkpoints) records the new ``num_classes``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"replace_head: num_classes must be a positive int, got {num_classes!r}")
    name = head or find_head(model)
    found = _resolve(model, name)
    if found is None or not isinstance(found[2], Linear):
        raise ValueError(f"replace_head: {name!r} is not a Linear layer of {type(model).__name__}")
    parent, attr, old = found
    new = Linear(old.in_features, int(num_classes), bias=old.bias is not None, dtype=old.weight.dtype,
                 generator=generator)
    setattr(parent, attr, new)
    config = getattr(model, "config", None)
    if isinstance(config, dict):
        kwargs = config.get("kwargs") if isinstance(config.get("kwargs"), dict) else config
        kwargs["num_classes"] = int(num_classes)
    if freeze_body:
        freeze(model)
        new.requires_grad_(True)
    return model


# ---- optimizer groups and BatchNorm ---------------------------------------------------------------


def param_groups(model: Module, lrs: dict, default_lr: float | None = None) -> list[dict]:
    """Optimizer parameter groups by name pattern: ``{"fc": 1e-2, "layer4": 1e-3}``.

    Each trainable parameter joins the group of the first pattern it matches; the rest form a
    last group with ``default_lr`` (omitted when ``default_lr`` is None: they are not trained).
    Pass the result to any optimizer: ``SGD(param_groups(model, {"fc": 0.01}, 0.001), lr=0.001)``.
    """
    groups = [{"params": [], "lr": float(lr), "pattern": pattern} for pattern, lr in lrs.items()]
    rest = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        for group in groups:
            if _matches(name, group["pattern"]):
                group["params"].append(p)
                break
        else:
            rest.append(p)
    for group in groups:
        if not group["params"]:
            raise ValueError(f"param_groups: pattern {group['pattern']!r} matches no trainable parameter")
        del group["pattern"]
    if default_lr is not None and rest:
        groups.append({"params": rest, "lr": float(default_lr)})
    return groups


def _batchnorms(model: Module) -> list[Module]:
    from .nn.normalization import BatchNorm1d, BatchNorm2d

    return [m for m in model.modules() if isinstance(m, (BatchNorm1d, BatchNorm2d))]


def freeze_batchnorm(model: Module, freeze_affine: bool = True) -> Module:
    """Keep every BatchNorm in eval mode while fine-tuning: normalise with the pretrained running
    statistics and never update them, even after ``model.train()`` (small fine-tuning batches make
    poor statistics). With ``freeze_affine`` their ``weight``/``bias`` are frozen too.

    Sets ``eval_locked`` on each BatchNorm, which ``Module.train`` respects; undone by
    :func:`unfreeze_batchnorm`.
    """
    for m in _batchnorms(model):
        m.eval_locked = True
        m.training = False
        if freeze_affine:
            m.requires_grad_(False)
    return model


def unfreeze_batchnorm(model: Module) -> Module:
    """Undo :func:`freeze_batchnorm` (BatchNorm follows ``train()``/``eval()`` again)."""
    for m in _batchnorms(model):
        m.eval_locked = False
        m.training = model.training
        m.requires_grad_(True)
    return model


def load_pretrained(model: Module, state: dict, *, skip_mismatched: bool = True) -> list[str]:
    """Load ``state`` into ``model`` keeping the entries whose shapes fit; returns the skipped keys.

    Meant for a new head: a 1000-class checkpoint into a 10-class model loads everything but
    ``fc.weight``/``fc.bias``. With ``skip_mismatched=False`` it is ``load_state_dict(strict=True)``.
    """
    if not skip_mismatched:
        model.load_state_dict(state)
        return []
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and tuple(np.shape(v)) == tuple(np.shape(own[k]))}
    skipped = [k for k in state if k not in keep] + [k for k in own if k not in state]
    model.load_state_dict(keep, strict=False)
    return skipped



# ---- weights from a file ------------------------------------------------------------------------


def read_weights(path) -> dict:
    """A state dict from a cnnkit checkpoint or from a plain weights file (``.pth``, ``.safetensors``,
    ``.npz``); ``cnnkit train --init`` reads its file with this."""
    from . import io

    try:
        return dict(io.load_checkpoint(path).model.state_dict())
    except (KeyError, ValueError, TypeError):
        return dict(io.load_state_dict(path))
