"""Train a model on a dataset and report its test accuracy.

With no arguments: a small ConvNet on scikit-learn's bundled 8x8 digits (no download), a few
seconds on 2 cores. Each dataset has a default recipe (model, epochs, batch size, learning
rate, schedule, augmentation); any option given on the command line overrides it. --seed (default
0) seeds everything random, so the same command gives the same weights on the same machine.

Each run gets its own folder: runs/DATASET-MODEL, or runs/DATASET-MODEL-2, -3, ... when that one
exists (--out chooses one, and reuses it if it exists). It holds history.csv/json,
steps.csv (every step's loss), best.safetensors (best validation accuracy), last.safetensors (every
epoch; the starting point before epoch 1), results.json (the test figures of the best checkpoint and
the run's settings) and report.html (`cnnkit report RUN_DIR` rebuilds it). Each checkpoint records the whole run, so

    cnnkit train --resume runs/mnist-lenet5/last.safetensors

continues an interrupted run in its folder with its model, dataset, data folder and settings
(Ctrl-C prints this command); flags that contradict the checkpoint are refused, --epochs sets a
new total (a finished schedule then keeps its last learning rate).

Under an MPI launcher (mpiexec -n N cnnkit train ...) N processes train one model: each rank
reads its shard of the data, the global --batch-size is split over the ranks, gradients are
averaged over them, and only rank 0 prints and writes the run directory. A failure on any rank
ends every rank. Needs mpi4py and mpich (pip install mpi4py mpich).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .common import build_model, finite_float, model_label, nonnegative_int, positive_int
from .errors import CommandError, UsageError
from .runs import RunFolder, claim_run_folder

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "cosine", "onecycle", "plateau")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of an option's help (the list of recipes), wrapping each line."""

    def _split_lines(self, text, width):
        split = super()._split_lines
        return [wrapped for line in text.splitlines() for wrapped in split(line, width)]


def _recipes_help() -> str:
    from ..train.recipes import all_recipes

    lines = ["named settings (default: default); flags given override the recipe's values. Measured on this "
             "project's 2-core machine (BENCHMARKS.md):"]
    text = "\n".join(lines + ["- " + r.describe() for r in all_recipes()])
    return text.replace("%", "%%")  # argparse %-formats help texts; the figures carry percent signs


def add_arguments(p):
    from ..train.recipes import RECIPES
    from .finetune import add_finetune_arguments

    p.formatter_class = _HelpFormatter

    # Defaults are None so that a resumed run can tell a flag given from one left out; the recipe
    # and DEFAULTS below fill them in for a new run.
    p.add_argument("--dataset", choices=sorted(RECIPES), help="dataset (default: digits, or the one dataset that has "
                   "the --recipe given)")
    p.add_argument("--recipe", metavar="NAME", help=_recipes_help())
    p.add_argument("--model", help="model name (see `cnnkit summary --list`) or a spec such as "
                   "'conv5-6 maxpool conv5-16 maxpool fc-120 fc-84 fc-10' (default: the dataset's recipe)")
    p.add_argument("--data-dir", help="folder holding the dataset files (default: $CNNKIT_DATA or ~/.cache/cnnkit; "
                   "with --resume: the folder the run recorded)")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (with --resume: the new total)")
    p.add_argument("--batch-size", type=positive_int, help="mini-batch size; under mpiexec -n N the global batch, "
                   "split over the N ranks (each takes batch/N)")
    p.add_argument("--lr", type=finite_float, help="initial learning rate")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="optimizer (default: sgd with momentum 0.9)")
    p.add_argument("--momentum", type=finite_float, help="SGD/RMSprop momentum")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (SGD only)")
    p.add_argument("--weight-decay", type=finite_float, help="L2 weight decay (biases and BatchNorm exempt)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule; plateau divides the rate "
                   "by 10 when validation accuracy stops improving")
    p.add_argument("--warmup-epochs", type=nonnegative_int, help="linear learning-rate warmup before the schedule "
                   "(default 0)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops (padding 4 for 32 px, 2 otherwise) and horizontal flips (CIFAR only)")
    p.add_argument("--flip", choices=("random", "alternate"), help="with --augment: mirror each image with "
                   "probability 1/2 (random, the default) or on every other epoch (alternate: each image both ways "
                   "in every two epochs)")
    p.add_argument("--label-smoothing", type=finite_float, metavar="EPS", help="mix the one-hot targets with "
                   "the uniform distribution: (1 - EPS) on the true class (default 0)")
    p.add_argument("--ema", type=finite_float, metavar="DECAY", help="keep an exponential moving average of the "
                   "weights (e.g. 0.99), updated every step; validation, checkpoints and the test figures use it "
                   "(default 0: none)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="test figures averaged over each image and its mirror image (as `cnnkit evaluate --tta`)")
    p.add_argument("--val-split", type=finite_float, help="fraction of the training set held out for "
                   "validation (default 0.1; 0 uses the test set for validation)")
    p.add_argument("--early-stop", type=positive_int, metavar="EPOCHS", help="stop after this many epochs without "
                   "validation improvement")
    p.add_argument("--limit", type=positive_int, help="use only the first N training images (quick experiments)")
    p.add_argument("--seed", type=nonnegative_int, help="random seed for the initial weights, the validation split, shuffling "
                   "and augmentation (default 0): the same seed and command give the same run")
    p.add_argument("--out", help="run folder (default: runs/DATASET-MODEL, or runs/DATASET-MODEL-2, -3, ... when "
                   "that exists); an existing folder given here is reused: its checkpoints and history are replaced")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its last.safetensors, in its "
                   "folder, with its model, dataset, data folder and settings (--epochs may set a new total)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch only)")
    add_finetune_arguments(p)  # --init, --freeze, --freeze-bn, --num-classes
    p.add_argument("--diagnostics", type=positive_int, metavar="STEPS", help="record per-layer statistics "
                   "(activations, dead ReLUs, gradient norms, update/weight ratios) every STEPS steps, into the "
                   "history and diagnostics.png")
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


