"""The notes' animated convolution demo, with every number: a small input volume, a few filters,
stride and zero padding; each output value is the dot product of a filter with the highlighted
input window (every one of its kh*kw*C products), plus the bias.

``ConvDemo`` computes everything by plain loops, the formula written out (it is the reference the
tests hold ``Conv2d`` to). ``plot_conv_demo`` draws chosen steps as a static figure,
``conv_demo_gif`` animates every step (Pillow), ``conv_demo_html`` writes a self-contained page
(previous/next/play, arrow keys, click an output cell to see its window, the products of each
channel). Geometry that does not fit (the notes' 7x7 input, 3x3 filter, stride 3) has its own
picture and page: ``geometry_problem`` says why, ``plot_misfit`` / ``misfit_html`` show it.

Notation, as in the notes: volumes are indexed ``[row, column, depth]``; ``x[:, :, 0]`` is the
first depth slice of the input drawn with its zero padding (indices count the cells drawn, the
padding included), ``w0[:, :, 0]`` the first slice of filter 0, ``out[:, :, 0]`` the output slice
of filter 0 and ``out[1, 2, 0]`` one output value.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._figure import new_figure, save_figure


@dataclass
class ConvDemo:
    """A convolution small enough to follow by hand.

    ``x``: ``(C, H, W)`` input; ``weight``: ``(K, C, kh, kw)``; ``bias``: ``(K,)``.

    Shape:
        out (K, (H - kh + 2P)/S + 1, (W - kw + 2P)/S + 1)
    """

    x: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    stride: int = 2
    padding: int = 1

    def __post_init__(self):
        from ..functional.shapes import conv_output_size

        self.x = np.asarray(self.x)
        self.weight = np.asarray(self.weight)
        self.bias = np.asarray(self.bias)
        if self.x.ndim != 3 or self.weight.ndim != 4 or self.weight.shape[1] != self.x.shape[0]:
            raise ValueError(f"ConvDemo needs x (C, H, W) and weight (K, C, kh, kw) with the same C, got "
                             f"{self.x.shape} and {self.weight.shape}")
        if self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"ConvDemo needs one bias per filter: {self.weight.shape[0]}, got shape {self.bias.shape}")
        _, h, w = self.x.shape
        kh, kw = self.weight.shape[2:]
        self.out_h = conv_output_size(h, kh, self.stride, self.padding, layer="ConvDemo", axis="height")
        self.out_w = conv_output_size(w, kw, self.stride, self.padding, layer="ConvDemo", axis="width")

    @property
    def padded(self) -> np.ndarray:
        p = self.padding
        return np.pad(self.x, ((0, 0), (p, p), (p, p)))

    @property
    def num_steps(self) -> int:
        return self.weight.shape[0] * self.out_h * self.out_w

    def step(self, index: int) -> dict:
        """Step ``index`` (filter-major, then rows, then columns): which filter, output position,
        input window (in padded coordinates), per-channel dot products, bias and the result."""
        if not 0 <= index < self.num_steps:
            raise ValueError(f"step must be in 0..{self.num_steps - 1}, got {index}")
        k, rest = divmod(index, self.out_h * self.out_w)
        i, j = divmod(rest, self.out_w)
        kh, kw = self.weight.shape[2:]
        top, left = i * self.stride, j * self.stride
        window = self.padded[:, top:top + kh, left:left + kw]
        per_channel = [float(np.sum(window[c] * self.weight[k, c])) for c in range(self.x.shape[0])]
        value = sum(per_channel) + float(self.bias[k])
        return {"filter": k, "row": i, "col": j, "top": top, "left": left, "per_channel": per_channel,
                "bias": float(self.bias[k]), "value": value}

    def products(self, index: int) -> np.ndarray:
        """The ``(C, kh, kw)`` products ``x * w`` of step ``index``: their sum plus the bias is
        the output value."""
        s = self.step(index)
        kh, kw = self.weight.shape[2:]
        window = self.padded[:, s["top"]:s["top"] + kh, s["left"]:s["left"] + kw]
        return window * self.weight[s["filter"]]

    def output(self) -> np.ndarray:
        """The output volume ``(K, out_h, out_w)``, one step at a time."""
        out = np.zeros((self.weight.shape[0], self.out_h, self.out_w))
        for index in range(self.num_steps):
            s = self.step(index)
            out[s["filter"], s["row"], s["col"]] = s["value"]
        return out

    def equation(self, index: int) -> str:
        """``out[row, col, k] = x[window] . wk + bk = (one sum per channel) + bias = value``."""
        s = self.step(index)
        parts = " + ".join(_term(v) for v in s["per_channel"])
        return (f"out[{s['row']}, {s['col']}, {s['filter']}] = {self.window_slice(index)} . w{s['filter']} + "
                f"b{s['filter']} = ({parts}) + {_term(s['bias'])} = {_fmt(s['value'])}")

    def window_slice(self, index: int) -> str:
        """The window of step ``index`` in the notes' notation, e.g. ``x[0:3, 2:5, :]``."""
        s = self.step(index)
        kh, kw = self.weight.shape[2:]
        return f"x[{s['top']}:{s['top'] + kh}, {s['left']}:{s['left'] + kw}, :]"

    def geometry(self, separator: str = ": ") -> str:
        """The demo's geometry, ``separator``, and the output-size formula with its numbers."""
        (c, h, w), (k, _, kh, kw) = self.x.shape, self.weight.shape
        p, s = self.padding, self.stride
        if h == w and kh == kw:
            sizes = f"output size (W - F + 2P)/S + 1 = {output_formula(w, kw, s, p)}"
        else:
            sizes = (f"output height (H - F + 2P)/S + 1 = {output_formula(h, kh, s, p)}, width "
                     f"{output_formula(w, kw, s, p)}")
        return (f"input {h}x{w}x{c}, pad {p}, {k} filter{'s' if k != 1 else ''} {kh}x{kw}x{c}, stride {s}{separator}"
                f"{sizes}, so the output is {self.out_h}x{self.out_w}x{k}")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _term(v: float) -> str:
    """A number inside a sum: negative ones in brackets, ``1 + (-2)``."""
    return _fmt(v) if v >= 0 else f"({_fmt(v)})"


