"""The fine-tuning options of ``cnnkit train``: ``--init``, ``--freeze``, ``--freeze-bn``,
``--num-classes`` (the library side is :mod:`cnnkit.finetune`)."""
from __future__ import annotations

from .common import positive_int
from .errors import UsageError, reading


def add_finetune_arguments(p) -> None:
    p.add_argument("--init", metavar="CKPT_OR_PTH", help="start from these weights (a cnnkit checkpoint, or a "
                   ".pth/.safetensors/.npz state dict such as torchvision's); entries whose shape differs "
                   "(the old classifier) are skipped and stay freshly initialised")
    p.add_argument("--freeze", metavar="PATTERN", action="append", help="freeze the parameters matching this "
                   "glob or module prefix, e.g. 'features' or 'layer[1-3].*' (repeatable, or comma-separated)")
    p.add_argument("--freeze-bn", action="store_true", default=None, help="keep BatchNorm layers in eval mode "
                   "with frozen statistics and affine parameters while fine-tuning")
    p.add_argument("--num-classes", type=positive_int, help="size of the classifier (default: the dataset's classes)")


def apply_init(model, path) -> None:
    """``--init PATH``: load the arrays of ``path`` that fit ``model``; refuse a file none of whose
    arrays fit (a typo'd or foreign file would otherwise train from scratch without a word)."""
    from ..finetune import load_pretrained, read_weights

    with reading(path, "weights file", "--init needs a cnnkit checkpoint or a .pth/.safetensors/.npz state dict"):
        weights = read_weights(path)
    own = model.state_dict()
    skipped = load_pretrained(model, weights)
    loaded = [k for k in own if k not in skipped]
    if not [k for k in loaded if not k.endswith("num_batches_tracked")]:  # a counter fits anything
        name = (getattr(model, "config", None) or {}).get("name") or type(model).__name__
        examples = ", ".join(list(weights)[:3]) or "nothing"
        raise UsageError(f"--init {path}: none of its {len(weights)} arrays fits {name} (names or shapes differ; "
                         f"the file holds {examples}{', ...' if len(weights) > 3 else ''}): is it the right file for "
                         "this --model?")
    kept_fresh = [k for k in skipped if k in own]
    print(f"initialised {len(loaded)} of {len(own)} arrays from {path}"
          + (f"; kept fresh: {', '.join(kept_fresh)}" if kept_fresh else ""))


def apply_freezing(model, freeze, freeze_bn) -> None:
    """``--freeze PATTERN`` and ``--freeze-bn``."""
    from ..finetune import count_parameters, freeze as freeze_parameters, freeze_batchnorm

    if freeze:
        try:
            names = freeze_parameters(model, ",".join(freeze))
        except ValueError as exc:
            raise UsageError(f"--freeze: {exc}") from None
        trainable, total = count_parameters(model)
        print(f"froze {len(names)} parameter arrays; training {trainable:,} of {total:,} parameters")
    if freeze_bn:
        freeze_batchnorm(model)