def _transforms(dataset_name: str, image_size: int, augment: bool, flip: str = "random", seed: int = 0):
    from ..data.transforms import AlternatingHorizontalFlip, Compose, Normalize, RandomCrop, RandomHorizontalFlip

    normalize = Normalize.for_dataset(dataset_name)
    if not augment:
        return normalize, normalize
    pad = 4 if image_size >= 32 else 2
    mirror = AlternatingHorizontalFlip(seed) if flip == "alternate" else RandomHorizontalFlip()
    return Compose([RandomCrop(image_size, padding=pad), mirror, normalize]), normalize


def make_optimizer(name, params_groups, lr, momentum, weight_decay, nesterov=False):
    from .. import optim

    if name == "sgd":
        return optim.SGD(params_groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
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


def _recorded_data_dir(dataset: str, data_dir):
    """The absolute data folder to record (None for the bundled digits), so that evaluate, viz and
    --resume find the data from any folder."""
    from ..data import data_root

    return None if dataset == "digits" else str(data_root(data_dir).resolve())


def _schedule_steps(settings: dict, steps_per_epoch: int):
    """How many scheduler steps the run's schedule was made for (None: it has no end)."""
    if settings["schedule"] in ("none", "plateau"):
        return None
    per_epoch = steps_per_epoch if settings["schedule"] == "onecycle" else 1
    return settings["schedule_epochs"] * per_epoch


def run(args) -> int:
    """Train; under an MPI launcher, as one of its ranks (see the module docstring)."""
    from .. import distributed

    owned = not distributed.is_initialized()
    if owned:
        distributed.init_process_group()
    stdout = sys.stdout
    if distributed.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints (errors still reach stderr)
        # mpiexec passes a Ctrl-C to every rank; rank 0 alone acts on it (saves, then ends the
        # job), so no rank leaves a collective that the others are waiting in.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return _train(args)
    except BaseException as exc:
        if distributed.get_world_size() > 1:
            # The other ranks would wait for this one forever: end them all, with the reason.
            code = 130 if isinstance(exc, KeyboardInterrupt) else 1
            if isinstance(exc, SystemExit) and isinstance(exc.code, int):
                code = exc.code
            what = str(exc) if isinstance(exc, (CommandError, UsageError)) else f"{type(exc).__name__}: {exc}"
            distributed.abort(f"train: error on rank {distributed.get_rank()} of {distributed.get_world_size()}: "
                              f"{what}", code or 1)
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
    from .. import distributed, io
    from ..data import DataLoader, DistributedSampler
    from ..nn import CrossEntropyLoss, SyncBatchNorm
    from ..nn.parallel import DistributedDataParallel
    from ..optim import param_groups_no_decay
    from ..train import Checkpoint, EarlyStopping, HistoryWriter, Trainer
    from .common import check_dataset_fits, load_checkpoint, load_dataset, recorded_data_dir
    from .finetune import apply_freezing, apply_init
    from .train_settings import SETTINGS, new_run_settings, resumed_run_settings

    if args.resume:
        resumed = load_checkpoint(args.resume, "--resume")
        settings = resumed_run_settings(args, resumed, args.resume)
        data_dir = args.data_dir or recorded_data_dir(resumed.config)
    else:
        settings = new_run_settings(args)
        data_dir = args.data_dir
    dataset = settings["dataset"]
    rank, world = distributed.get_rank(), distributed.get_world_size()
    if settings["batch_size"] % world:
        raise UsageError(f"--batch-size {settings['batch_size']} does not split evenly over {world} ranks: "
                         f"use a multiple of {world}")

    train_full = load_dataset(dataset, "train", data_dir)
    test_set = load_dataset(dataset, "test", data_dir)
    if args.resume:
        check_dataset_fits(args.resume, resumed.config, dataset, train_full, flag="--data-dir")
    if settings["limit"]:
        train_full = train_full.subset(np.arange(min(settings["limit"], len(train_full))))
    train_set, val_set = _split(train_full, settings["val_split"], settings["seed"])
    if len(train_set) == 0:
        raise UsageError(f"--limit {settings['limit']} with --val-split {settings['val_split']} leaves no training "
                         "images: raise --limit or lower --val-split")
    input_shape = tuple(train_full.images.shape[1:])
    classes = list(train_full.classes)
    num_classes = settings["num_classes"] or len(classes)
    if num_classes < len(classes):
        raise UsageError(f"--num-classes {num_classes} is fewer than the {len(classes)} classes of {dataset}")
    train_tf, eval_tf = _transforms(dataset, input_shape[-1], settings["augment"], settings["flip"], settings["seed"])

    seed = settings["seed"]
    if world == 1:
        train_loader = DataLoader(train_set, settings["batch_size"], shuffle=True, transform=train_tf, seed=seed)
    else:  # the same shuffle on every rank, each its shard; its own augmentation stream
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=seed)
        train_loader = DataLoader(train_set, settings["batch_size"] // world, sampler=sampler, transform=train_tf,
                                  generator=np.random.default_rng((seed, rank)))
    # validation: each rank its shard, the trainer reduces the figures; the test evaluation at the
    # end runs on rank 0 alone, over the whole test set (it writes results.json and the report)
    val_loader = DataLoader(_shard(val_set if val_set is not None else test_set, rank, world), 500, transform=eval_tf)
    test_loader = DataLoader(test_set, 500, transform=eval_tf)

    model = build_model(settings["model"], input_shape, num_classes, seed=settings["seed"])
    if settings["init"] and not args.resume:
        apply_init(model, settings["init"])
    elif hasattr(model, "init_from_data") and not args.resume:
        _init_from_data(model, train_set, eval_tf)
    apply_freezing(model, settings["freeze"], settings["freeze_bn"])
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"--freeze {','.join(settings['freeze'])} freezes every parameter: nothing is left to train")
    model.config = {**getattr(model, "config", {}), "dataset": dataset, "input_shape": list(input_shape),
                    "classes": classes, "data_dir": _recorded_data_dir(dataset, data_dir),
                    "train": {key: settings[key] for key in (*SETTINGS, "schedule_epochs")}}
    if args.sync_bn and world > 1:
        model = SyncBatchNorm.convert_sync_batchnorm(model)
    groups = param_groups_no_decay(model, settings["weight_decay"])
    optimizer = make_optimizer(settings["optimizer"], groups, settings["lr"], settings["momentum"],
                               settings["weight_decay"], settings["nesterov"])
    scheduler = make_scheduler(settings["schedule"], optimizer, settings["schedule_epochs"], len(train_loader),
                               settings["lr"], settings["warmup_epochs"])

    if args.resume:
        folder = RunFolder(Path(args.resume).parent, created=False)
    elif rank == 0:
        folder = claim_run_folder(args.out, f"{dataset}-{model_label(settings['model'])}")
    if world > 1:  # rank 0 claimed the folder: every rank uses that one
        claimed = [None] * world
        distributed.all_gather_object(claimed, str(folder.path) if rank == 0 else None)
        if rank > 0:
            folder = RunFolder(Path(claimed[0]), created=False)
    out_dir = folder.path
    checkpoint = Checkpoint(out_dir)  # on every rank: saving gathers the ranks' random states; rank 0 writes
    callbacks = [HistoryWriter(out_dir), checkpoint] if rank == 0 else [checkpoint]
    if settings["diagnostics"] and rank == 0:
        from ..train.diagnostics import Diagnostics
        from ..viz.curves import plot_diagnostics

        callbacks.insert(0, Diagnostics(every=settings["diagnostics"], out_dir=out_dir, plot=plot_diagnostics))
    if settings["early_stop"]:
        callbacks.append(EarlyStopping(patience=settings["early_stop"]))
    net = DistributedDataParallel(model) if world > 1 else model
    trainer = Trainer(net, optimizer, loss=CrossEntropyLoss(label_smoothing=settings["label_smoothing"]),
                      scheduler=scheduler, callbacks=callbacks, progress=not args.no_progress,
                      schedule_steps=_schedule_steps(settings, len(train_loader)), ema=settings["ema"] or None)
    if args.resume:
        trainer.resume(args.resume, train_loader)
        if trainer.epoch >= settings["epochs"]:
            raise UsageError(f"--resume {args.resume}: the run has already completed {trainer.epoch} of its "
                             f"{settings['epochs']} epochs; give --epochs N with N > {trainer.epoch} to train longer")
        print(f"resumed from {args.resume} after epoch {trainer.epoch}")
        if trainer.schedule_steps is not None and settings["epochs"] > settings["schedule_epochs"]:
            print(f"note: the {settings['schedule']} schedule was made for {settings['schedule_epochs']} epochs; after "
                  f"that the learning rate stays where it ended (for a new schedule, start a new run with "
                  f"--init {shlex.quote(str(args.resume))})")
    elif folder.reused:
        print(f"reusing the run folder {out_dir} (--out): its checkpoints and history are replaced")

    n_params = sum(p.size for p in model.parameters())
    ranks = ""
    if world > 1:
        threads = distributed.threads_per_rank()
        ranks = (f" ({settings['batch_size'] // world} per rank on {world} ranks"
                 f"{f', {threads} thread(s) each' if threads else ''}{', SyncBatchNorm' if args.sync_bn else ''})")
    print(f"training {settings['model']} ({n_params:,} parameters) on {dataset}: {len(train_set)} train / "
          f"{len(val_set) if val_set is not None else 0} val / {len(test_set)} test images, "
          f"{settings['epochs']} epochs, batch {settings['batch_size']}{ranks}, {settings['optimizer']} lr "
          f"{settings['lr']:g}, schedule {settings['schedule']}{_extras(settings)}, seed {settings['seed']}; "
          f"run directory {out_dir}")
    start = time.perf_counter()
    try:
        # A diverging run overflows inside matrix products (also in cnnkit's worker threads) long
        # before the loss shows it: the trainer's check of the loss reports it once, in words,
        # instead of NumPy warning layer by layer.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            trainer.fit(train_loader, val_loader, settings["epochs"])
    except KeyboardInterrupt:
        # Distributed: only rank 0 takes the Ctrl-C (see run()); it saves alone (no collective
        # now) and ends the job.
        if rank == 0:
            if not checkpoint.last_path.exists():
                folder.discard_if_unfinished(trainer.epoch)
                raise
            path = trainer.save(out_dir / "interrupted.safetensors", all_ranks=False)
            print(f"\ninterrupted during epoch {trainer.epoch + 1}: its weights so far are in {path}; the last "
                  f"complete epoch ({trainer.epoch}) is in {checkpoint.last_path}. Continue with: cnnkit train "
                  f"--resume {shlex.quote(str(checkpoint.last_path))}", flush=True)
        if world > 1:
            distributed.abort(f"train: interrupted (rank {rank})", 130)
        return 130
    except BaseException as exc:
        removed = folder.discard_if_unfinished(trainer.epoch) if rank == 0 else False
        failure = _training_failure(exc, settings, trainer, checkpoint, removed)
        if failure is None:
            raise
        raise failure from exc
    elapsed = time.perf_counter() - start
    if rank > 0:
        return 0  # rank 0 evaluates the best checkpoint and writes the results

    from ..train.results import evaluate_model, results_dict, training_throughput, write_results
    from ..train.tta import FlipAveraged

    best = io.load_checkpoint(checkpoint.best_path) if checkpoint.best_path.exists() else None
    if best is None and trainer.ema is not None:
        trainer.ema.copy_to_model()  # the weights the run evaluates are the averaged ones
    final = best.model if best else model
    # one evaluation of the best weights on the whole test set: printed, in results.json, in the report
    evaluation = evaluate_model(FlipAveraged(final) if settings["tta"] else final, test_loader,
                                len(test_set.classes))
    top5 = f", top-5 {evaluation.top5:.2%}" if evaluation.top5 is not None else ""
    plain = ""
    if settings["tta"]:
        plain = f"; flip TTA, without it {evaluate_model(final, test_loader, len(test_set.classes)).top1:.2%}"
    print(f"test accuracy {evaluation.top1:.2%}{top5} (loss {evaluation.loss:.4f}{plain}) after {trainer.epoch} "
          f"epoch{'s' if trainer.epoch != 1 else ''} in {elapsed:.1f}s")
    print(f"best checkpoint: {checkpoint.best_path}")
    counts = {"train": len(train_set), "val": len(val_set) if val_set is not None else 0, "test": len(test_set)}
    write_results(out_dir, results_dict(
        evaluation, checkpoint=checkpoint.best_path.name if best else "(final weights, not saved)",
        best_epoch=int(best.training_state["epoch"]) if best and best.training_state else None,
        epochs=trainer.epoch, wall_time_s=elapsed, images_per_s=training_throughput(trainer.history),
        settings=_settings(settings, data_dir, n_params, counts)))
    if not args.no_report:
        from ..viz.report import write_report

        print(f"report: {write_report(out_dir, data_dir=data_dir, evaluation=evaluation)}")
    return 0