def output_formula(size: int, kernel: int, stride: int, padding: int) -> str:
    """``"(5 - 3 + 2*1)/2 + 1 = 3"``: the output-size formula with the numbers in."""
    value = (size - kernel + 2 * padding) / stride + 1
    shown = str(int(value)) if float(value).is_integer() else f"{value:.2f}"
    return f"({size} - {kernel} + 2*{padding})/{stride} + 1 = {shown}"


def geometry_problem(size: int, kernel: int, stride: int, padding: int) -> str | None:
    """Why a ``size`` x ``size`` input, ``kernel`` x ``kernel`` filters, ``stride`` and
    ``padding`` make no convolution (cnnkit refuses geometry that silently drops input), in
    words; None when they fit."""
    for name, value, low in (("size", size, 1), ("kernel", kernel, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    padded = size + 2 * padding
    if kernel > padded:
        return (f"A {kernel}x{kernel} filter does not fit in the {size}x{size} input padded to {padded}x{padded}: "
                f"(W - F + 2P)/S + 1 = {output_formula(size, kernel, stride, padding)} leaves no room for a single "
                "window. Use a smaller filter or more padding.")
    count = (padded - kernel) // stride + 1
    covered = (count - 1) * stride + kernel  # columns 0 .. covered-1 of the padded input are seen
    last_real = padding + size - 1
    if kernel < stride or covered - 1 >= last_real:
        return None  # every real column is seen (a filter narrower than the stride skips on purpose)
    starts = [i * stride for i in range(count)]
    unseen = list(range(covered, last_real + 1))
    fixes = []
    better_pad = next((p for p in range(padding + 1, padding + stride) if (size + 2 * p - kernel) % stride == 0), None)
    if better_pad is not None:
        fixes.append(f"padding {better_pad}: {output_formula(size, kernel, stride, better_pad)}")
    better_stride = next((s for s in range(stride - 1, 0, -1) if (padded - kernel) % s == 0), None)
    if better_stride is not None:
        fixes.append(f"stride {better_stride}: {output_formula(size, kernel, better_stride, padding)}")
    columns = ", ".join(f"{a}-{a + kernel - 1}" for a in starts)
    return (f"The filter does not fit: (W - F + 2P)/S + 1 = {output_formula(size, kernel, stride, padding)} is not "
            f"a whole number. Counting the columns of the padded input from 0, the {count} window"
            f"{'s' if count != 1 else ''} of width {kernel} that fit start at column{'s' if count != 1 else ''} "
            f"{', '.join(map(str, starts))} and cover columns {columns}; the next one would start at column "
            f"{starts[-1] + stride} and need columns up to {starts[-1] + stride + kernel - 1}, but the padded input "
            f"ends at column {padded - 1}. So column{'s' if len(unseen) > 1 else ''} {', '.join(map(str, unseen))} of "
            f"the input (and row{'s' if len(unseen) > 1 else ''} {', '.join(map(str, unseen))}, by the same count) "
            "would never be seen by any output; cnnkit refuses such a layer instead of silently dropping input. "
            "Fix it with " + " or ".join(fixes) + ".")


def make_demo(size: int = 5, channels: int = 3, filters: int = 2, kernel: int = 3, stride: int = 2, padding: int = 1,
              seed: int = 0) -> ConvDemo:
    """The notes' demo by default: a 5x5x3 input with values 0..2, two 3x3x3 filters with values
    -1..1, biases 1 and 0, stride 2, padding 1 -> a 3x3x2 output. Integers, so the sums can be
    checked by hand."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(channels, size, size)).astype(np.float64)
    weight = rng.integers(-1, 2, size=(filters, channels, kernel, kernel)).astype(np.float64)
    bias = np.array([1.0] + [0.0] * (filters - 1))
    return ConvDemo(x, weight, bias, stride, padding)


# -- drawing ------------------------------------------------------------------------------------
_COLORS = {"pad": "#e6e6e6", "cell": "#ffffff", "window": "#9ecae1", "filter": "#fdd0a2", "out": "#c7e9c0",
           "current": "#31a354", "outline": "#2171b5", "unseen": "#f4a582"}
_LEGEND = (("pad", "padding (zeros)"), ("window", "input window"), ("filter", "filter in use"),
           ("out", "computed"), ("current", "this step"))


class _Matrix:
    """A grid of numbered cells drawn once; ``update`` recolours and renumbers it and moves the
    window outline (cheap to redraw, which keeps the animation fast)."""

    def __init__(self, ax, values, title, frame=None, fontsize=8):
        from matplotlib.patches import Rectangle

        rows, cols = np.shape(values)
        frame_rows, frame_cols = frame or (rows, cols)
        self.ax = ax
        self.image = ax.imshow(np.ones((rows, cols, 3)), interpolation="nearest", vmin=0, vmax=1)
        self.texts = [[ax.text(c, r, "", ha="center", va="center", fontsize=fontsize) for c in range(cols)]
                      for r in range(rows)]
        # cell borders as two line collections; no axis ticks (they dominate the drawing time)
        ax.hlines(np.arange(-0.5, rows + 0.5), -0.5, cols - 0.5, color="#888888", lw=0.6, clip_on=False)
        ax.vlines(np.arange(-0.5, cols + 0.5), -0.5, rows - 0.5, color="#888888", lw=0.6, clip_on=False)
        # the window's outline: padding cells inside the window keep their padding colour
        self.outline = ax.add_patch(Rectangle((-0.5, -0.5), 0, 0, fill=False, lw=2.2, ec=_COLORS["outline"],
                                              visible=False, clip_on=False, zorder=3))
        # every matrix sits centred in a frame of the same number of cells: equal cell sizes
        dy, dx = (frame_rows - rows) / 2, (frame_cols - cols) / 2
        ax.set_xlim(-0.5 - dx, cols - 0.5 + dx), ax.set_ylim(rows - 0.5 + dy, -0.5 - dy)
        ax.set_axis_off()
        self.title = ax.text((cols - 1) / 2, -0.8, title, ha="center", va="bottom", fontsize=fontsize)
        self.update(values, [[_COLORS["cell"]] * cols for _ in range(rows)])

    def update(self, values, fills, title=None, window=None):
        from matplotlib.colors import to_rgb

        self.image.set_data(np.array([[to_rgb(c) for c in row] for row in fills]))
        for r, row in enumerate(self.texts):
            for c, text in enumerate(row):
                v = values[r][c]
                text.set_text("" if v is None else _fmt(v))
        if title is not None:
            self.title.set_text(title)
        if window is not None:
            top, left, height, width = window
            self.outline.set_bounds(left - 0.5, top - 0.5, width, height)
        self.outline.set_visible(window is not None)


def _is_padding(r, q, rows, cols, p) -> bool:
    return r < p or r >= rows - p or q < p or q >= cols - p


class _Frame:
    """The layout of one step: input slices (with the window), the filters, the output so far,
    and the equation with the numbers. Built once, then ``show(index)`` for each step."""

    def __init__(self, fig, demo: ConvDemo, area=(0.0, 0.0, 1.0, 1.0)):
        self.demo = demo
        self.done = demo.output()
        channels, filters = demo.x.shape[0], demo.weight.shape[0]
        kh, kw = demo.weight.shape[2:]
        ph, pw = demo.padded.shape[1:]
        left, bottom, width, height = area
        grid = fig.add_gridspec(max(channels, filters), 2 + filters, left=left + 0.03 * width,
                                right=left + 0.97 * width, bottom=bottom + 0.16 * height,
                                top=bottom + 0.86 * height, hspace=0.45, wspace=0.25)
        frame = (max(ph, kh, demo.out_h), max(pw, kw, demo.out_w))
        self.inputs = [_Matrix(fig.add_subplot(grid[c, 0]), demo.padded[c], "", frame) for c in range(channels)]
        self.filters = [[_Matrix(fig.add_subplot(grid[c, 1 + k]), demo.weight[k, c],
                                 f"w{k}[:, :, {c}]" + (f"   b{k} = {_fmt(demo.bias[k])}" if c == 0 else ""), frame)
                         for c in range(channels)] for k in range(filters)]
        self.outputs = [_Matrix(fig.add_subplot(grid[k, 1 + filters]), np.zeros((demo.out_h, demo.out_w)),
                                f"out[:, :, {k}]", frame) for k in range(filters)]
        self.equation = fig.text(left + 0.03 * width, bottom + 0.05 * height, "", fontsize=9, family="monospace")

    def show(self, index: int) -> None:
        demo, s = self.demo, self.demo.step(index)
        kh, kw = demo.weight.shape[2:]
        p = demo.padding
        ph, pw = demo.padded.shape[1:]
        for c, matrix in enumerate(self.inputs):
            fills = [[_COLORS["pad"] if _is_padding(r, q, ph, pw, p)
                      else _COLORS["window"] if s["top"] <= r < s["top"] + kh and s["left"] <= q < s["left"] + kw
                      else _COLORS["cell"] for q in range(pw)] for r in range(ph)]
            matrix.update(demo.padded[c], fills,
                          f"x[:, :, {c}] (pad {p})\nwindow . w{s['filter']}[:, :, {c}] = {_fmt(s['per_channel'][c])}",
                          window=(s["top"], s["left"], kh, kw))
        for k, column in enumerate(self.filters):
            color = _COLORS["filter"] if k == s["filter"] else _COLORS["cell"]
            for c, matrix in enumerate(column):
                matrix.update(demo.weight[k, c], [[color] * kw for _ in range(kh)])
        per = demo.out_h * demo.out_w
        for k, matrix in enumerate(self.outputs):
            order = [[k * per + r * demo.out_w + q for q in range(demo.out_w)] for r in range(demo.out_h)]
            values = [[self.done[k, r, q] if order[r][q] <= index else None for q in range(demo.out_w)]
                      for r in range(demo.out_h)]
            fills = [[_COLORS["current"] if n == index else _COLORS["out"] if n < index else _COLORS["cell"]
                      for n in row] for row in order]
            matrix.update(values, fills)
        self.equation.set_text(f"step {index + 1}/{demo.num_steps}:  " + demo.equation(index))


def _legend(fig, y: float, fontsize: int = 8) -> None:
    """A row of colour swatches with their meaning at height ``y`` (figure fraction)."""
    from matplotlib.patches import Rectangle

    x, char = 0.03, 0.075 / fig.get_figwidth()  # about one character of the label, in figure fractions
    side = 0.14 / fig.get_figwidth()
    for key, label in _LEGEND + (("outline", "window outline"),):
        swatch = dict(fc="none", ec=_COLORS["outline"], lw=2) if key == "outline" else dict(fc=_COLORS[key], ec="#888888", lw=0.6)
        fig.add_artist(Rectangle((x, y), side, side * fig.get_figwidth() / fig.get_figheight(),
                                 transform=fig.transFigure, **swatch))
        fig.text(x + side + 0.006, y, label, fontsize=fontsize, va="bottom")
        x += side + 0.025 + char * len(label)


def draw_step(fig, demo: ConvDemo, index: int, area=(0.0, 0.0, 1.0, 1.0)):
    """Draw step ``index`` of ``demo`` into ``fig`` within ``area`` (left, bottom, width, height
    in figure fractions): input slices with the window, the filters, the output so far."""
    frame = _Frame(fig, demo, area)
    frame.show(index)
    return frame


def _frame_size(demo: ConvDemo) -> tuple[float, float]:
    rows = max(demo.x.shape[0], demo.weight.shape[0])
    width = max(7.0, 1.3 * (2 + demo.weight.shape[0]) + 0.12 * max(demo.padded.shape[1:]) * (2 + demo.weight.shape[0]))
    return min(width, 14.0), 1.0 + 1.9 * rows


def plot_conv_demo(demo: ConvDemo | None = None, steps=(0, 1), path=None):
    """Figure of the chosen steps of ``demo`` (default: the notes' demo, its first two steps,
    which show the stride), one frame below the other, with the geometry and a colour legend."""
    demo = demo or make_demo()
    steps = list(steps)
    width, frame_h = _frame_size(demo)
    head = 0.9
    fig = new_figure(width, frame_h * len(steps) + head)
    top_margin = head / (frame_h * len(steps) + head)
    share = (1 - top_margin) / len(steps)
    for n, index in enumerate(steps):
        draw_step(fig, demo, index, area=(0.0, 1 - top_margin - (n + 1) * share, 1.0, share))
    fig.suptitle("convolution: " + demo.geometry("\n"), fontsize=10, y=1 - 0.08 / fig.get_figheight())
    _legend(fig, 1 - 0.72 / fig.get_figheight())
    if path is not None:
        save_figure(fig, path)
    return fig


def conv_demo_frames(demo: ConvDemo | None = None, dpi: int = 70):
    """Every step as an RGB uint8 image ``(height, width, 3)``."""
    demo = demo or make_demo()
    width, height = _frame_size(demo)
    fig = new_figure(width, height + 0.8, dpi=dpi)
    frame = _Frame(fig, demo, area=(0.0, 0.0, 1.0, height / (height + 0.8)))
    fig.text(0.03, 1 - 0.08 / fig.get_figheight(), demo.geometry("\n"), fontsize=8, va="top")
    _legend(fig, 1 - 0.62 / fig.get_figheight(), fontsize=7)
    frames = []
    for index in range(demo.num_steps):
        frame.show(index)
        fig.canvas.draw()
        frames.append(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())
    return frames


def conv_demo_gif(path, demo: ConvDemo | None = None, ms_per_step: int = 1200, dpi: int = 90) -> Path:
    """Animated GIF of every step of ``demo`` (Pillow), looping."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(f) for f in conv_demo_frames(demo, dpi)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_step, loop=0, optimize=True)
    return path


def conv_demo_html(path, demo: ConvDemo | None = None) -> Path:
    """A self-contained HTML page (no external files or scripts) stepping through ``demo``:
    previous/next/play buttons, arrow keys (Home/End: first/last), a click on an output cell
    jumps to its step; the products of the current window, channel by channel."""
    demo = demo or make_demo()
    k, c, kh, kw = demo.weight.shape
    data = {
        "x": demo.padded.tolist(), "pad": demo.padding, "stride": demo.stride, "weight": demo.weight.tolist(),
        "bias": demo.bias.tolist(), "outH": demo.out_h, "outW": demo.out_w,
        "steps": [demo.step(i) for i in range(demo.num_steps)],
        "equations": [demo.equation(i) for i in range(demo.num_steps)],
        "windows": [demo.window_slice(i) for i in range(demo.num_steps)],
    }
    (h, w), p, s = demo.x.shape[1:], demo.padding, demo.stride
    title = f"Convolution demo: input {h}x{w}x{c}, pad {p}, {k} filter{'s' if k != 1 else ''} {kh}x{kw}x{c}, stride {s}"
    geometry = (f"<p class=\"geometry\">Input <b>{h}x{w}x{c}</b> (height x width x depth), zero padding <b>P = {p}</b>, "
                f"<b>{k}</b> filter{'s' if k != 1 else ''} of <b>{kh}x{kw}x{c}</b> (F = {kh}), stride <b>S = {s}</b>.</p>"
                f"<p class=\"geometry\">Output size: (W - F + 2P)/S + 1 = {html.escape(output_formula(w, kw, s, p))}"
                + (f" wide and {html.escape(output_formula(h, kh, s, p))} high" if (h, kh) != (w, kw) else "")
                + f", so the output volume is <b>{demo.out_h}x{demo.out_w}x{k}</b>: one {demo.out_h}x{demo.out_w} "
                f"slice per filter.</p><p>Each output value is the dot product of one filter with the input window "
                f"under it: all {kh * kw * c} = {kh}x{kw}x{c} products added up, plus the filter's bias. The window "
                f"moves {s} cell{'s' if s != 1 else ''} at a time (the stride).</p>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = (_HTML.replace("__TITLE__", html.escape(title)).replace("__GEOMETRY__", geometry)
            .replace("__DATA__", json.dumps(data)))
    path.write_text(page)
    return path


# -- geometry that does not fit ---------------------------------------------------------------------
def _seen(size: int, kernel: int, stride: int, padding: int) -> np.ndarray:
    """Which of the ``size + 2*padding`` padded rows (or columns) some window covers."""
    padded = size + 2 * padding
    seen = np.zeros(padded, dtype=bool)
    for start in range(0, padded - kernel + 1, stride):
        seen[start:start + kernel] = True
    return seen


def plot_misfit(size: int, kernel: int, stride: int, padding: int, path=None):
    """Figure for geometry that does not fit: the padded input with the windows that fit outlined
    and the cells no window covers marked, and the explanation of ``geometry_problem``."""
    import textwrap

    from matplotlib.patches import Rectangle

    problem = geometry_problem(size, kernel, stride, padding)
    if problem is None:
        raise ValueError(f"input {size}, filter {kernel}, stride {stride}, padding {padding} fit: draw the demo instead")
    seen = _seen(size, kernel, stride, padding)
    padded = size + 2 * padding
    fills = [[_COLORS["pad"] if _is_padding(r, q, padded, padded, padding)
              else _COLORS["unseen"] if not (seen[r] and seen[q]) else _COLORS["window"]
              for q in range(padded)] for r in range(padded)]
    lines = textwrap.wrap(problem, 110)
    text_h, grid_h, head = 0.16 * len(lines) + 0.3, 3.0, 0.8
    fig = new_figure(8.5, head + grid_h + 0.4 + text_h)
    height = fig.get_figheight()
    ax = fig.add_axes([0.5 - grid_h / 2 / 8.5, (text_h + 0.3) / height, grid_h / 8.5, grid_h / height])
    blank = [[None] * padded for _ in range(padded)]
    _Matrix(ax, blank, "", fontsize=7).update(blank, fills)
    for q in range(padded):
        ax.text(q, -0.7, str(q), ha="center", va="bottom", fontsize=7, color="#555555")
    starts = range(0, padded - kernel + 1, stride)
    for top in starts:
        for left in starts:
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), kernel, kernel, fill=False, ec=_COLORS["outline"], lw=2,
                                   ls="--", clip_on=False))
    fig.suptitle(f"input {size}x{size}, filter {kernel}x{kernel}, stride {stride}, pad {padding}: does not fit\n"
                 "dashed: the windows that fit; blue: seen by some window; orange: never seen"
                 + ("; gray: padding" if padding else ""), fontsize=10, y=1 - 0.1 / height)
    fig.text(0.04, 0.2 / height, "\n".join(lines), fontsize=8, va="bottom")
    if path is not None:
        save_figure(fig, path)
    return fig


