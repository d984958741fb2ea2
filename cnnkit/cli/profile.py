"""Where a model spends its time: per-layer forward/backward milliseconds, GFLOP/s and % of the
machine's sgemm rate, the convolution algorithm chosen, and the split between data movement
(im2col, col2im, transposes) and GEMM. Like `caffe time`, with the reasons.

examples:
  cnnkit profile resnet20 --batch-size 128
  cnnkit profile lenet5 --input 1x28x28 --inference
  cnnkit profile resnet18 --batch-size 16 --json
"""
from __future__ import annotations

from .common import model_and_shape, nonnegative_int, parse_shape, positive_int
from .errors import UsageError


def add_arguments(p):
    p.add_argument("model", help="model name (see `cnnkit summary --list`) or a spec with --input")
    p.add_argument("--input", type=parse_shape, help="input shape of one sample, e.g. 3x32x32 "
                   "(default: the model's usual input)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--num-classes", type=positive_int, help="number of classes (default: the model's default)")
    p.add_argument("--repeat", type=positive_int, default=5, help="timed steps; medians are reported (default 5)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--inference", action="store_true", help="time eval-mode forward passes only")
    p.add_argument("--algorithm", choices=("auto", "im2col", "flat"),
                   help="force one convolution algorithm in every Conv2d (default: each layer's own)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    from ..nn.conv import Conv2d
    from ..profile import profile

    for flag, value in (("--batch-size", args.batch_size), ("--repeat", args.repeat)):
        if value < 1:  # argparse checks these; run() may also be called with a Namespace
            raise UsageError(f"{flag} must be >= 1, got {value}")
    model, shape = model_and_shape(args.model, args.input, args.num_classes)
    if args.algorithm:
        for m in model.modules():
            if isinstance(m, Conv2d) and (args.algorithm != "flat" or m.groups == 1):
                m.algorithm = args.algorithm
    result = profile(model, tuple(shape), args.batch_size, repeat=args.repeat, warmup=args.warmup,
                     backward=not args.inference)
    print(result.to_json(indent=1) if args.json else result)
    return 0
