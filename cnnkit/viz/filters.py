"""Learned filters of a convolution layer as a grid of small images (the notes' picture of
Krizhevsky's 96 first-layer 11x11x3 filters).

A filter over 3 input channels is drawn in colour (its three input planes as R, G, B), each
filter min-max scaled on its own, as in the AlexNet paper's figure: what matters is the pattern,
not the absolute scale. Deeper filters have many input channels, which no colour can show: each
filter is a row of grayscale tiles, one per input channel, on one scale for the whole layer with
zero at mid-gray (white = positive, black = negative) so that the tiles compare with each other;
that scale is the 99th percentile of the magnitudes, so one large weight does not gray out the rest.
"""
from __future__ import annotations

import numpy as np

from ._figure import new_figure, rescale_unit, save_figure, symmetric_limit, tile_mosaic
from .layers import first_conv, is_conv, resolve_layer


def filter_tiles(weight, max_filters: int = 96, max_channels: int = 16, color: bool | None = None):
    """The tiles of a filter grid and how to lay them out.

    Args:
        weight: ``(out, in, kh, kw)`` convolution weights.
        max_filters, max_channels: at most this many filters (rows) and input channels (columns).
        color: draw 3-channel filters in RGB (default: when ``in == 3``).

    Returns:
        ``(tiles, columns, color)``: ``tiles`` is ``(K, kh, kw, 3)`` in [0, 1] when ``color``
        (``K = min(out, max_filters)``), else ``(K * C, kh, kw)`` in [0, 1] with 0.5 for a zero
        weight (``C = min(in, max_channels)``, row-major: filter by filter); ``columns`` is the
        grid width to use (``None``: near-square).

    Shape:
        weight (out, in, kh, kw) -> colour tiles (min(out, F), kh, kw, 3) or
        gray tiles (min(out, F) * min(in, C), kh, kw), 0.5 + w / (2 * percentile(|w|, 99)) clipped to [0, 1]
    """
    weight = np.asarray(getattr(weight, "data", weight), dtype=np.float64)
    if weight.ndim != 4:
        raise ValueError(f"filter weights must have shape (out, in, kh, kw), got {weight.shape}")
    out_channels, in_channels = weight.shape[:2]
    if color is None:
        color = in_channels == 3
    if color and in_channels != 3:
        raise ValueError(f"colour filters need 3 input channels, the weights have {in_channels}")
    shown = weight[:max_filters]
    if color:
        # (K, 3, kh, kw) -> (K, kh, kw, 3), each filter scaled to [0, 1] on its own
        tiles = rescale_unit(shown.reshape(len(shown), -1), axis=1).reshape(shown.shape).transpose(0, 2, 3, 1)
        return tiles, None, True
    shown = shown[:, :max_channels]
    # one scale for the layer, set by the 99th percentile of |w| so that a few large weights do
    # not wash out the rest (they saturate to black/white instead)
    limit = max(float(np.percentile(np.abs(shown), 99)), symmetric_limit(shown) * 1e-6)
    tiles = np.clip(0.5 + shown / (2 * limit), 0.0, 1.0)
    columns = shown.shape[1]
    if columns == 1:
        columns = None  # one channel per filter: lay the filters out in a near-square grid
    return tiles.reshape(-1, *shown.shape[2:]), columns, False


def plot_filters(model, layer=None, max_filters: int = 96, max_channels: int = 16, path=None, title=None):
    """Figure of the filters of ``layer`` (name, ``convN`` or a module; default: the first
    convolution) of ``model``; saved to ``path`` when given. Returns the Matplotlib figure."""
    if layer is None:
        name, module = first_conv(model)
    elif isinstance(layer, str):
        name, module = resolve_layer(model, layer)
    else:
        name, module = type(layer).__name__, layer
    if not is_conv(module):
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a convolution: its weights are not filters")
    weight = module.weight.data
    tiles, columns, color = filter_tiles(weight, max_filters, max_channels)
    mosaic = tile_mosaic(tiles, columns, pad=1)
    out_c, in_c, kh, kw = weight.shape
    rows_px, cols_px = mosaic.shape[:2]
    width = float(np.clip(cols_px * 0.09, 5.5, 12.0))
    height = float(np.clip(width * rows_px / cols_px, 2.0, 14.0)) + 0.7
    fig = new_figure(width, height)
    ax = fig.add_axes([0.02, 0.02, 0.96, 0.96 * (height - 0.7) / height])
    ax.set_facecolor("white")
    if color:
        ax.imshow(np.nan_to_num(mosaic, nan=1.0), interpolation="nearest")
    else:
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    shown = f"{min(out_c, max_filters)} of {out_c}" if out_c > max_filters else f"{out_c}"
    detail = "RGB, each filter scaled on its own" if color else (
        f"rows: filters, columns: input channels{f' (first {max_channels} of {in_c})' if in_c > max_channels else ''}; "
        "gray = 0" if columns else "gray = 0, one scale for the layer")
    fig.suptitle(title or f"layer {name}: {shown} filters {in_c}x{kh}x{kw}\n{detail}", fontsize=10)
    if path is not None:
        save_figure(fig, path)
    return fig