def misfit_html(path, size: int, kernel: int, stride: int, padding: int) -> Path:
    """A self-contained page explaining why the geometry does not fit, with the padded input's
    cells that no window covers marked."""
    problem = geometry_problem(size, kernel, stride, padding)
    if problem is None:
        raise ValueError(f"input {size}, filter {kernel}, stride {stride}, padding {padding} fit: write the demo instead")
    seen = _seen(size, kernel, stride, padding)
    padded = size + 2 * padding
    rows = []
    for r in range(padded):
        cells = []
        for q in range(padded):
            cls = "pad" if _is_padding(r, q, padded, padded, padding) else "unseen" if not (seen[r] and seen[q]) else "seen"
            cells.append(f'<td class="{cls}"></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{q}</th>" for q in range(padded)) + "</tr>"
    title = f"Convolution: input {size}x{size}, filter {kernel}x{kernel}, stride {stride}, pad {padding} does not fit"
    body = (f"<h2>{html.escape(title)}</h2><p>{html.escape(problem)}</p>"
            f'<table class="misfit">{header}{"".join(rows)}</table>'
            '<p class="legend"><span class="sw seen"></span> seen by some window '
            '<span class="sw unseen"></span> never seen <span class="sw pad"></span> padding</p>')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                    f"<style>{_CSS}</style></head><body>{body}</body></html>\n")
    return path


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; max-width: 1200px; line-height: 1.4; }
.row { display: flex; gap: 2em; align-items: flex-start; flex-wrap: wrap; }
.col h3 { font-size: 0.9em; margin: 0.3em 0; font-family: monospace; }
table { border-collapse: collapse; margin-bottom: 0.8em; }
td { width: 1.9em; height: 1.9em; text-align: center; border: 1px solid #888; font-family: monospace; }
th { font-weight: normal; font-size: 0.75em; color: #666; }
td.pad { background: #e6e6e6; color: #777; } td.win { background: #9ecae1; } td.win.pad { background: #e6e6e6; }
td.wt { border-top: 3px solid #2171b5; } td.wb { border-bottom: 3px solid #2171b5; }
td.wl { border-left: 3px solid #2171b5; } td.wr { border-right: 3px solid #2171b5; }
td.filt { background: #fdd0a2; } td.out { background: #c7e9c0; cursor: pointer; }
td.cur { background: #31a354; color: white; } td.todo { cursor: pointer; }
td.seen { background: #9ecae1; } td.unseen { background: #f4a582; }
#eq { font-family: monospace; font-size: 1.1em; margin: 0.8em 0; }
#view { flex: 0 0 auto; flex-wrap: nowrap; } #working { flex: 1 1 24em; min-width: 22em; }
#working h3 { font-family: inherit; font-size: 1em; }
.legend { font-size: 0.9em; color: #333; }
.sw { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #888; vertical-align: middle; margin: 0 0.3em 0 0.9em; }
.sw.pad { background: #e6e6e6; } .sw.win { background: #9ecae1; } .sw.outline { background: white; border: 3px solid #2171b5; width: 0.8em; height: 0.8em; }
.sw.filt { background: #fdd0a2; } .sw.out { background: #c7e9c0; } .sw.cur { background: #31a354; }
.sw.seen { background: #9ecae1; } .sw.unseen { background: #f4a582; }
.geometry { font-size: 1.05em; } .hint { color: #555; font-size: 0.9em; }
details { margin: 0.3em 0; } summary { cursor: pointer; font-family: monospace; }
table.products td { width: auto; padding: 0.1em 0.5em; font-size: 0.9em; }
table.products td.pad { color: #888; }
#total { font-family: monospace; margin: 0.5em 0 1em; }
"""

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>""" + _CSS + """</style></head><body>
<h2>__TITLE__</h2>
__GEOMETRY__
<p class="legend">Colours:<span class="sw pad"></span>padding (zeros)<span class="sw win"></span>input window
<span class="sw outline"></span>window outline (padding inside it stays gray)<span class="sw filt"></span>filter in use
<span class="sw out"></span>computed<span class="sw cur"></span>this step</p>
<p class="hint">Notation: volumes are indexed [row, column, depth]; x[:, :, 0] is the first depth slice of the input,
drawn with its padding (indices count the cells drawn, padding included); w0 is filter 0; out[r, c, k] is the output
value at row r, column c of filter k.</p>
<div><button id="prev">&larr; previous</button> <button id="play">play</button>
<button id="next">next &rarr;</button> <span id="step"></span></div>
<p class="hint">Keys: &larr; &rarr; step (Home/End: first/last). Click an output cell to see its window.</p>
<div id="eq"></div>
<div class="row"><div class="row" id="view"></div>
<div class="col" id="working"><h3>The products of this step</h3><div id="products"></div><div id="total"></div></div></div>
<script>
const D = __DATA__;
const N = D.steps.length, KH = D.weight[0][0].length, KW = D.weight[0][0][0].length;
let step = 0, timer = null;
const openChannels = new Set([0]);
function fmt(v) { return Number.isInteger(v) ? String(v) : v.toFixed(2); }
function term(v) { return v < 0 ? `(${fmt(v)})` : fmt(v); }
function edges(s, r, q) {
  if (!inWindow(s, r, q)) return "";
  return [r === s.top ? "wt" : "", r === s.top + KH - 1 ? "wb" : "", q === s.left ? "wl" : "", q === s.left + KW - 1 ? "wr" : ""].join(" ");
}
function table(id, values, cls, attrs) {
  let h = `<table id="${id}">`;
  values.forEach((row, r) => { h += "<tr>"; row.forEach((v, c) => {
    h += `<td class="${cls(r, c)}"${attrs ? attrs(r, c) : ""}>${v === null ? "" : fmt(v)}</td>`; }); h += "</tr>"; });
  return h + "</table>";
}
function isPad(r, q) { const n = D.x[0].length, m = D.x[0][0].length, p = D.pad; return r < p || r >= n - p || q < p || q >= m - p; }
function inWindow(s, r, q) { return r >= s.top && r < s.top + KH && q >= s.left && q < s.left + KW; }
function render() {
  const s = D.steps[step], per = D.outH * D.outW;
  let h = '<div class="col">';
  D.x.forEach((plane, c) => {
    h += `<h3>x[:, :, ${c}] &middot; w${s.filter}[:, :, ${c}] = ${fmt(s.per_channel[c])}</h3>`;
    h += table(`x${c}`, plane, (r, q) => [isPad(r, q) ? "pad" : "", inWindow(s, r, q) ? "win" : "", edges(s, r, q)].join(" ").trim(),
               (r, q) => ` data-r="${r}" data-c="${q}"`);
  });
  h += "</div>";
  D.weight.forEach((w, k) => {
    h += `<div class="col"><h3>filter w${k}, bias b${k} = ${fmt(D.bias[k])}</h3>`;
    w.forEach((plane, c) => { h += `<h3>w${k}[:, :, ${c}]</h3>` + table(`w${k}_${c}`, plane, () => k === s.filter ? "filt" : ""); });
    h += "</div>";
  });
  h += '<div class="col">';
  for (let k = 0; k < D.weight.length; k++) {
    const vals = [];
    for (let r = 0; r < D.outH; r++) { const row = []; for (let q = 0; q < D.outW; q++) {
      const i = k * per + r * D.outW + q; row.push(i <= step ? D.steps[i].value : null); } vals.push(row); }
    h += `<h3>out[:, :, ${k}]</h3>` + table(`out${k}`, vals, (r, q) => { const i = k * per + r * D.outW + q;
      return i === step ? "cur" : i < step ? "out" : "todo"; }, (r, q) => ` data-step="${k * per + r * D.outW + q}" title="out[${r}, ${q}, ${k}]"`);
  }
  h += "</div>";
  document.getElementById("view").innerHTML = h;
  document.getElementById("eq").textContent = D.equations[step];
  document.getElementById("step").textContent = `step ${step + 1} of ${N}: out[${s.row}, ${s.col}, ${s.filter}], window ${D.windows[step]}`;
  let p = "";
  D.x.forEach((plane, c) => {
    let rows = "";
    for (let r = 0; r < KH; r++) { rows += "<tr>"; for (let q = 0; q < KW; q++) {
      const xr = s.top + r, xq = s.left + q, xv = plane[xr][xq], wv = D.weight[s.filter][c][r][q];
      rows += `<td class="${isPad(xr, xq) ? "pad" : ""}">${fmt(xv)} &times; ${term(wv)} = ${fmt(xv * wv)}</td>`; }
      rows += "</tr>"; }
    p += `<details data-channel="${c}"${openChannels.has(c) ? " open" : ""}><summary>channel ${c}: ` +
         `x[${s.top}:${s.top + KH}, ${s.left}:${s.left + KW}, ${c}] &middot; w${s.filter}[:, :, ${c}] = ${fmt(s.per_channel[c])}` +
         ` (${KH * KW} products)</summary><table class="products">${rows}</table></details>`;
  });
  document.getElementById("products").innerHTML = p;
  document.querySelectorAll("#products details").forEach((d) => d.addEventListener("toggle", () => {
    const c = Number(d.dataset.channel); if (d.open) openChannels.add(c); else openChannels.delete(c); }));
  document.getElementById("total").textContent = `sum of all ${KH * KW * D.x.length} products ` +
    `${s.per_channel.map(term).join(" + ")} = ${fmt(s.per_channel.reduce((a, b) => a + b, 0))}, ` +
    `plus the bias b${s.filter} = ${fmt(s.bias)}: out[${s.row}, ${s.col}, ${s.filter}] = ${fmt(s.value)}`;
}
function go(i) { step = ((i % N) + N) % N; render(); }
document.getElementById("prev").onclick = () => go(step - 1);
document.getElementById("next").onclick = () => go(step + 1);
document.getElementById("play").onclick = (e) => {
  if (timer) { clearInterval(timer); timer = null; e.target.textContent = "play"; }
  else { timer = setInterval(() => go(step + 1), 1200); e.target.textContent = "pause"; }
};
document.addEventListener("keydown", (e) => {
  const moves = { ArrowRight: step + 1, ArrowDown: step + 1, ArrowLeft: step - 1, ArrowUp: step - 1, Home: 0, End: N - 1 };
  if (e.key in moves && !e.altKey && !e.ctrlKey && !e.metaKey) { e.preventDefault(); go(moves[e.key]); }
});
document.getElementById("view").addEventListener("click", (e) => {
  const cell = e.target.closest("td[data-step]");
  if (cell) go(Number(cell.dataset.step));
});
render();
</script></body></html>
"""
