"""Training curves (every step's loss, epoch averages, validation, learning rate against epoch),
the confusion matrix, and the per-layer diagnostics recorded during training (activation
statistics, dead ReLUs, gradient norms, update-to-weight ratios with the notes' ~1e-3 rule of
thumb), with ``diagnostics_findings`` saying in words what stands out."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ._figure import new_figure, save_figure


def read_history(run_dir_or_file) -> list[dict]:
    """The history rows of a run: ``history.json`` (or ``history.csv``) in a run directory, or
    that file itself."""
    path = Path(run_dir_or_file)
    if path.is_dir():
        for name in ("history.json", "history.csv"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{run_dir_or_file} holds no history.json or history.csv (is it a run directory "
                                    "written by `cnnkit train`?)")
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
    else:
        import csv

        with open(path, newline="") as f:
            rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path} holds no epochs")
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path} must hold one object of figures per epoch")
    return rows


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def read_steps(run_dir_or_file) -> list[tuple[int, int, float, float]]:
    """Every training step of a run as ``(step, epoch, loss, lr)``: ``steps.csv`` (written by
    ``HistoryWriter``) in a run directory, or that file. Rows that do not parse are skipped;
    a missing file gives an empty list."""
    import csv

    path = Path(run_dir_or_file)
    if path.is_dir():
        path = path / "steps.csv"
    if not path.exists():
        return []
    steps = []
    with open(path, newline="") as f:
        try:
            for row in csv.DictReader(f):
                try:
                    steps.append((int(row["step"]), int(row["epoch"]), float(row["loss"]), float(row["lr"])))
                except (KeyError, TypeError, ValueError):
                    continue
        except csv.Error as exc:
            raise ValueError(f"{path} is not a CSV file of steps ({exc})") from None
    return steps


def _column(rows, key):
    return np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in rows])


def plural(count: int, noun: str) -> str:
    """``plural(1, "epoch")`` -> "1 epoch", ``plural(3, "epoch")`` -> "3 epochs"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _step_positions(steps) -> np.ndarray:
    """Each step's place on the epoch axis: the k-th of n steps of epoch e at e - 1 + k/n."""
    epochs = np.array([s[1] for s in steps])
    positions = np.empty(len(steps))
    for e in np.unique(epochs):
        index = np.flatnonzero(epochs == e)
        positions[index] = e - 1 + np.arange(1, index.size + 1) / index.size
    return positions


