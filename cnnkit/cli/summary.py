"""Per-layer table of a model: output shapes, parameters, multiply-adds, activation memory, and a
training-memory estimate for a batch size (computed from shapes alone, without running the model)."""
from __future__ import annotations

from .common import parse_shape, positive_int


def add_arguments(p):
    from ..summary import OPTIMIZER_STATE

    p.add_argument("model", nargs="?", help="model name (see --list) or a spec such as 'conv5-6 maxpool "
                   "conv5-16 maxpool fc-120 fc-84 fc-10' (a spec needs --input)")
    p.add_argument("--input", type=parse_shape, help="input shape of one sample, e.g. 3x224x224 "
                   "(default: the model's usual input)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch size for the training-memory estimate")
    p.add_argument("--num-classes", type=positive_int, help="number of classes (default: the model's default)")
    p.add_argument("--optimizer", default="momentum", choices=sorted(OPTIMIZER_STATE),
                   help="optimizer whose state the training-memory estimate counts (default: SGD with momentum)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--list", action="store_true", help="list the model names and exit")


def run(args) -> int:
    import json

    from ..summary import summary
    from .common import model_and_shape, model_names

    if args.list or not args.model:
        print("\n".join(model_names()))
        return 0 if args.list else 2
    model, shape = model_and_shape(args.model, args.input, args.num_classes)
    s = summary(model, shape, batch_size=args.batch_size, optimizer=args.optimizer)
    print(json.dumps(s.to_dict(), indent=1) if args.json else str(s))
    return 0
