"""The ``cnnkit`` command line. Each sub-command lives in its own module and registers itself here
with ``add_arguments(parser)`` and ``run(args) -> exit code``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError, one_line

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
    "info": ("cnnkit.cli.info", "version, active kernel backend (NumPy or oneDNN) and why, threads, layout"),
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
  cnnkit train --resume runs/digits-digitnet/last.safetensors   # continue a run as it was

errors are one line; exit codes: 0 done, 1 the command failed, 2 wrong command line, 130 interrupted
(--debug or CNNKIT_DEBUG=1 shows the traceback)
"""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``cnnkit train: error: argument --limit: ... (see --help)``
    raised as :class:`UsageError` so that ``main`` returns 2 instead of exiting the interpreter."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def _add_debug(parser) -> None:
    # Listed in --help; main() takes --debug out of the arguments before parsing, so it works anywhere.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error (also: CNNKIT_DEBUG=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cnnkit", description="Convolutional neural networks in NumPy: train, evaluate, inspect.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        _add_debug(p)
        p.set_defaults(_run=module.run)
    return parser


def _debug_wanted(argv) -> bool:
    return "--debug" in argv or os.environ.get("CNNKIT_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run ``cnnkit ARGV``; returns the exit code (0 ok, 1 the command failed, 2 bad usage,
    130 interrupted). Failures print one line on stderr; ``--debug`` raises them instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = _debug_wanted(argv)
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere, also after `viz PICTURE`
    command = next((a for a in argv if a in COMMANDS), None)
    prog = f"cnnkit {command}" if command else "cnnkit"
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        prog = f"cnnkit {args.command}" if args.command else prog
        if unknown:
            picture = getattr(args, "picture", None)
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)} "
                             f"(see {prog}{' ' + picture if picture else ''} --help)")
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args._run(args) or 0)
    except BrokenPipeError:  # `cnnkit summary vgg16 | head`: the reader left; nothing to say
        try:  # and no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line (or a traceback with --debug)
        if debug:
            raise
        message, code = one_line(exc)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return code
