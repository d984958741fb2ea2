"""Fine-tune an ONNX classifier with cnnkit, end to end: import it, replace its head, train.

1. the classifier: ``--onnx MODEL.onnx`` (a Model Zoo file, a PyTorch or Keras export: any
   classifier whose head is a fully connected layer), or, without it, one made here the way most
   files are made: a small CNN trained on digits 0-4 and written as ONNX at a fixed batch size
   of 1 with a final softmax;
2. ``cnnkit.onnx.load`` turns it into a trainable Graph (a fixed-batch file runs at any batch
   size), ``cnnkit.onnx.strip_softmax`` makes it output logits, and ``cnnkit.finetune.replace_head``
   swaps its classifier for a new one with the dataset's classes;
3. the head (``--train all``: the whole network) trains on a cnnkit dataset; the test accuracy is
   printed before and after. Images are resized (nearest) and their channels repeated to fit
   the model's input when they differ.

Run::

    python examples/finetune_onnx.py                            # digits 5-9, bundled with scikit-learn
    python examples/finetune_onnx.py --onnx model.onnx --dataset cifar10 --data-dir /work/shared/data
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import cnnkit
import cnnkit.onnx
from cnnkit import finetune
from cnnkit.data import DataLoader, load
from cnnkit.data.dataset import Dataset
from cnnkit.nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Softmax
from cnnkit.optim import SGD
from cnnkit.train import Trainer


def subset(dataset: Dataset, wanted) -> Dataset:
    """The images whose label is in ``wanted``, relabelled 0..len(wanted)-1."""
    keep = np.flatnonzero(np.isin(dataset.labels, list(wanted)))
    relabel = {label: i for i, label in enumerate(wanted)}
    labels = np.array([relabel[int(v)] for v in dataset.labels[keep]], dtype=np.int64)
    return Dataset(dataset.images[keep], labels, [dataset.classes[w] for w in wanted], dataset.name)


def fit_to(dataset: Dataset, shape) -> Dataset:
    """Resize (nearest) and repeat the channels of ``dataset`` to one sample ``shape`` (C, H, W)."""
    c, h, w = shape
    images = dataset.images
    if images.shape[2:] != (h, w):
        rows = np.arange(h) * images.shape[2] // h
        cols = np.arange(w) * images.shape[3] // w
        images = images[:, :, rows][:, :, :, cols]
    if images.shape[1] != c:
        if images.shape[1] != 1:
            raise ValueError(f"cannot turn {images.shape[1]}-channel images into the model's {c} channels")
        images = np.repeat(images, c, axis=1)
    return Dataset(np.ascontiguousarray(images), dataset.labels, dataset.classes, dataset.name)


def accuracy(model, dataset: Dataset) -> float:
    model.eval()
    correct = 0
    with cnnkit.no_grad():
        for x, y in DataLoader(dataset, 256):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)


def train(model, dataset: Dataset, epochs: int, lr: float) -> None:
    optimizer = SGD(finetune.trainable_parameters(model), lr=lr, momentum=0.9)
    Trainer(model, optimizer, progress=False).fit(DataLoader(dataset, 32, shuffle=True, seed=0), None, epochs)


def make_classifier(path: str, epochs: int) -> None:
    """A stand-in for a downloaded file: a CNN trained on digits 0-4, exported at batch 1."""
    train_set = subset(load("digits", "train"), range(5))
    model = Sequential(Conv2d(1, 16, 3, padding=1, generator=np.random.default_rng(0)), ReLU(), MaxPool2d(2),
                       Conv2d(16, 32, 3, padding=1, generator=np.random.default_rng(1)), ReLU(), Flatten(),
                       Linear(32 * 4 * 4, 64, generator=np.random.default_rng(2)), ReLU(),
                       Linear(64, 5, generator=np.random.default_rng(3)))
    start = time.perf_counter()
    train(model, train_set, epochs, lr=0.05)
    print(f"made the 'downloaded' classifier: trained on digits 0-4 ({len(train_set)} images, {epochs} epochs, "
          f"{time.perf_counter() - start:.1f}s), test accuracy {accuracy(model, subset(load('digits', 'test'), range(5))):.1%}")
    cnnkit.onnx.export(Sequential(*model.children(), Softmax(1)).eval(), path, (1, 8, 8), dynamic_batch=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--onnx", help="an ONNX classifier (default: make one, trained on digits 0-4)")
    p.add_argument("--dataset", default="digits", help="digits, mnist, fashion-mnist or cifar10 (default digits)")
    p.add_argument("--data-dir", help="where the dataset files are (default: cnnkit's data folder)")
    p.add_argument("--classes", default="5-9", help="label range to fine-tune on, e.g. 5-9 (default) or 0-9")
    p.add_argument("--train", choices=("head", "all"), default="head", help="train only the new head (default) or all")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    args = p.parse_args(argv)

    path = args.onnx
    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix="cnnkit-onnx-"), "classifier.onnx")
        make_classifier(path, epochs=5)

    graph = cnnkit.onnx.load(path)
    stripped = cnnkit.onnx.strip_softmax(graph)
    first, last = (int(v) for v in args.classes.split("-"))
    wanted = range(first, last + 1)
    train_set = subset(load(args.dataset, "train", root=args.data_dir), wanted)
    test_set = subset(load(args.dataset, "test", root=args.data_dir), wanted)
    train_set, test_set = fit_to(train_set, graph.input_shape), fit_to(test_set, graph.input_shape)
    head = finetune.find_head(graph)
    finetune.replace_head(graph, len(wanted), freeze_body=args.train == "head", generator=np.random.default_rng(4))
    trainable, total = finetune.count_parameters(graph)
    print(f"imported {os.path.basename(path)}: {len(graph.nodes)} nodes, batch size "
          f"{'any' if graph.batch_size is None else graph.batch_size}, final softmax {'removed' if stripped else 'none'}; "
          f"replaced head {head!r} with {len(wanted)} classes; training {trainable:,} of {total:,} parameters")
    before = accuracy(graph, test_set)
    start = time.perf_counter()
    train(graph, train_set, args.epochs, args.lr)
    after = accuracy(graph, test_set)
    print(f"fine-tuned on {args.dataset} classes {args.classes} ({len(train_set)} images, {args.epochs} epochs, "
          f"{time.perf_counter() - start:.1f}s): test accuracy {before:.1%} before -> {after:.1%} after "
          f"({len(test_set)} test images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
