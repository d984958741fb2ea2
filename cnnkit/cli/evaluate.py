"""Evaluate one checkpoint, or an ensemble of several (their softmax outputs are averaged, as in
the notes' AlexNet recipe), on a dataset split: accuracy, per-class accuracy, confusion matrix.

--tta averages each model's softmax over every image and its mirror image (test-time augmentation,
as the CIFAR-10 speed-runs do): a second forward pass per image, usually a point or two of accuracy
for a network trained with flips. Not for classes a mirror changes (digits, letters)."""
from __future__ import annotations

import numpy as np

from .common import dataset_for, load_models, positive_int


def add_arguments(p):
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint file(s); several = an ensemble "
                   "(they must be trained on the same dataset)")
    p.add_argument("--dataset", help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--data-dir", help="folder holding the dataset files (default: the one the run recorded)")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--tta", action="store_true", help="average each model over the image and its horizontal mirror "
                   "(test-time augmentation; prints the accuracy without it too)")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..data import DataLoader
    from ..data.transforms import Normalize
    from ..train import confusion_matrix, per_class_accuracy, predict_proba
    from ..train.tta import FlipAveraged

    models, configs = load_models(args.checkpoints)
    dataset, ds = dataset_for(args, configs[0], args.checkpoints[0])
    loader = DataLoader(ds, args.batch_size, transform=Normalize.for_dataset(dataset))
    plain_models = models
    if args.tta:
        models = [FlipAveraged(m) for m in models]
    # one pass per model; the ensemble's average of their probabilities is predict_proba(models)'s
    single = [predict_proba([m], loader) for m in models]
    labels = single[0][1]
    probs = sum(p for p, _ in single) / len(models)
    pred = probs.argmax(axis=1)
    k = len(ds.classes)
    cm = confusion_matrix(labels, pred, k)
    per_class = per_class_accuracy(cm)

    console = Console(soft_wrap=True)  # long paths stay on one line
    what = "ensemble of %d models" % len(models) if len(models) > 1 else args.checkpoints[0]
    tta = " with flip TTA" if args.tta else ""
    console.print(f"{what} on {dataset} {args.split} ({len(ds)} images): accuracy{tta} "
                  f"[bold]{np.mean(pred == labels):.2%}[/]")
    if args.tta:
        plain, _ = predict_proba(plain_models, loader)
        console.print(f"  without TTA: {np.mean(plain.argmax(1) == labels):.2%}")
    if len(models) > 1:
        for path, (p1, _) in zip(args.checkpoints, single):
            console.print(f"  {path}: {np.mean(p1.argmax(1) == labels):.2%}{tta}")
    table = Table(title="per-class accuracy and confusion matrix (rows: true, columns: predicted)")
    table.add_column("class")
    table.add_column("acc", justify="right")
    for j in range(k):
        table.add_column(str(j), justify="right")
    for i, name in enumerate(ds.classes):
        table.add_row(f"{i} {name}", f"{per_class[i]:.1%}", *[str(v) for v in cm[i]])
    console.print(table)
    return 0
