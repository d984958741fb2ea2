"""Training curves (loss, accuracy, learning rate against epoch), the confusion matrix, and the
per-layer diagnostics recorded during training (activation statistics, dead ReLUs, gradient
norms, update-to-weight ratios with the notes' ~1e-3 rule of thumb)."""
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
    return rows


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def _column(rows, key):
    return np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in rows])


def plot_history(history, path=None, title=None):
    """Figure of loss, top-1 accuracy and learning rate against epoch (train and validation)."""
    rows = read_history(history) if isinstance(history, (str, Path)) else list(history)
    if not rows:
        raise ValueError("the history is empty: nothing to plot")
    epochs = _column(rows, "epoch") if "epoch" in rows[0] else np.arange(1, len(rows) + 1)
    fig = new_figure(12, 3.6)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    marker = "o" if len(rows) <= 30 else None
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "top1", "top-1 accuracy")):
        for split, style in (("train", "-"), ("val", "--")):
            key = f"{split}_{metric}"
            if any(key in r for r in rows):
                ax.plot(epochs, _column(rows, key), style, marker=marker, label=split)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if any("val_top5" in r for r in rows):
        axes[1].plot(epochs, _column(rows, "val_top5"), ":", marker=marker, label="val top-5")
        axes[1].legend(fontsize=8)
    lr = _column(rows, "lr")
    axes[2].plot(epochs, lr, marker=marker, color="#aa3377")
    if np.all(lr[np.isfinite(lr)] > 0) and np.nanmax(lr) / max(np.nanmin(lr), 1e-300) > 20:
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate (at the start of the epoch)", fontsize=10)
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    last = rows[-1]
    summary = ", ".join(f"{k} {last[k]:.4g}" for k in ("train_loss", "val_loss", "val_top1") if isinstance(last.get(k), (int, float)))
    fig.suptitle(title or f"training curves ({len(rows)} epochs; last: {summary})", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.84, bottom=0.14, wspace=0.25)
    if path is not None:
        save_figure(fig, path)
    return fig


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
    ax = fig.add_axes([0.13, 0.13, 0.72, 0.77])
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
    cax = fig.add_axes([0.88, 0.13, 0.025, 0.77])
    fig.colorbar(im, cax=cax)
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


def plot_diagnostics(records, path=None, title=None):
    """Figure of per-layer training diagnostics against step: ``records`` as written by
    :class:`cnnkit.train.diagnostics.Diagnostics` (``diagnostics.json`` of a run, or the list
    of ``{"step": s, "layers": {name: {stat: value}}}``)."""
    if isinstance(records, (str, Path)):
        path_in = Path(records)
        records = json.loads((path_in / "diagnostics.json" if path_in.is_dir() else path_in).read_text())
    if not records:
        raise ValueError("no diagnostics recorded: train with diagnostics every N steps first")
    steps = np.array([r["step"] for r in records])
    layers = list(dict.fromkeys(name for r in records for name in r["layers"]))
    fig = new_figure(12, 7.5)
    axes = [fig.add_subplot(2, 2, i + 1) for i in range(4)]
    colors = _layer_colors(len(layers))
    for ax, (stat, label, scale) in zip(axes, DIAGNOSTIC_STATS):
        plotted = False
        for color, name in zip(colors, layers):
            values = np.array([r["layers"].get(name, {}).get(stat, np.nan) for r in records], dtype=np.float64)
            if np.any(np.isfinite(values)):
                ax.plot(steps, values, color=color, label=name, lw=1.2)
                plotted = True
        if stat == "update_ratio":
            ax.axhline(1e-3, color="black", ls="--", lw=1)
            ax.text(steps[0], 1e-3, " ~1e-3 rule of thumb", va="bottom", fontsize=7)
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
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.81, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title or f"per-layer diagnostics ({len(records)} measurements)", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.8, top=0.92, bottom=0.08, hspace=0.35, wspace=0.25)
    if path is not None:
        save_figure(fig, path)
    return fig


def _layer_colors(count):
    from matplotlib import colormaps

    cmap = colormaps["viridis"] if count > 10 else colormaps["tab10"]
    return [cmap(i / max(count - 1, 1)) if count > 10 else cmap(i) for i in range(count)]