def _extras(settings: dict) -> str:
    """The settings beyond the optimizer and schedule that a run uses, for its first line."""
    extras = [name for key, name in (("augment", "augmented"), ("nesterov", "nesterov"), ("tta", "flip TTA"))
              if settings[key]]
    if settings["augment"] and settings["flip"] == "alternate":
        extras[0] += " (flips on alternating epochs)"
    if settings["label_smoothing"]:
        extras.append(f"label smoothing {settings['label_smoothing']:g}")
    if settings["ema"]:
        extras.append(f"EMA {settings['ema']:g}")
    return "".join(", " + e for e in extras)


# Enough images for a data-dependent first layer (FastNet's 12x12 patch covariance) in well under a second.
INIT_FROM_DATA_IMAGES = 5000


def _init_from_data(model, train_set, eval_tf) -> None:
    """Give a model with a data-dependent first layer (``init_from_data``, e.g. FastNet's whitening
    filters) the first training images, normalised as the test images will be."""
    images = train_set.images[:INIT_FROM_DATA_IMAGES].astype(np.float32) / 255
    images = eval_tf(images) if eval_tf is not None else images
    model.init_from_data(images)


def _training_failure(exc: BaseException, settings: dict, trainer, checkpoint, removed: bool):
    """The one-line error for a run that stopped, saying which flag to change (None: pass ``exc`` on)."""
    if removed:
        kept = "; nothing was kept (the run folder was removed)"
    else:
        kept = f"; the last complete epoch ({trainer.epoch}) is in {checkpoint.last_path}"
    if isinstance(exc, FloatingPointError):
        from ..train.recipes import recipe

        what = str(exc).split(";")[0]
        usual = recipe(settings["dataset"], settings["recipe"])["lr"]
        return CommandError(f"{what}: lower --lr (the {settings['dataset']} recipe uses {usual:g}) or add "
                            f"--warmup-epochs 2{kept}")
    if isinstance(exc, MemoryError):
        return CommandError(f"out of memory during epoch {trainer.epoch + 1}: lower --batch-size (now "
                            f"{settings['batch_size']}) or use a smaller --model{kept}")
    return None


def _settings(settings: dict, data_dir, n_params, counts) -> dict:
    """The settings of a run as results.json and the report show them."""
    from .._version import __version__
    from ..data import data_root
    from ..train.results import active_backend

    dataset = settings["dataset"]
    shown = {"model": settings["model"], "parameters": int(n_params), "dataset": dataset,
             "data_dir": "bundled with scikit-learn" if dataset == "digits" else str(data_root(data_dir).resolve()),
             "images": counts}
    shown.update({key: settings[key] for key in ("recipe", "epochs", "batch_size", "optimizer", "lr", "momentum",
                                                  "nesterov", "weight_decay", "schedule", "warmup_epochs", "augment",
                                                  "flip", "label_smoothing", "ema", "tta", "seed", "val_split", "limit")})
    if shown["optimizer"] not in ("sgd", "rmsprop"):
        shown.pop("momentum")  # Adam-style optimizers take no momentum argument here
    if shown["optimizer"] != "sgd":
        shown.pop("nesterov")
    for key in ("init", "freeze", "num_classes"):
        if settings.get(key):
            shown[key] = settings[key]
    backend, why = active_backend()
    shown.update(cnnkit_version=__version__, backend=backend)
    if why:
        shown["backend_reason"] = why
    return shown
