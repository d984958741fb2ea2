"""Figures without a display: Matplotlib ``Figure`` objects drawn by the Agg renderer.

cnnkit never imports ``matplotlib.pyplot`` (whose global backend a library has no business
changing): figures are built as ``matplotlib.figure.Figure`` and written with ``savefig``, which
renders through Agg for PNG and through the vector backends for SVG/PDF. This works headless, in
threads and in notebooks alike.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

FORMATS = (".png", ".svg", ".pdf")


def new_figure(width: float, height: float, dpi: int = 100):
    """A Matplotlib ``Figure`` of ``width`` x ``height`` inches attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path, dpi: int | None = None) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix: .png, .svg or .pdf); returns the path."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"cannot write a figure to {path}: use one of the suffixes {', '.join(FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or fig.dpi, facecolor="white")
    return path


def figure_png_bytes(fig, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (for HTML reports)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, facecolor="white")
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...``: an image embedded in a self-contained HTML page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def grid_shape(count: int, columns: int | None = None) -> tuple[int, int]:
    """``(rows, columns)`` of a near-square grid holding ``count`` tiles."""
    if count < 1:
        raise ValueError(f"a grid needs at least one tile, got {count}")
    if columns is None:
        columns = int(np.ceil(np.sqrt(count)))
    columns = max(1, min(columns, count))
    return int(np.ceil(count / columns)), columns


def tile_mosaic(tiles, columns: int | None = None, pad: int = 1, fill: float = np.nan):
    """Lay ``tiles`` ``(K, h, w)`` or ``(K, h, w, 3)`` out as one image with ``pad`` pixels of
    ``fill`` between them (NaN is drawn as the background colour by ``imshow``).

    Shape:
        rows, cols = grid_shape(K, columns);
        mosaic (rows*(h+pad)-pad, cols*(w+pad)-pad[, 3])
    """
    tiles = np.asarray(tiles, dtype=np.float64)
    if tiles.ndim not in (3, 4):
        raise ValueError(f"tiles must have shape (K, h, w) or (K, h, w, 3), got {tiles.shape}")
    count, h, w = tiles.shape[:3]
    rows, cols = grid_shape(count, columns)
    extra = tiles.shape[3:]
    mosaic = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad) + extra, fill, dtype=np.float64)
    for k in range(count):
        r, c = divmod(k, cols)
        mosaic[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tiles[k]
    return mosaic


def symmetric_limit(values) -> float:
    """The largest absolute finite value (at least a tiny positive number), for colour scales
    centred on zero."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(max(np.max(np.abs(finite)) if finite.size else 0.0, 1e-12))


def rescale_unit(values, axis=None):
    """Min-max scale ``values`` to [0, 1] (over ``axis``); constant inputs become 0.5."""
    values = np.asarray(values, dtype=np.float64)
    lo = np.min(values, axis=axis, keepdims=True)
    hi = np.max(values, axis=axis, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (values - lo) / np.where(span > 0, span, 1), 0.5)
