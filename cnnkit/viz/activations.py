"""Activation maps: an input image's journey through the network, layer by layer.

Like the notes' figure of an example ConvNet, every layer's output volume is laid out as its depth
slices (one grayscale tile per channel), and the last panel shows the top-5 class scores. Each
layer is drawn on its own scale (its min to max), so the pattern is visible at any depth; the
figure says the range.
"""
from __future__ import annotations

import numpy as np

from ._figure import grid_shape, new_figure, save_figure, tile_mosaic
from .layers import as_batch, capture_outputs, display_layers


def activation_panel(volume, max_slices: int = 16, columns: int | None = None):
    """One layer's output for one image as a mosaic of its depth slices.

    Args:
        volume: ``(C, H, W)`` feature maps or ``(F,)`` features (``(C, 1, 1)`` counts as ``(C,)``).
        max_slices: at most this many channels (the first ones) are shown.

    Returns:
        ``(mosaic, tiles)``: ``mosaic`` is a 2-D array (NaN between tiles) and ``tiles`` the
        number of slices in it. A vector becomes one tile, wrapped into a near-square block.

    Shape:
        (C, H, W) -> tiles = min(C, max_slices), mosaic of grid_shape(tiles, columns) tiles of H x W
    """
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim == 3 and volume.shape[1:] == (1, 1):
        volume = volume.reshape(-1)  # after global pooling: one number per channel, a vector
    if volume.ndim == 1:
        # short vectors (class scores, small fc layers) as one strip, long ones wrapped 64 per row
        rows, cols = grid_shape(volume.size, min(volume.size, 64))
        block = np.full(rows * cols, np.nan)
        block[: volume.size] = volume
        return block.reshape(rows, cols), 1
    if volume.ndim != 3:
        raise ValueError(f"a layer output for one image must be (C, H, W) or (F,), got shape {volume.shape}")
    shown = volume[:max_slices]
    if columns is None:
        columns = min(len(shown), 16)
    return tile_mosaic(shown, columns, pad=1), len(shown)


def top_k(scores, k: int = 5):
    """Indices and softmax probabilities of the ``k`` highest ``scores`` (one image's logits)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    z = np.exp(scores - scores.max())
    probs = z / z.sum()
    order = np.argsort(probs)[::-1][:k]
    return order, probs[order]


def plot_activations(model, x, image=None, classes=None, layers=None, max_slices: int = 16, max_layers: int = 14,
                     path=None, title=None):
    """Figure of the activation volumes of ``model`` for one input.

    Args:
        model: a cnnkit model; run in eval mode without caching.
        x: the model's input for one image, ``(C, H, W)`` or ``(1, C, H, W)`` (normalised as in training).
        image: what to show as the input (e.g. the raw ``(C, H, W)`` uint8 image); default ``x``.
        classes: class names for the top-5 panel.
        layers: dotted layer names (default: ``display_layers(model, max_layers)``).
        max_slices: depth slices shown per layer.
    """
    from ..nn.module import no_grad

    x = as_batch(x)
    if x.shape[0] != 1:
        raise ValueError(f"plot_activations shows one image, got a batch of {x.shape[0]}")
    names = list(layers) if layers else display_layers(model, max_layers)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            outputs, logits = capture_outputs(model, x, names)
    finally:
        model.train(was_training)
    panels = [(name, outputs[name][0]) for name in names]
    rows = len(panels) + 1
    height = 2.0 + 1.05 * len(panels)
    fig = new_figure(12, height)
    grid = fig.add_gridspec(rows, 2, width_ratios=[1, 3], height_ratios=[1.5] + [1] * len(panels),
                            left=0.13, right=0.98, top=1 - 0.9 / height, bottom=0.25 / height, hspace=0.45,
                            wspace=0.15)
    _draw_input(fig.add_subplot(grid[0, 0]), x[0] if image is None else image)
    _draw_top5(fig.add_subplot(grid[0, 1]), np.asarray(logits)[0], classes)
    modules = dict(model.named_modules())
    gray = _gray_with_gaps()
    for row, (name, volume) in enumerate(panels, start=1):
        ax = fig.add_subplot(grid[row, :])
        mosaic, tiles = activation_panel(volume, max_slices)
        finite = mosaic[np.isfinite(mosaic)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        ax.imshow(mosaic, cmap=gray, vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest",
                  aspect="equal" if np.ndim(volume) == 3 else "auto")
        ax.set_xticks([]), ax.set_yticks([])
        scores = _is_class_scores(volume, classes, row == len(panels))
        if scores:
            ax.set_xticks(np.arange(len(classes)), [str(c) for c in classes], fontsize=7)
        shape = "x".join(str(v) for v in np.shape(volume))
        more = f", first {tiles} of {np.shape(volume)[0]}" if np.ndim(volume) == 3 and tiles < np.shape(volume)[0] else ""
        ax.set_ylabel(f"{name}\n{type(modules[name]).__name__}", rotation=0, ha="right", va="center", fontsize=8)
        what = "  class scores (before the softmax)" if scores else ""
        ax.set_title(f"{shape}{more}{what}   range [{lo:.3g}, {hi:.3g}]", fontsize=7, loc="left", pad=2)
    fig.suptitle((title or f"activations of {type(model).__name__}") + "\neach layer on its own gray scale "
                 f"(black: its minimum, white: its maximum); {GAP_COLOR_NAME}: gaps between tiles, no value", fontsize=10,
                 y=1 - 0.08 / height, va="top")
    if path is not None:
        save_figure(fig, path)
    return fig


GAP_COLOR, GAP_COLOR_NAME = "#c6dbef", "light blue"


def _gray_with_gaps():
    """The gray colour map with the NaN gaps of a mosaic in a colour no activation has (white
    would read as the layer's maximum)."""
    from matplotlib import colormaps

    return colormaps["gray"].with_extremes(bad=GAP_COLOR)


def _is_class_scores(volume, classes, last: bool) -> bool:
    """The model's output strip: one value per class, short enough to label each."""
    return (last and classes is not None and np.ndim(volume) == 1 and np.size(volume) == len(classes)
            and len(classes) <= 20)


def _draw_input(ax, image):
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[0]
    if image.shape[0] == 3:
        shown = image.transpose(1, 2, 0).astype(np.float64)
        shown = (shown - shown.min()) / max(shown.max() - shown.min(), 1e-12)
        ax.imshow(shown, interpolation="nearest")
    else:
        ax.imshow(image[0], cmap="gray", interpolation="nearest")
    ax.set_axis_off()
    ax.set_title("input " + "x".join(str(v) for v in image.shape), fontsize=8)


def _draw_top5(ax, logits, classes):
    order, probs = top_k(logits, 5)
    labels = [str(classes[i]) if classes is not None and i < len(classes) else str(i) for i in order]
    ax.barh(np.arange(len(order))[::-1], probs, color="#4477aa")
    ax.set_yticks(np.arange(len(order))[::-1], labels, fontsize=8)
    ax.set_xlim(0, 1)
    for y, p in zip(np.arange(len(order))[::-1], probs):
        ax.text(min(p + 0.01, 0.85), y, f"{p:.1%}", va="center", fontsize=8)
    ax.set_title("top-5 class scores (softmax)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
