"""Train a model on a dataset and report its test accuracy.

With no arguments: a small ConvNet on scikit-learn's bundled 8x8 digits (no download), a few
seconds on 2 cores. Each dataset has a default recipe (model, epochs, batch size, learning
rate, schedule, augmentation); any option given on the command line overrides it. The run
directory gets history.csv/json, best.safetensors (best validation accuracy) and last.safetensors (resumable
with --resume).

Under an MPI launcher (mpiexec -n N cnnkit train ...) N processes train one model: each rank
reads its shard of the data, the global --batch-size is split over the ranks, gradients are
averaged over them, and only rank 0 prints and writes the run directory. A failure on any rank
ends every rank. Needs pip install 'cnnkit[mpi]'.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from .common import build_model

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
# After Ctrl-C, ranks other than 0 give rank 0 this long to save interrupted.safetensors and end the job.
INTERRUPT_GRACE_SECONDS = 10
SCHEDULES = ("none", "step", "cosine", "onecycle", "plateau")


def add_arguments(p):
    from ..train.recipes import RECIPES

    p.add_argument("--dataset", default="digits", choices=sorted(RECIPES), help="dataset (default: digits)")
    p.add_argument("--model", help="model name (see `cnnkit summary --list`) or a spec such as "
                   "'conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10' (default: the dataset's recipe)")
    p.add_argument("--data-dir", help="folder holding the dataset files (default: $CNNKIT_DATA or ~/.cache/cnnkit)")
    p.add_argument("--epochs", type=int, help="number of epochs")
    p.add_argument("--batch-size", type=int, help="mini-batch size; under mpiexec -n N the global batch, "
                   "split over the N ranks (each takes batch/N)")
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
    p.add_argument("--sync-bn", action="store_true", help="under mpiexec: BatchNorm statistics over the global "
                   "batch of all ranks (SyncBatchNorm) instead of each rank's share")


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
    """Train; under an MPI launcher, as one of its ranks (see the module docstring)."""
    from .. import distributed

    owned = not distributed.is_initialized()
    if owned:
        distributed.init_process_group()
    stdout = sys.stdout
    if distributed.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints (errors still reach stderr)
    try:
        return _train(args)
    except BaseException as exc:
        if distributed.get_world_size() > 1:
            # The other ranks would wait for this one forever: end them all, with the reason.
            code = 130 if isinstance(exc, KeyboardInterrupt) else 1
            if isinstance(exc, SystemExit) and isinstance(exc.code, int):
                code = exc.code
            distributed.abort(f"train: error on rank {distributed.get_rank()} of {distributed.get_world_size()}: "
                              f"{type(exc).__name__}: {exc}", code or 1)
        raise
    finally:
        if sys.stdout is not stdout:
            sys.stdout.close()
            sys.stdout = stdout
        if owned:
            distributed.destroy_process_group()


def _shard(dataset, rank: int, world: int):
    """Every ``world``-th sample from ``rank`` on: disjoint shards that cover ``dataset`` once."""
    return dataset if world == 1 else dataset.subset(np.arange(rank, len(dataset), world))


def _train(args) -> int:
    from .. import data, distributed, io
    from ..data import DataLoader, DistributedSampler
    from ..nn import SyncBatchNorm
    from ..nn.parallel import DistributedDataParallel, broadcast_module_state
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
    rank, world = distributed.get_rank(), distributed.get_world_size()
    if cfg["batch_size"] % world:
        raise ValueError(f"--batch-size {cfg['batch_size']} does not split evenly over {world} ranks: "
                         f"use a multiple of {world}")

    train_full = data.load(args.dataset, "train", root=args.data_dir)
    test_set = data.load(args.dataset, "test", root=args.data_dir)
    if args.limit:
        train_full = train_full.subset(np.arange(min(args.limit, len(train_full))))
    train_set, val_set = _split(train_full, args.val_split, args.seed)
    input_shape = tuple(train_full.images.shape[1:])
    train_tf, eval_tf = _transforms(args.dataset, input_shape[-1], cfg["augment"])

    if world == 1:
        train_loader = DataLoader(train_set, cfg["batch_size"], shuffle=True, transform=train_tf, seed=args.seed)
    else:  # the same shuffle on every rank, each its shard; its own augmentation stream
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed)
        train_loader = DataLoader(train_set, cfg["batch_size"] // world, sampler=sampler, transform=train_tf,
                                  generator=np.random.default_rng((args.seed, rank)))
    val_loader = DataLoader(_shard(val_set if val_set is not None else test_set, rank, world), 500, transform=eval_tf)
    test_loader = DataLoader(_shard(test_set, rank, world), 500, transform=eval_tf)

    from ..finetune import apply_finetune_arguments

    model = build_model(cfg["model"], input_shape, getattr(args, "num_classes", None) or len(train_full.classes))
    apply_finetune_arguments(model, args)
    model.config = {**getattr(model, "config", {}), "dataset": args.dataset, "input_shape": list(input_shape),
                    "classes": list(train_full.classes)}
    if args.sync_bn and world > 1:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    groups = param_groups_no_decay(model, cfg["weight_decay"])
    optimizer = make_optimizer(cfg["optimizer"], groups, cfg["lr"], cfg["momentum"], cfg["weight_decay"])
    scheduler = make_scheduler(cfg["schedule"], optimizer, cfg["epochs"], len(train_loader), cfg["lr"],
                               args.warmup_epochs)

    model_label = cfg["model"] if " " not in cfg["model"] else "spec"
    out_dir = Path(args.out or f"runs/{args.dataset}-{model_label}")
    checkpoint = Checkpoint(out_dir)  # on every rank: saving gathers the ranks' random states; rank 0 writes
    callbacks = [HistoryWriter(out_dir), checkpoint] if rank == 0 else [checkpoint]
    if args.diagnostics and rank == 0:
        from ..train.diagnostics import Diagnostics

        callbacks.insert(0, Diagnostics(every=args.diagnostics, out_dir=out_dir))
    if args.early_stop:
        callbacks.append(EarlyStopping(patience=args.early_stop))
    net = DistributedDataParallel(model) if world > 1 else model
    trainer = Trainer(net, optimizer, scheduler=scheduler, callbacks=callbacks, progress=not args.no_progress)
    if args.resume:
        trainer.resume(args.resume, train_loader)
        print(f"resumed from {args.resume} after epoch {trainer.epoch}")

    n_params = sum(p.size for p in model.parameters())
    ranks = ""
    if world > 1:
        threads = distributed.threads_per_rank()
        ranks = (f" ({cfg['batch_size'] // world} per rank on {world} ranks"
                 f"{f', {threads} thread(s) each' if threads else ''}{', SyncBatchNorm' if args.sync_bn else ''})")
    print(f"training {cfg['model']} ({n_params:,} parameters) on {args.dataset}: {len(train_set)} train / "
          f"{len(val_set) if val_set is not None else 0} val / {len(test_set)} test images, "
          f"{cfg['epochs']} epochs, batch {cfg['batch_size']}{ranks}, {cfg['optimizer']} lr {cfg['lr']:g}, "
          f"schedule {cfg['schedule']}{', augmented' if cfg['augment'] else ''}; run directory {out_dir}")
    start = time.perf_counter()
    try:
        trainer.fit(train_loader, val_loader, cfg["epochs"])
    except KeyboardInterrupt:
        # Distributed: every rank got the Ctrl-C; rank 0 saves alone (no collective now) and then
        # ends the job; the others wait for that, and end it themselves if rank 0 never does.
        if rank == 0:
            path = trainer.save(out_dir / "interrupted.safetensors", all_ranks=False)
            print(f"\ninterrupted during epoch {trainer.epoch + 1}: weights saved to {path}; the last complete "
                  f"epoch is in {checkpoint.last_path} (continue with --resume {checkpoint.last_path})", flush=True)
        if world > 1:
            if rank > 0:
                time.sleep(INTERRUPT_GRACE_SECONDS)
            distributed.abort(f"train: interrupted (rank {rank})", 130)
        return 130
    elapsed = time.perf_counter() - start

    if world == 1:
        best = io.load(checkpoint.best_path) if checkpoint.best_path.exists() else model
    else:  # only rank 0 has the file: it loads the best weights and gives them to the others
        if checkpoint.best is not None and rank == 0:
            io.load_checkpoint(checkpoint.best_path, model=model)
        if checkpoint.best is not None:
            broadcast_module_state(model)
        best = model
    result = Trainer(best, optimizer, out=None).evaluate(test_loader, topk=(1, 5))
    top5 = f", top-5 {result['top5']:.2%}" if len(train_full.classes) > 10 else ""
    print(f"test accuracy {result['top1']:.2%}{top5} (loss {result['loss']:.4f}) after {trainer.epoch} epochs "
          f"in {elapsed:.1f}s")
    print(f"best checkpoint: {checkpoint.best_path}")
    if not args.no_report and rank == 0:
        from ..viz.report import write_report

        print(f"report: {write_report(out_dir, data_dir=args.data_dir)}")
    return 0
