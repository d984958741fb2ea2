"""Maximally activating patches (Zeiler & Fergus): the dataset image regions a unit responds to most.

For one channel of one layer, every image is run up to that layer; the image's strongest response
in that channel (max over positions) is its score, and the ``k`` best images are kept. Each is
cropped to the receptive field of the winning unit, computed from the layers' geometry
(:mod:`cnnkit.viz.receptive_field`): those are exactly the pixels that unit can see. Parts of a
window outside the image (padding) are drawn in a neutral colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._figure import new_figure, save_figure
from .layers import capture_outputs, resolve_layer
from .receptive_field import receptive_field


@dataclass(frozen=True)
class Activation:
    """One strong response: image ``index``, unit position ``(row, col)``, its ``value`` and the
    input ``window`` ``(top, bottom, left, right)`` (unclipped; may reach into the padding)."""

    index: int
    row: int
    col: int
    value: float
    window: tuple[int, int, int, int]


def top_activations(model, images, layer, channel: int, k: int = 9, transform=None, batch_size: int = 256):
    """The ``k`` images of ``images`` (uint8 ``(N, C, H, W)``) whose strongest response in
    ``channel`` of ``layer`` is highest, best first, one entry per image.

    ``transform``: maps a float batch in [0, 1] to the model's input (e.g. the dataset's
    ``Normalize``). A layer with vector outputs ``(N, F)`` has one unit per channel that sees the
    whole image.
    """
    from ..nn.module import no_grad

    name, _ = resolve_layer(model, layer)
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a batch (N, C, H, W), got shape {images.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rf = receptive_field(model, name)
    input_hw = images.shape[2:]
    scores, positions = [], []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].astype(model.dtype) / 255.0
                if transform is not None:
                    x = transform(x, None)
                outputs, _ = capture_outputs(model, x, [name], stop_early=True)
                out = np.asarray(outputs[name])
                if not 0 <= channel < out.shape[1]:
                    raise ValueError(f"channel {channel} is out of range: layer {name!r} has {out.shape[1]} channels")
                maps = out[:, channel].reshape(len(out), -1) if out.ndim == 4 else out[:, channel:channel + 1]
                best = maps.argmax(axis=1)
                scores.append(maps[np.arange(len(maps)), best])
                width = out.shape[3] if out.ndim == 4 else 1
                positions.append(np.stack([best // width, best % width], axis=1))
    finally:
        model.train(was_training)
    scores = np.concatenate(scores)
    positions = np.concatenate(positions)
    order = np.argsort(-scores, kind="stable")[:k]
    return [Activation(int(i), int(positions[i, 0]), int(positions[i, 1]), float(scores[i]),
                       rf.window(int(positions[i, 0]), int(positions[i, 1]), input_hw if rf.whole_input else None))
            for i in order]


def crop_window(image, window, fill: int = 128):
    """``image`` (C, H, W) cut to ``window`` ``(top, bottom, left, right)``; parts of the window
    outside the image are ``fill``. Returns ``(C, bottom - top, right - left)``."""
    image = np.asarray(image)
    top, bottom, left, right = window
    c, h, w = image.shape
    patch = np.full((c, bottom - top, right - left), fill, dtype=image.dtype)
    src_t, src_b, src_l, src_r = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
    if src_b > src_t and src_r > src_l:
        patch[:, src_t - top:src_b - top, src_l - left:src_r - left] = image[:, src_t:src_b, src_l:src_r]
    return patch


def plot_patches(model, images, layer, channel: int, k: int = 9, transform=None, labels=None, classes=None,
                 path=None, title=None):
    """Figure of the top-``k`` receptive-field patches of ``channel`` in ``layer`` over ``images``
    (uint8 ``(N, C, H, W)``): the patches, and below each its whole image with the window marked."""
    from matplotlib.patches import Rectangle

    name, module = resolve_layer(model, layer)
    found = top_activations(model, images, name, channel, k, transform)
    rf = receptive_field(model, name)
    columns = len(found)
    fig = new_figure(max(4.0, 1.3 * columns), 3.4)
    grid = fig.add_gridspec(2, columns, left=0.02, right=0.98, top=0.80, bottom=0.03, hspace=0.35, wspace=0.1)
    for j, act in enumerate(found):
        image = images[act.index]
        patch = crop_window(image, act.window)
        ax = fig.add_subplot(grid[0, j])
        _imshow(ax, patch)
        ax.set_title(f"{act.value:.3g}", fontsize=8)
        ax = fig.add_subplot(grid[1, j])
        _imshow(ax, image)
        top, bottom, left, right = act.window
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="red", lw=1.2))
        ax.set_xlim(-0.5, image.shape[2] - 0.5), ax.set_ylim(image.shape[1] - 0.5, -0.5)
        label = ""
        if labels is not None:
            label = str(classes[labels[act.index]]) if classes is not None else str(labels[act.index])
        ax.set_title(f"#{act.index} {label}".strip(), fontsize=7)
    size = "whole image" if rf.whole_input else f"{rf.size[0]}x{rf.size[1]} px, stride {rf.jump[0]}"
    note = "number = activation"
    if found and found[0].value <= 0 and type(module).__name__ in ("ReLU", "LeakyReLU", "MaxPool2d"):
        note = "NO image activates this channel (a dead unit): the patches are arbitrary"
    fig.suptitle(title or f"top-{len(found)} patches for {name} ({type(module).__name__}) channel {channel}\n"
                 f"receptive field {size}; {note}", fontsize=9, color="black" if note.startswith("number") else "darkred")
    if path is not None:
        save_figure(fig, path)
    return fig


def _imshow(ax, image):
    image = np.asarray(image)
    if image.shape[0] == 3:
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
    else:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
