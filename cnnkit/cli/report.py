"""(Re)build RUN_DIR/report.html from a run folder of `cnnkit train`: for older runs, runs made
with --no-report, or after moving the data.

The page shows the test accuracy, loss and top-5 (where it applies) of one evaluation of the best
checkpoint on the whole test set, the best epoch, wall time, images/s and the run's settings
(from results.json), the training curves, the per-layer diagnostics (with --diagnostics), the
confusion matrix, per-class accuracy/precision/recall, the most confused pairs with misclassified
images, the first layer's filters and activation maps. It is one self-contained file: it opens
offline and survives a moved folder.

examples:
  cnnkit report runs/digits-digitnet
  cnnkit report runs/mnist-lenet5 --data-dir /data      # if the data moved since training
  cnnkit report runs/mnist-lenet5 --checkpoint last --examples 4
"""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (holds history.json, results.json, best.safetensors)")
    p.add_argument("--data-dir", help="folder holding the dataset files (default: the one the run used, from "
                   "results.json; else $CNNKIT_DATA or ~/.cache/cnnkit); nothing is downloaded")
    p.add_argument("--checkpoint", default=None, help="which weights to show: best, last or a file name in RUN_DIR "
                   "(default: best, else last)")
    p.add_argument("--examples", type=int, default=2, help="test images shown layer by layer (default %(default)s)")


def build_report(args):
    from ..viz.report import write_report

    if args.examples < 0:
        raise ValueError(f"--examples must be >= 0, got {args.examples}")
    from .common import run_data_dir

    data_dir = args.data_dir or run_data_dir(args.run_dir)  # the folder the run recorded, unless told
    return write_report(args.run_dir, data_dir=data_dir, checkpoint=args.checkpoint, examples=args.examples,
                        log=lambda message: print(message, flush=True))


def run(args) -> int:
    path = build_report(args)
    print(f"report: {path}")
    return 0
