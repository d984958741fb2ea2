"""``report.html``: a small static page that sums up a training run and opens in any browser.

It holds the training curves, the per-layer diagnostics (when recorded), the confusion matrix on
the test split, the first layer's filters and the activation maps of a few test images, all as
PNG images embedded in the page (no other files needed).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ._figure import figure_png_bytes, png_data_uri


def model_input(images, dataset_name, dtype=np.float32):
    """uint8 ``(N, C, H, W)`` images -> the model's input: [0, 1] then the dataset's
    normalisation (as ``cnnkit train`` does)."""
    from ..data.transforms import DATASET_STATS, Normalize

    x = np.asarray(images).astype(dtype) / 255.0
    if dataset_name in DATASET_STATS:
        x = Normalize.for_dataset(dataset_name)(x, None)
    return x


def confusion_on(model, dataset, dataset_name, limit: int | None = 2000, batch_size: int = 500):
    """Confusion matrix of ``model`` on the first ``limit`` images of ``dataset``."""
    from ..nn.module import no_grad
    from ..train.metrics import confusion_matrix

    n = len(dataset) if limit is None else min(limit, len(dataset))
    predictions = []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                logits = model(model_input(dataset.images[start:stop], dataset_name, model.dtype))
                predictions.append(np.argmax(logits, axis=1))
    finally:
        model.train(was_training)
    return confusion_matrix(dataset.labels[:n], np.concatenate(predictions), len(dataset.classes))


def write_report(run_dir, data_dir=None, checkpoint: str | None = None, examples: int = 2,
                 limit: int | None = 2000) -> Path:
    """Write ``run_dir/report.html`` for a run of ``cnnkit train`` and return its path.

    ``checkpoint``: the file name in ``run_dir`` to show (default: ``best``, else ``last``, with
    the suffix ``cnnkit train`` wrote).

    Sections without their inputs are left out with a note (no history, no checkpoint, the
    dataset not found), so a report can always be written.
    """
    from .. import io
    from .activations import plot_activations
    from .curves import plot_confusion, plot_diagnostics, plot_history, read_history
    from .filters import plot_filters
    from .layers import conv_layers

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    sections, notes = [], []

    def figure(title, fig, caption=""):
        sections.append((title, png_data_uri(figure_png_bytes(fig)), caption))

    history = None
    try:
        history = read_history(run_dir)
        figure("Training curves", plot_history(history))
    except (FileNotFoundError, ValueError) as exc:
        notes.append(f"no training curves: {exc}")
    if (run_dir / "diagnostics.json").exists():
        records = json.loads((run_dir / "diagnostics.json").read_text())
        if records:
            figure("Per-layer diagnostics", plot_diagnostics(records),
                   "activation spread, dead ReLUs, gradient norms and update/weight ratios (~1e-3 is healthy)")
    model = None
    candidates = [run_dir / checkpoint] if checkpoint else [
        run_dir / f"{stem}{suffix}" for stem in ("best", "last") for suffix in (".safetensors", ".ckpt", ".npz")]
    ckpt = next((c for c in candidates if c.exists()), None)
    if ckpt is not None:
        model = io.load(ckpt)
    else:
        notes.append(f"no checkpoint in {run_dir}: no confusion matrix, filters or activations")
    config = getattr(model, "config", None) or {}
    test_set = None
    if model is not None and config.get("dataset"):
        from .. import data

        try:
            test_set = data.load(config["dataset"], "test", root=data_dir, download=False)
        except (FileNotFoundError, ValueError) as exc:
            notes.append(f"test data not found ({exc}); pass the data folder to see the confusion matrix and activations")
    if test_set is not None:
        cm = confusion_on(model, test_set, config["dataset"], limit)
        figure("Confusion matrix", plot_confusion(cm, test_set.classes),
               f"first {int(cm.sum())} test images; rows: true class, columns: predicted")
    if model is not None and conv_layers(model):
        figure("First-layer filters", plot_filters(model))
    if test_set is not None:
        for index in range(min(examples, len(test_set))):
            image = test_set.images[index]
            x = model_input(image[None], config["dataset"], model.dtype)
            label = test_set.classes[test_set.labels[index]]
            figure(f"Activations: test image {index} ({label})",
                   plot_activations(model, x, image=image, classes=test_set.classes,
                                    title=f"test image {index}, true class {label}"))
    path = run_dir / "report.html"
    path.write_text(_page(run_dir, history, config, sections, notes))
    return path


def _page(run_dir, history, config, sections, notes) -> str:
    title = f"cnnkit run {run_dir.name}"
    facts = []
    if config.get("name"):
        facts.append(f"model <b>{html.escape(str(config['name']))}</b>")
    if config.get("dataset"):
        facts.append(f"dataset <b>{html.escape(str(config['dataset']))}</b>")
    if history:
        last = history[-1]
        facts.append(f"{len(history)} epochs")
        for key, label in (("val_top1", "validation accuracy"), ("train_loss", "training loss")):
            if isinstance(last.get(key), (int, float)):
                value = f"{last[key]:.2%}" if key.endswith("top1") else f"{last[key]:.4f}"
                facts.append(f"last {label} {value}")
    body = [f"<h1>{html.escape(title)}</h1>", "<p>" + ", ".join(facts) + "</p>"]
    body += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    for heading, uri, caption in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if caption:
            body.append(f'<p class="caption">{html.escape(caption)}</p>')
        body.append(f'<img src="{uri}" alt="{html.escape(heading)}">')
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) + "</title>\n"
            "<style>body{font-family:sans-serif;max-width:1250px;margin:1.5em auto;padding:0 1em}"
            "img{max-width:100%;border:1px solid #ddd}.note{color:#a33}.caption{color:#555}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")
