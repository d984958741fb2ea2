"""Does loading data dominate a training step? Time the DataLoader (with CIFAR augmentation) against
training steps it feeds, in the same process, interleaved, and write the medians to BENCHMARKS.md.

    python benchmarks/data_loading.py --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cnnkit  # noqa: E402
from cnnkit.data import DataLoader  # noqa: E402
from cnnkit.data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip  # noqa: E402
from cnnkit.optim import SGD  # noqa: E402

BEGIN, END = "<!-- data:begin -->", "<!-- data:end -->"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    rows = []
    # (dataset, model, augmented, batch): the fast recipe's small net at its batch size has the
    # shortest step per image, so the loader's share is largest there
    for dataset, model_name, augment, batch in (("cifar10", "resnet20", True, 128), ("cifar10", "fastnet", True, 256),
                                                ("mnist", "lenet5", False, 128)):
        train = cnnkit.data.load(dataset, "train", root=args.data_dir)
        norm = Normalize.for_dataset(dataset)
        tf = Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), norm]) if augment else norm
        loader = DataLoader(train, batch, shuffle=True, drop_last=True, transform=tf, seed=0)
        model = cnnkit.models.create(model_name)
        lossf = cnnkit.nn.CrossEntropyLoss()
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
        load_times, step_times = [], []
        batches = iter(loader)
        for _ in range(args.rounds):
            start = time.perf_counter()
            x, y = next(batches)
            load_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            lossf(model(x), y)
            opt.zero_grad()
            model.backward(lossf.backward(), input_grad=False)
            opt.step()
            step_times.append(time.perf_counter() - start)
        load_ms = statistics.median(load_times) * 1e3
        step_ms = statistics.median(step_times) * 1e3
        rows.append((dataset, model_name, "crop+flip+normalize" if augment else "normalize", load_ms, step_ms, batch))
        print(f"{dataset}: load {load_ms:.1f} ms, {model_name} step {step_ms:.0f} ms "
              f"({load_ms / (load_ms + step_ms):.1%} of the step)", flush=True)

    if args.no_write:
        return
    lines = [BEGIN, "## Data loading vs training step", "",
             f"Measured {dt.date.today()} with `python benchmarks/data_loading.py --data-dir ../shared/data`: "
             f"median of {args.rounds} interleaved rounds, float32 NCHW batches from the DataLoader "
             "(uint8 -> float, augmentation as batched array ops) against the training step they feed.", "",
             "| dataset | transforms | batch | load ms/batch | model | step ms | loading share |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {d} | {t} | {b} | {lm:.1f} | {m} | {sm:.0f} | {lm / (lm + sm):.1%} |" for d, m, t, lm, sm, b in rows]
    lines.append(END)
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    section = "\n".join(lines)
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
