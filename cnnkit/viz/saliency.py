"""Which input pixels matter for a class score: gradient saliency and occlusion sensitivity.

* Gradient saliency (Simonyan et al. 2014): ``d score_c / d x`` through cnnkit's own backward.
  The network runs forward in eval mode *with* caching (outside ``no_grad``), then backward of a
  one-hot ``dy`` on the chosen class. The map is ``max over channels |gradient|``.
* Occlusion (Zeiler & Fergus 2014): slide a square of the dataset mean (0 after normalisation)
  over the image and record how much the class probability drops; each pixel gets the mean drop
  of the squares covering it. Model-agnostic and easy to read: red = the class needs this region.
"""
from __future__ import annotations

import numpy as np

from ._figure import new_figure, save_figure
from .activations import top_k
from .layers import as_batch


def input_gradient(model, x, target: int | None = None):
    """Gradient of the score (logit) of class ``target`` (default: the predicted class) with
    respect to the input ``x`` (one image ``(C, H, W)`` or ``(1, C, H, W)``).

    Returns ``(gradient (C, H, W), target, logits (classes,))``. Parameter gradients of the model
    are left as they were (the backward adds to them; they are put back).
    """
    x = as_batch(x)
    if x.shape[0] != 1:
        raise ValueError(f"input_gradient takes one image, got a batch of {x.shape[0]}")
    params = list(model.parameters())
    saved = [p.grad.copy() if p.grad is not None else None for p in params]
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
        if logits.ndim != 2:
            raise ValueError(f"the model must output class scores (1, classes), got shape {tuple(logits.shape)}")
        if target is None:
            target = int(np.argmax(logits[0]))
        if not 0 <= target < logits.shape[1]:
            raise ValueError(f"target class {target} is out of range for {logits.shape[1]} classes")
        dy = np.zeros_like(logits)
        dy[0, target] = 1
        dx = model.backward(dy, input_grad=True)
    finally:
        model.train(was_training)
        for p, g in zip(params, saved):
            p.grad = g
    return np.asarray(dx)[0], int(target), np.asarray(logits)[0]


def saliency_map(gradient):
    """``max over channels |gradient|``: ``(C, H, W)`` -> ``(H, W)``."""
    return np.max(np.abs(np.asarray(gradient)), axis=0)


def _starts(size: int, window: int, stride: int) -> list[int]:
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)  # the last square touches the border
    return starts


def occlusion(model, x, target: int | None = None, size: int | None = None, stride: int | None = None,
              fill: float = 0.0, batch_size: int = 128):
    """Drop in the probability of ``target`` when a ``size`` x ``size`` square of ``fill`` hides
    each region of ``x`` (one image). Returns ``(drop (H, W), target, p_original)``: each pixel
    holds the mean drop over the squares covering it (positive = the region supports the class).
    Defaults: ``size = max(3, H // 4)``, ``stride = max(1, size // 2)``."""
    from ..nn.module import no_grad
    from ..train.metrics import softmax

    x = as_batch(x)
    _, _, h, w = x.shape
    size = size or max(3, min(h, w) // 4)
    stride = stride or max(1, size // 2)
    if not 1 <= size <= min(h, w):
        raise ValueError(f"occlusion size must be between 1 and {min(h, w)}, got {size}")
    positions = [(t, l) for t in _starts(h, size, stride) for l in _starts(w, size, stride)]
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            p0 = softmax(np.asarray(model(x), dtype=np.float64))[0]
            if target is None:
                target = int(np.argmax(p0))
            drops = []
            for begin in range(0, len(positions), batch_size):
                chunk = positions[begin:begin + batch_size]
                batch = np.repeat(x, len(chunk), axis=0)
                for i, (t, l) in enumerate(chunk):
                    batch[i, :, t:t + size, l:l + size] = fill
                drops.append(p0[target] - softmax(np.asarray(model(batch), dtype=np.float64))[:, target])
    finally:
        model.train(was_training)
    drops = np.concatenate(drops)
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (t, l), d in zip(positions, drops):
        total[t:t + size, l:l + size] += d
        count[t:t + size, l:l + size] += 1
    return total / count, int(target), float(p0[target])


def plot_saliency(model, x, image=None, classes=None, target: int | None = None, path=None, title=None,
                  occlusion_size: int | None = None):
    """Figure: the input, its gradient saliency map and its occlusion map for class ``target``
    (default: the predicted class)."""
    gradient, target, logits = input_gradient(model, x, target)
    smap = saliency_map(gradient)
    drop, _, p_target = occlusion(model, x, target, size=occlusion_size)
    shown = np.asarray(as_batch(x)[0] if image is None else image)
    name = str(classes[target]) if classes is not None and target < len(classes) else str(target)
    order, probs = top_k(logits, 3)
    guesses = ", ".join(
        f"{classes[i] if classes is not None and i < len(classes) else i} {p:.0%}" for i, p in zip(order, probs))
    fig = new_figure(10, 3.8)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    _show_image(axes[0], shown)
    axes[0].set_title(f"input\nprediction: {guesses}", fontsize=8)
    im = axes[1].imshow(smap, cmap="hot", interpolation="nearest")
    axes[1].set_title(f"gradient saliency |d score[{name}] / dx|\n(max over channels)", fontsize=8)
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    _show_image(axes[2], shown, alpha=0.55)
    limit = max(float(np.max(np.abs(drop))), 1e-6)
    im = axes[2].imshow(drop, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.6, interpolation="nearest")
    axes[2].set_title(f"occlusion: drop of p({name}) = {p_target:.1%}\nwhen a gray square hides the region", fontsize=8)
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title or f"saliency for class {name}", fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.93, top=0.78, bottom=0.03, wspace=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig


def _show_image(ax, image, alpha: float = 1.0):
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[0]
    if image.shape[0] == 3:
        rgb = image.transpose(1, 2, 0).astype(np.float64)
        rgb = (rgb - rgb.min()) / max(rgb.max() - rgb.min(), 1e-12)
        ax.imshow(rgb, alpha=alpha, interpolation="nearest")
    else:
        ax.imshow(image[0], cmap="gray", alpha=alpha, interpolation="nearest")