def _epoch_axis(ax, last_epoch: float) -> None:
    """Whole epochs from 0 to the last, with room for the end markers (no 0.96-1.04 axis for
    one epoch, no 1.5/2.5 ticks for three)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(-0.04 * last_epoch, 1.06 * last_epoch)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _percent_axis(ax, values) -> None:
    """Accuracy axis in percent, at least 10 points tall (one epoch is not a dot on a 0.1% axis)
    and kept within 0..100% (a hair above, so markers at 100% are whole)."""
    from matplotlib.ticker import PercentFormatter

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        pad = max(0.05 * (hi - lo), 0.01)
        lo, hi = lo - pad, hi + pad
        if hi - lo < 0.1:
            middle = (lo + hi) / 2
            lo, hi = middle - 0.05, middle + 0.05
        top = 1.005
        if hi > top:
            lo, hi = lo - (hi - top), top
        if lo < 0:
            lo, hi = 0.0, min(hi - lo, top)
        ax.set_ylim(lo, hi)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))


def plot_history(history, path=None, title=None, steps=None, best_epoch: int | None = None):
    """Figure of loss, top-1 accuracy and learning rate against epoch.

    Args:
        history: the epoch rows (``history.json``), or a run directory / history file.
        steps: every training step as ``(step, epoch, loss, lr)`` (``steps.csv``; read from the
            run directory when ``history`` is one): drawn as the per-step loss and learning rate.
        best_epoch: marked on the accuracy panel (the epoch of the best checkpoint).
    """
    if isinstance(history, (str, Path)):
        if steps is None and Path(history).is_dir():
            steps = read_steps(history)
        rows = read_history(history)
    else:
        rows = list(history)
    if not rows:
        raise ValueError("the history is empty: nothing to plot")
    steps = list(steps or [])
    epochs = _column(rows, "epoch") if "epoch" in rows[0] else np.arange(1, len(rows) + 1, dtype=np.float64)
    last_epoch = float(np.nanmax(epochs)) if np.any(np.isfinite(epochs)) else float(len(rows))
    fig = new_figure(12, 3.8)
    loss_ax, acc_ax, lr_ax = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    marker = "o" if len(rows) <= 30 else None
    if steps:
        x = _step_positions(steps)
        loss_ax.plot(x, [s[2] for s in steps], "-", color="#4477aa", alpha=0.35, lw=0.8, label="train (each step)")
        lr_ax.plot(x, [s[3] for s in steps], "-", color="#aa3377", lw=1.2)
    else:  # the rate at the start of each epoch holds during it
        lr = _column(rows, "lr")
        lr_ax.step(np.concatenate([epochs - 1, epochs[-1:]]), np.concatenate([lr, lr[-1:]]), where="post",
                   color="#aa3377", marker=marker, markevery=list(range(len(rows))))
    styles = {"train": ("-", "#4477aa", "train (epoch average)" if steps else "train"),
              "val": ("--", "#ee7733", "validation")}
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "top1")):
        for split, (style, color, label) in styles.items():
            key = f"{split}_{metric}"
            if any(key in r for r in rows):
                ax.plot(epochs, _column(rows, key), style, color=color, marker=marker, label=label)
    if any("val_top5" in r for r in rows):
        acc_ax.plot(epochs, _column(rows, "val_top5"), ":", color="#228833", marker=marker, label="validation top-5")
    accuracies = np.concatenate([_column(rows, k) for k in ("train_top1", "val_top1", "val_top5")])
    if best_epoch is not None:
        acc_ax.axvline(best_epoch, color="gray", ls=":", lw=1)
        monitored = _column(rows, "val_top1") if any("val_top1" in r for r in rows) else _column(rows, "train_top1")
        at = np.flatnonzero(epochs == best_epoch)
        if at.size and np.isfinite(monitored[at[0]]):
            acc_ax.plot([best_epoch], [monitored[at[0]]], "*", color="#cc3311", markersize=13, zorder=5,
                        label=f"best checkpoint (epoch {best_epoch})")
    _percent_axis(acc_ax, accuracies)
    lr_values = np.array([s[3] for s in steps]) if steps else _column(rows, "lr")
    lr_values = lr_values[np.isfinite(lr_values)]
    if lr_values.size and np.all(lr_values > 0) and lr_values.max() / lr_values.min() > 20:
        lr_ax.set_yscale("log")
    elif lr_values.size and np.all(lr_values >= 0):
        lr_ax.set_ylim(0, 1.1 * max(float(lr_values.max()), 1e-12))  # from 0: a constant rate is not a zoomed-in wiggle
    for ax, label in ((loss_ax, "loss (cross-entropy)"), (acc_ax, "top-1 accuracy"),
                      (lr_ax, "learning rate" + (" (each step)" if steps else " (per epoch)"))):
        ax.set_title(label, fontsize=10)
        _epoch_axis(ax, last_epoch)
    loss_ax.legend(fontsize=8, loc="best")
    acc_ax.legend(fontsize=8, loc="best")
    last = rows[-1]
    parts = [f"{label} {_value(last[key], key)}" for key, label in (
        ("train_loss", "train loss"), ("val_loss", "validation loss"), ("val_top1", "validation accuracy"))
        if isinstance(last.get(key), (int, float))]
    default = f"training curves ({plural(len(rows), 'epoch')}; last epoch: {', '.join(parts)})"
    fig.suptitle(title or default, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.84, bottom=0.14, wspace=0.25)
    if path is not None:
        save_figure(fig, path)
    return fig


def _value(value, key: str) -> str:
    """Accuracies as percentages, everything else with 4 significant digits."""
    return f"{value:.2%}" if "top" in key else f"{value:.4g}"


def plot_confusion(confusion, classes=None, path=None, title=None, normalize: bool = True):
    """Figure of a confusion matrix (rows: true class, columns: predicted). With ``normalize`` the
    colours are row fractions (recall per class); the cells show the counts."""
    cm = np.asarray(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {cm.shape}")
    k = cm.shape[0]
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    totals = cm.sum(axis=1, keepdims=True)
    shown = cm / np.maximum(totals, 1) if normalize else cm
    size = float(np.clip(0.5 * k + 2.5, 4.5, 12))
    fig = new_figure(size + 0.6, size)
    ax = fig.add_axes([0.12, 0.13, 0.68, 0.77])
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7 if k > 12 else 8,
                        color="white" if shown[i, j] > 0.6 * (1 if normalize else shown.max()) else "black")
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    cax = fig.add_axes([0.83, 0.13, 0.025, 0.77])
    bar = fig.colorbar(im, cax=cax)
    bar.set_label("fraction of the true class (row)" if normalize else "images", fontsize=8)
    accuracy = np.trace(cm) / max(cm.sum(), 1)
    fig.suptitle(title or f"confusion matrix: accuracy {accuracy:.2%} on {int(cm.sum())} images", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig


DIAGNOSTIC_STATS = (
    ("act_std", "activation std", "log"),
    ("dead", "fraction of dead ReLUs", "linear"),
    ("grad_norm", "gradient norm (weights)", "log"),
    ("update_ratio", "update / weight ratio", "log"),
)
UPDATE_RATIO_GUIDE = 1e-3  # the notes' rule of thumb for ||update|| / ||weights|| per step
GUIDE_FACTOR = 10  # how far from the guide a ratio may be before it is pointed out
DEAD_LIMIT = 0.5  # fraction of dead ReLU units worth a word
ACTIVATION_STD_RANGE = (1e-4, 1e3)  # as cnnkit.train.diagnostics warns


def _read_records(records):
    if isinstance(records, (str, Path)):
        path_in = Path(records)
        records = json.loads((path_in / "diagnostics.json" if path_in.is_dir() else path_in).read_text())
    if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("layers"), dict)
                                                and isinstance(r.get("step"), (int, float)) for r in records):
        raise ValueError("diagnostics must be a list of {\"step\": s, \"layers\": {name: {stat: value}}} records")
    return records


def _layer_label(name, layer_types) -> str:
    kind = (layer_types or {}).get(name)
    return f"{name} ({kind})" if kind else str(name)


def plot_diagnostics(records, path=None, title=None, layer_types: dict | None = None):
    """Figure of per-layer training diagnostics against step: ``records`` as written by
    :class:`cnnkit.train.diagnostics.Diagnostics` (``diagnostics.json`` of a run, or the list
    of ``{"step": s, "layers": {name: {stat: value}}}``). Every measurement is a marker; the
    update/weight panel shades the band within 10x of the ~1e-3 guide. ``layer_types`` maps layer
    names to what they are (e.g. ``{"0": "Conv2d"}``) for the legend."""
    records = _read_records(records)
    if not records:
        raise ValueError("no diagnostics recorded: train with diagnostics every N steps first")
    steps = np.array([r["step"] for r in records])
    layers = list(dict.fromkeys(name for r in records for name in r["layers"]))
    fig = new_figure(12, 7.5)
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    colors = _layer_colors(len(layers))
    markersize = 3 if len(records) <= 60 else 1.5
    for ax, (stat, label, scale) in zip(axes, DIAGNOSTIC_STATS):
        plotted = False
        for color, name in zip(colors, layers):
            values = np.array([_stat(r, name, stat) for r in records], dtype=np.float64)
            if np.any(np.isfinite(values)):
                ax.plot(steps, values, color=color, label=_layer_label(name, layer_types), lw=1.0, marker="o",
                        markersize=markersize)
                plotted = True
        if stat == "update_ratio":
            low, high = UPDATE_RATIO_GUIDE / GUIDE_FACTOR, UPDATE_RATIO_GUIDE * GUIDE_FACTOR
            ax.axhspan(low, high, color="#228833", alpha=0.08, lw=0)
            ax.axhline(UPDATE_RATIO_GUIDE, color="black", ls="--", lw=1)
            ax.text(0.01, UPDATE_RATIO_GUIDE, f" ~1e-3 guide (shaded: within {GUIDE_FACTOR}x)", va="bottom",
                    fontsize=7, transform=ax.get_yaxis_transform())
        if plotted and scale == "log":
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if not plotted:
            ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="gray")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        h, l = ax.get_legend_handles_labels()
        for hh, ll in zip(h, l):
            if ll not in labels:
                handles.append(hh), labels.append(ll)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.81, 0.5), fontsize=8, frameon=False,
               title="layer", title_fontsize=8)
    fig.suptitle(title or f"per-layer diagnostics ({plural(len(records), 'measurement')})", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.8, top=0.92, bottom=0.08, hspace=0.35, wspace=0.25)
    if path is not None:
        save_figure(fig, path)
    return fig


def _stat(record, layer, stat) -> float:
    stats = record["layers"].get(layer)
    value = stats.get(stat, np.nan) if isinstance(stats, dict) else np.nan
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan


def diagnostics_findings(records, layer_types: dict | None = None) -> list[str]:
    """What the diagnostics say, in words: the layers whose update/weight ratio is more than 10x
    away from the ~1e-3 guide, whose ReLUs are mostly dead, or whose activations vanish or
    explode, judged on the median of the last recorded epoch's measurements (the first steps of a
    run are not typical); and the layers whose ratio rose above 10x the guide earlier and settled.
    An empty list: nothing stands out."""
    records = _read_records(records)
    if not records:
        return []
    last_epoch = max(int(r.get("epoch", 1)) for r in records)
    recent = [r for r in records if int(r.get("epoch", 1)) == last_epoch]
    high = UPDATE_RATIO_GUIDE * GUIDE_FACTOR
    findings, settled = [], []
    for name in dict.fromkeys(name for r in records for name in r["layers"]):
        label = f"layer {_layer_label(name, layer_types)}"

        def median(stat):
            values = np.array([_stat(r, name, stat) for r in recent])
            values = values[~np.isnan(values)]
            return float(np.median(values)) if values.size else None

        ratio, dead, std = median("update_ratio"), median("dead"), median("act_std")
        if ratio is not None and ratio > high:
            findings.append(f"{label}: update/weight ratio {ratio:.1e}, {ratio / UPDATE_RATIO_GUIDE:.0f}x the ~1e-3 "
                            f"guide: each step changes its weights by about {ratio:.1%}; the learning rate is probably "
                            "too high for this layer.")
        elif ratio is not None and ratio == 0:
            findings.append(f"{label}: its weights did not change (frozen, or no gradient reaches it).")
        elif ratio is not None and ratio < UPDATE_RATIO_GUIDE / GUIDE_FACTOR:
            findings.append(f"{label}: update/weight ratio {ratio:.1e}, {UPDATE_RATIO_GUIDE / ratio:.0f}x below the "
                            "~1e-3 guide: its weights barely move; the learning rate may be too low.")
        elif ratio is not None and last_epoch > 1:
            earlier = [(_stat(r, name, "update_ratio"), r["step"]) for r in records
                       if int(r.get("epoch", 1)) < last_epoch]
            peak = max(((v, step) for v, step in earlier if np.isfinite(v)), default=None)
            if peak is not None and peak[0] > high:
                settled.append((name, peak))
        if dead is not None and dead > DEAD_LIMIT:
            findings.append(f"{label}: {dead:.0%} of its units output zero for every image of a batch (dead "
                            "ReLUs get no gradient); a lower learning rate or another initialisation may help.")
        if std is not None and not ACTIVATION_STD_RANGE[0] <= std <= ACTIVATION_STD_RANGE[1]:
            what = "vanish" if std < ACTIVATION_STD_RANGE[0] else "explode"
            findings.append(f"{label}: its activations {what} (std {std:.2g}); check the initialisation and "
                            "the learning rate.")
    if settled:
        names = ", ".join(_layer_label(name, layer_types) for name, _ in settled)
        value, step = max(peak for _, peak in settled)
        layers = f"layer{'s' if len(settled) > 1 else ''} {names}"
        findings.append(f"Earlier in training the update/weight ratio of {layers} rose above 10x the ~1e-3 guide "
                        f"(up to {value:.1e}, {value / UPDATE_RATIO_GUIDE:.0f}x, at step {step}) and settled by the "
                        "last epoch: the start was fast; a learning-rate warmup (--warmup-epochs) makes it gentler.")
    return findings


def _layer_colors(count):
    from matplotlib import colormaps

    cmap = colormaps["viridis"] if count > 10 else colormaps["tab10"]
    return [cmap(i / max(count - 1, 1)) if count > 10 else cmap(i) for i in range(count)]
