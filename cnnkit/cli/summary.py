"""Per-layer table of a model: output shapes, parameters, multiply-adds, activation memory, and a
training-memory estimate for a batch size (computed from shapes alone, without running the model)."""
from __future__ import annotations

from .common import parse_shape


def add_arguments(p):
    p.add_argument("model", nargs="?", help="model name or spec (see --list)")
    p.add_argument("--input", type=parse_shape, help="input shape of one sample, e.g. 3x224x224 "
                   "(default: the model's usual input)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the training-memory estimate")
    p.add_argument("--num-classes", type=int, help="number of classes (default: the model's default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--list", action="store_true", help="list the model names and exit")


def run(args) -> int:
    import json

    from .. import models
    from ..summary import default_input_shape, summary

    if args.list or not args.model:
        print("\n".join(models.list_models()))
        return 0 if args.list else 2
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.model in models.list_models():
        model = models.create(args.model, **kwargs)
        shape = args.input or default_input_shape(args.model)
    else:
        if args.input is None:
            raise ValueError("a model spec needs --input, e.g. --input 1x28x28")
        model = models.create("spec", spec=args.model, input_shape=args.input)
        shape = args.input
    s = summary(model, shape, batch_size=args.batch_size)
    print(json.dumps(s.to_dict(), indent=1) if args.json else str(s))
    return 0
