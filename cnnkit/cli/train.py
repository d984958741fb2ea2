"""Train a model on a dataset and report its test accuracy.

With no arguments: a small ConvNet on scikit-learn's bundled 8x8 digits (no download), a few
seconds on 2 cores. Each dataset has a default recipe (model, epochs, batch size, learning
rate, schedule, augmentation); any option given on the command line overrides it. The run
directory gets history.csv/json, steps.csv (every step's loss), best.safetensors (best validation
accuracy), last.safetensors (resumable with --resume), results.json (the test figures of the best
checkpoint and the run's settings) and report.html (`cnnkit report RUN_DIR` rebuilds it).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .common import build_model

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "cosine", "onecycle", "plateau")


def add_arguments(p):
    from ..train.recipes import RECIPES

    p.add_argument("--dataset", default="digits", choices=sorted(RECIPES), help="dataset (default: digits)")
    p.add_argument("--model", help="model name (see `cnnkit summary --list`) or a spec such as "
                   "'conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10' (default: the dataset's recipe)")
    p.add_argument("--data-dir", help="folder holding the dataset files (default: $CNNKIT_DATA or ~/.cache/cnnkit)")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="mini-batch size")
    p.add_argument("--lr", type=float, help="initial learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default: sgd with momentum 0.9)")
    p.add_argument("--momentum", type=float, help="SGD/RMSprop momentum")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (biases and BatchNorm exempt)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule; plateau divides the rate "
                   "by 10 when validation accuracy stops improving")
    p.add_argument("--warmup-epochs", type=int, default=0, help="linear learning-rate warmup before the schedule")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops (padding 4 for 32 px, 2 otherwise) and horizontal flips (CIFAR only)")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction of the training set held out for "
                   "validation (default 0.1; 0 uses the test set for validation)")
    p.add_argument("--early-stop", type=int, metavar="EPOCHS", help="stop after this many epochs without "
                   "validation improvement")
    p.add_argument("--limit", type=int, help="use only the first N training images (quick experiments)")
    p.add_argument("--seed", type=int, default=0, help="random seed for initialisation, shuffling, augmentation")
    p.add_argument("--out", help="run directory (default: runs/DATASET-MODEL)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its last.safetensors")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    from ..finetune import add_finetune_arguments

    add_finetune_arguments(p)  # --init, --freeze, --freeze-bn, --num-classes
    p.add_argument("--diagnostics", type=int, metavar="STEPS", help="record per-layer statistics (activations, "
                   "dead ReLUs, gradient norms, update/weight ratios) every STEPS steps, into the history and "
                   "diagnostics.png")
    p.add_argument("--no-report", action="store_true", help="do not write report.html in the run directory")


def _split(dataset, fraction: float, seed: int):
    """Hold out a seeded, stratification-free random ``fraction`` of ``dataset`` for validation."""
    if not 0 <= fraction < 1:
        raise ValueError(f"--val-split must be in [0, 1), got {fraction}")
    if fraction == 0:
        return dataset, None
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_val = max(1, int(round(fraction * len(dataset))))
    return dataset.subset(order[n_val:]), dataset.subset(order[:n_val])


def _transforms(dataset_name: str, image_size: int, augment: bool):
    from ..data.transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

    normalize = Normalize.for_dataset(dataset_name)
    if not augment:
        return normalize, normalize
    pad = 4 if image_size >= 32 else 2
    return Compose([RandomCrop(image_size, padding=pad), RandomHorizontalFlip(), normalize]), normalize


def make_optimizer(name, params_groups, lr, momentum, weight_decay):
    from .. import optim

    if name == "sgd":
        return optim.SGD(params_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(params_groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return optim.AdamW(params_groups, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return optim.RMSprop(params_groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return optim.Adagrad(params_groups, lr=lr, weight_decay=weight_decay)


def make_scheduler(name, optimizer, epochs, steps_per_epoch, lr, warmup_epochs=0):
    from ..optim import lr_scheduler as S

    main_epochs = max(1, epochs - warmup_epochs)
    if name == "step":
        sched = S.StepLR(optimizer, step_size=max(1, main_epochs // 3), gamma=0.1)
    elif name == "cosine":
        sched = S.CosineAnnealingLR(optimizer, T_max=main_epochs)
    elif name == "onecycle":
        return S.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    elif name == "plateau":
        return S.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=3)
    else:
        sched = None
    if warmup_epochs:
        warm = S.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup_epochs)
        return S.SequentialLR(optimizer, [warm, sched or S.ExponentialLR(optimizer, 1.0)], milestones=[warmup_epochs])
    return sched


def run(args) -> int:
    from .. import data, io
    from ..data import DataLoader
    from ..optim import param_groups_no_decay
    from ..train import Checkpoint, EarlyStopping, HistoryWriter, Trainer
    from ..train.recipes import recipe

    cfg = recipe(args.dataset)
    for key in ("model", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "augment"):
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    for key in ("epochs", "batch_size"):
        if cfg[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ValueError(f"--lr must be > 0, got {cfg['lr']}")

    train_full = data.load(args.dataset, "train", root=args.data_dir)
    test_set = data.load(args.dataset, "test", root=args.data_dir)
    if args.limit:
        train_full = train_full.subset(np.arange(min(args.limit, len(train_full))))
    train_set, val_set = _split(train_full, args.val_split, args.seed)
    input_shape = tuple(train_full.images.shape[1:])
    train_tf, eval_tf = _transforms(args.dataset, input_shape[-1], cfg["augment"])

    train_loader = DataLoader(train_set, cfg["batch_size"], shuffle=True, transform=train_tf, seed=args.seed)
    val_loader = DataLoader(val_set if val_set is not None else test_set, 500, transform=eval_tf)
    test_loader = DataLoader(test_set, 500, transform=eval_tf)

    from ..finetune import apply_finetune_arguments

    model = build_model(cfg["model"], input_shape, getattr(args, "num_classes", None) or len(train_full.classes))
    apply_finetune_arguments(model, args)
    model.config = {**getattr(model, "config", {}), "dataset": args.dataset, "input_shape": list(input_shape),
                    "classes": list(train_full.classes)}
    groups = param_groups_no_decay(model, cfg["weight_decay"])
    optimizer = make_optimizer(cfg["optimizer"], groups, cfg["lr"], cfg["momentum"], cfg["weight_decay"])
    scheduler = make_scheduler(cfg["schedule"], optimizer, cfg["epochs"], len(train_loader), cfg["lr"],
                               args.warmup_epochs)

    model_label = cfg["model"] if " " not in cfg["model"] else "spec"
    out_dir = Path(args.out or f"runs/{args.dataset}-{model_label}")
    checkpoint = Checkpoint(out_dir)
    callbacks = [HistoryWriter(out_dir), checkpoint]
    if args.diagnostics:
        from ..train.diagnostics import Diagnostics

        callbacks.insert(0, Diagnostics(every=args.diagnostics, out_dir=out_dir))
    if args.early_stop:
        callbacks.append(EarlyStopping(patience=args.early_stop))
    trainer = Trainer(model, optimizer, scheduler=scheduler, callbacks=callbacks, progress=not args.no_progress)
    if args.resume:
        trainer.resume(args.resume, train_loader)
        print(f"resumed from {args.resume} after epoch {trainer.epoch}")

    n_params = sum(p.size for p in model.parameters())
    print(f"training {cfg['model']} ({n_params:,} parameters) on {args.dataset}: {len(train_set)} train / "
          f"{len(val_set) if val_set is not None else 0} val / {len(test_set)} test images, "
          f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['optimizer']} lr {cfg['lr']:g}, "
          f"schedule {cfg['schedule']}{', augmented' if cfg['augment'] else ''}; run directory {out_dir}")
    start = time.perf_counter()
    try:
        trainer.fit(train_loader, val_loader, cfg["epochs"])
    except KeyboardInterrupt:
        path = trainer.save(out_dir / "interrupted.safetensors")
        print(f"\ninterrupted during epoch {trainer.epoch + 1}: weights saved to {path}; the last complete "
              f"epoch is in {checkpoint.last_path} (continue with --resume {checkpoint.last_path})")
        return 130
    elapsed = time.perf_counter() - start

    from ..train.results import evaluate_model, results_dict, training_throughput, write_results

    best = io.load_checkpoint(checkpoint.best_path) if checkpoint.best_path.exists() else None
    # one evaluation of the best weights on the whole test set: printed, in results.json, in the report
    evaluation = evaluate_model(best.model if best else model, test_loader, len(test_set.classes))
    top5 = f", top-5 {evaluation.top5:.2%}" if evaluation.top5 is not None else ""
    print(f"test accuracy {evaluation.top1:.2%}{top5} (loss {evaluation.loss:.4f}) after {trainer.epoch} "
          f"epoch{'s' if trainer.epoch != 1 else ''} in {elapsed:.1f}s")
    print(f"best checkpoint: {checkpoint.best_path}")
    counts = {"train": len(train_set), "val": len(val_set) if val_set is not None else 0, "test": len(test_set)}
    write_results(out_dir, results_dict(
        evaluation, checkpoint=checkpoint.best_path.name if best else "(final weights, not saved)",
        best_epoch=int(best.training_state["epoch"]) if best and best.training_state else None,
        epochs=trainer.epoch, wall_time_s=elapsed, images_per_s=training_throughput(trainer.history),
        settings=_settings(args, cfg, n_params, counts)))
    if not args.no_report:
        from ..viz.report import write_report

        print(f"report: {write_report(out_dir, data_dir=args.data_dir, evaluation=evaluation)}")
    return 0


def _settings(args, cfg, n_params, counts) -> dict:
    """The settings of a run, for results.json and the report."""
    from .. import __version__
    from ..data import data_root
    from ..train.results import active_backend

    settings = {"model": cfg["model"], "parameters": int(n_params), "dataset": args.dataset,
                "data_dir": "bundled with scikit-learn" if args.dataset == "digits" else str(data_root(args.data_dir).resolve()),
                "images": counts, "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
                "optimizer": cfg["optimizer"], "lr": cfg["lr"], "momentum": cfg["momentum"],
                "weight_decay": cfg["weight_decay"], "schedule": cfg["schedule"], "warmup_epochs": args.warmup_epochs,
                "augment": bool(cfg["augment"]), "seed": args.seed, "val_split": args.val_split, "limit": args.limit}
    if cfg["optimizer"] not in ("sgd", "rmsprop"):
        settings.pop("momentum")  # Adam-style optimizers take no momentum argument here
    for key in ("init", "freeze", "num_classes", "resume"):
        if getattr(args, key, None):
            settings[key] = getattr(args, key)
    backend, why = active_backend()
    settings.update(cnnkit_version=__version__, backend=backend)
    if why:
        settings["backend_reason"] = why
    return settings
