"""The ``cnnkit`` command line. Each sub-command lives in its own module and registers itself here
with ``add_arguments(parser)`` and ``run(args) -> exit code``."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "train": ("cnnkit.cli.train", "train a model on a dataset (no arguments: a small ConvNet on the bundled digits)"),
    "evaluate": ("cnnkit.cli.evaluate", "accuracy, per-class accuracy and confusion matrix of checkpoint(s)"),
    "predict": ("cnnkit.cli.predict", "top-k classes of image files under checkpoint(s)"),
    "summary": ("cnnkit.cli.summary", "per-layer shapes, parameters, multiply-adds and memory of a model"),
    "profile": ("cnnkit.cli.profile", "per-layer time, GFLOP/s, %% of sgemm peak, conv algorithm and data-movement/GEMM split"),
    "export": ("cnnkit.cli.export", "write a checkpoint or zoo model as an ONNX file (checked against onnxruntime)"),
    "viz": ("cnnkit.cli.viz", "pictures: filters, activation maps, patches, saliency, conv demo, curves, report"),
    "report": ("cnnkit.cli.report", "(re)build RUN_DIR/report.html: test results, settings, curves, confusion matrix"),
}

EPILOG = """examples:
  cnnkit train                                   # small ConvNet on the bundled 8x8 digits (seconds)
  cnnkit train --dataset mnist --data-dir DIR    # LeNet-5 on MNIST (files in DIR/mnist/)
  cnnkit evaluate runs/digits-digitnet/best.safetensors
  cnnkit predict runs/digits-digitnet/best.safetensors my_digit.png
  cnnkit summary vgg16 --input 3x224x224
  cnnkit profile resnet20 --batch-size 128
  cnnkit viz activations runs/digits-digitnet/best.safetensors test:0
  cnnkit report runs/digits-digitnet             # (re)build the run's report.html
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit", description="Convolutional neural networks in NumPy: train, evaluate, inspect.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, TypeError, RuntimeError, OSError) as exc:
        # Users get the sentence, not a traceback; CNNKIT_DEBUG=1 shows the traceback.
        import os

        if os.environ.get("CNNKIT_DEBUG"):
            raise
        print(f"cnnkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
