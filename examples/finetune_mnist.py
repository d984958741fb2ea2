"""Fine-tuning, the notes' advice ("download a pretrained model and finetune it on your data"), end to end:

1. train LeNet-5 on MNIST digits 0-4 (the "pretrained" model);
2. replace its head with a fresh 5-way classifier, freeze everything else, and train only the head on
   digits 5-9, reporting the accuracy on the test digits 5-9 before and after;
3. the same flow on a user's own images: an ``ImageFolder`` (one sub-folder per class).

Run (the MNIST files are read from --data-dir; nothing is downloaded)::

    python examples/finetune_mnist.py --data-dir /work/shared/data
    python examples/finetune_mnist.py --data-dir /work/shared/data --image-folder ~/my_digits
    python examples/finetune_mnist.py --data-dir /work/shared/data --demo-folder /tmp/digits_folder

``--demo-folder`` writes MNIST test digits 5-9 as PNG files into the given folder (outside the
repository) and runs step 3 on it, to show the ImageFolder flow without data of your own.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import cnnkit
from cnnkit import finetune
from cnnkit.data import DataLoader, load
from cnnkit.data.dataset import Dataset
from cnnkit.models import lenet5
from cnnkit.optim import SGD
from cnnkit.train import Trainer


def digits(dataset: Dataset, wanted, limit: int | None, seed: int = 0) -> Dataset:
    """The images of the digits in ``wanted``, relabelled 0..len(wanted)-1 (at most ``limit``)."""
    keep = np.flatnonzero(np.isin(dataset.labels, wanted))
    if limit is not None and limit < len(keep):
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    relabel = {d: i for i, d in enumerate(wanted)}
    labels = np.array([relabel[int(v)] for v in dataset.labels[keep]], dtype=np.int64)
    return Dataset(dataset.images[keep], labels, [str(d) for d in wanted], dataset.name)


def accuracy(model, dataset: Dataset) -> float:
    model.eval()
    correct = 0
    with cnnkit.no_grad():
        for x, y in DataLoader(dataset, 500):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)


def train(model, dataset: Dataset, epochs: int, lr: float, seed: int = 0):
    # only the trainable parameters reach the optimizer (frozen ones would be skipped anyway)
    optimizer = SGD(finetune.trainable_parameters(model), lr=lr, momentum=0.9)
    trainer = Trainer(model, optimizer, progress=False)
    trainer.fit(DataLoader(dataset, 64, shuffle=True, seed=seed), None, epochs)


def fine_tune_head(model, train_set: Dataset, test_set: Dataset, epochs: int, lr: float, label: str):
    finetune.replace_head(model, len(train_set.classes), freeze_body=True, generator=np.random.default_rng(1))
    trainable, total = finetune.count_parameters(model)
    before = accuracy(model, test_set)
    start = time.perf_counter()
    train(model, train_set, epochs, lr)
    after = accuracy(model, test_set)
    print(f"{label}: fine-tuned the head only ({trainable:,} of {total:,} parameters) on {len(train_set)} "
          f"images for {epochs} epochs in {time.perf_counter() - start:.1f}s: test accuracy "
          f"{before:.2%} before -> {after:.2%} after ({len(test_set)} test images)")
    return before, after


def write_demo_folder(test: Dataset, folder, per_class: int = 60) -> None:
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    for digit in range(5, 10):
        (folder / f"digit{digit}").mkdir(parents=True, exist_ok=True)
        for k, i in enumerate(np.flatnonzero(test.labels == digit)[:per_class]):
            Image.fromarray(test.images[i, 0]).save(folder / f"digit{digit}" / f"{k:03d}.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="folder with mnist/ (e.g. /work/shared/data)")
    p.add_argument("--pretrain-images", type=int, default=12000, help="training images of digits 0-4")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--finetune-images", type=int, default=2000, help="training images of digits 5-9")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--image-folder", help="your own ImageFolder to fine-tune on (grayscale, resized to 28x28)")
    p.add_argument("--demo-folder", help="write MNIST test digits 5-9 here as PNGs and fine-tune on them")
    args = p.parse_args(argv)

    train_all = load("mnist", "train", root=args.data_dir)
    test_all = load("mnist", "test", root=args.data_dir)

    # 1. the "pretrained" model: LeNet-5 on digits 0-4
    model = lenet5(num_classes=5, seed=0)
    start = time.perf_counter()
    train(model, digits(train_all, range(5), args.pretrain_images), args.pretrain_epochs, lr=0.05)
    print(f"pretrained LeNet-5 on digits 0-4 ({args.pretrain_images} images, {args.pretrain_epochs} epochs, "
          f"{time.perf_counter() - start:.1f}s): test accuracy on 0-4 {accuracy(model, digits(test_all, range(5), None)):.2%}")
    pretrained = model.state_dict()

    # 2. new head for digits 5-9, body frozen
    fine_tune_head(model, digits(train_all, range(5, 10), args.finetune_images), digits(test_all, range(5, 10), None),
                   args.finetune_epochs, lr=0.05, label="MNIST digits 5-9")

    # 3. the same on an ImageFolder
    folder = args.image_folder
    if args.demo_folder:
        write_demo_folder(test_all, args.demo_folder)
        folder = args.demo_folder
    if folder:
        from cnnkit.data.folder import ImageFolder

        images = ImageFolder(folder, size=28, grayscale=True)
        order = np.random.default_rng(0).permutation(len(images))
        cut = len(order) * 2 // 3
        part = lambda idx: Dataset(images.images[idx], images.labels[idx], images.classes, "folder")  # noqa: E731
        model = lenet5(num_classes=5, seed=0)
        model.load_state_dict(pretrained)
        fine_tune_head(model, part(order[:cut]), part(order[cut:]), args.finetune_epochs * 3, lr=0.05,
                       label=f"ImageFolder {folder} ({len(images.classes)} classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
