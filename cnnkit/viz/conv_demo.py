"""The notes' animated convolution demo, with every number: a small input volume, a few filters,
stride and zero padding; each output value is the dot product of a filter with the highlighted
input window, plus the bias.

``ConvDemo`` computes everything by plain loops, the formula written out (it is the reference the
tests hold ``Conv2d`` to). ``plot_conv_demo`` draws chosen steps as a static figure,
``conv_demo_gif`` animates every step (Pillow), ``conv_demo_html`` writes a self-contained page
with Previous/Next/Play buttons.
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

    def output(self) -> np.ndarray:
        """The output volume ``(K, out_h, out_w)``, one step at a time."""
        out = np.zeros((self.weight.shape[0], self.out_h, self.out_w))
        for index in range(self.num_steps):
            s = self.step(index)
            out[s["filter"], s["row"], s["col"]] = s["value"]
        return out

    def equation(self, index: int) -> str:
        s = self.step(index)
        parts = " + ".join(_fmt(v) for v in s["per_channel"])
        return (f"out[{s['filter']}][{s['row']},{s['col']}] = w{s['filter']} . x[window] + b{s['filter']} = "
                f"({parts}) + {_fmt(s['bias'])} = {_fmt(s['value'])}")


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


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
           "current": "#31a354"}


class _Matrix:
    """A grid of numbered cells drawn once; ``update`` recolours and renumbers it (cheap to redraw,
    which keeps the animation fast)."""

    def __init__(self, ax, values, title, frame=None, fontsize=8):
        rows, cols = np.shape(values)
        frame_rows, frame_cols = frame or (rows, cols)
        self.ax = ax
        self.image = ax.imshow(np.ones((rows, cols, 3)), interpolation="nearest", vmin=0, vmax=1)
        self.texts = [[ax.text(c, r, "", ha="center", va="center", fontsize=fontsize) for c in range(cols)]
                      for r in range(rows)]
        # cell borders as two line collections; no axis ticks (they dominate the drawing time)
        ax.hlines(np.arange(-0.5, rows + 0.5), -0.5, cols - 0.5, color="#888888", lw=0.6, clip_on=False)
        ax.vlines(np.arange(-0.5, cols + 0.5), -0.5, rows - 0.5, color="#888888", lw=0.6, clip_on=False)
        # every matrix sits centred in a frame of the same number of cells: equal cell sizes
        dy, dx = (frame_rows - rows) / 2, (frame_cols - cols) / 2
        ax.set_xlim(-0.5 - dx, cols - 0.5 + dx), ax.set_ylim(rows - 0.5 + dy, -0.5 - dy)
        ax.set_axis_off()
        self.title = ax.text((cols - 1) / 2, -0.8, title, ha="center", va="bottom", fontsize=fontsize)
        self.update(values, [[_COLORS["cell"]] * cols for _ in range(rows)])

    def update(self, values, fills, title=None):
        from matplotlib.colors import to_rgb

        self.image.set_data(np.array([[to_rgb(c) for c in row] for row in fills]))
        for r, row in enumerate(self.texts):
            for c, text in enumerate(row):
                v = values[r][c]
                text.set_text("" if v is None else _fmt(v))
        if title is not None:
            self.title.set_text(title)


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
                                top=bottom + 0.9 * height, hspace=0.45, wspace=0.25)
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
            fills = [[_COLORS["window"] if s["top"] <= r < s["top"] + kh and s["left"] <= q < s["left"] + kw
                      else _COLORS["pad"] if (r < p or r >= ph - p or q < p or q >= pw - p) else _COLORS["cell"]
                      for q in range(pw)] for r in range(ph)]
            matrix.update(demo.padded[c], fills,
                          f"x[:, :, {c}] (pad {p})\nwindow . w{s['filter']}[:, :, {c}] = {_fmt(s['per_channel'][c])}")
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


def draw_step(fig, demo: ConvDemo, index: int, area=(0.0, 0.0, 1.0, 1.0)):
    """Draw step ``index`` of ``demo`` into ``fig`` within ``area`` (left, bottom, width, height
    in figure fractions): input slices with the window, the filters, the output so far."""
    frame = _Frame(fig, demo, area)
    frame.show(index)
    return frame


def _frame_size(demo: ConvDemo) -> tuple[float, float]:
    rows = max(demo.x.shape[0], demo.weight.shape[0])
    return 7.0, 1.0 + 1.9 * rows


def plot_conv_demo(demo: ConvDemo | None = None, steps=(0, 1), path=None):
    """Figure of the chosen steps of ``demo`` (default: the notes' demo, its first two steps,
    which show the stride), one frame below the other."""
    demo = demo or make_demo()
    steps = list(steps)
    width, frame_h = _frame_size(demo)
    fig = new_figure(width, frame_h * len(steps) + 0.6)
    top_margin = 0.6 / (frame_h * len(steps) + 0.6)
    share = (1 - top_margin) / len(steps)
    for n, index in enumerate(steps):
        draw_step(fig, demo, index, area=(0.0, 1 - top_margin - (n + 1) * share, 1.0, share))
    k, c, kh, kw = demo.weight.shape
    fig.suptitle(f"convolution: input {demo.x.shape[1]}x{demo.x.shape[2]}x{demo.x.shape[0]}, {k} filters "
                 f"{kh}x{kw}x{c}, stride {demo.stride}, pad {demo.padding} -> output {demo.out_h}x{demo.out_w}x{k}",
                 fontsize=11)
    if path is not None:
        save_figure(fig, path)
    return fig


def conv_demo_frames(demo: ConvDemo | None = None, dpi: int = 70):
    """Every step as an RGB uint8 image ``(height, width, 3)``."""
    demo = demo or make_demo()
    fig = new_figure(*_frame_size(demo), dpi=dpi)
    frame = _Frame(fig, demo)
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
    """A self-contained HTML page (no external files or scripts) stepping through ``demo``."""
    demo = demo or make_demo()
    data = {
        "x": demo.padded.tolist(), "pad": demo.padding, "weight": demo.weight.tolist(),
        "bias": demo.bias.tolist(), "outH": demo.out_h, "outW": demo.out_w,
        "steps": [demo.step(i) for i in range(demo.num_steps)],
        "equations": [demo.equation(i) for i in range(demo.num_steps)],
    }
    k, c, kh, kw = demo.weight.shape
    title = (f"Convolution demo: input {demo.x.shape[1]}x{demo.x.shape[2]}x{demo.x.shape[0]}, {k} filters "
             f"{kh}x{kw}x{c}, stride {demo.stride}, pad {demo.padding}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_HTML.replace("__TITLE__", html.escape(title)).replace("__DATA__", json.dumps(data)))
    return path


_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1.5em; }
.row { display: flex; gap: 2em; align-items: flex-start; }
.col h3 { font-size: 0.9em; margin: 0.3em 0; }
table { border-collapse: collapse; margin-bottom: 0.8em; }
td { width: 1.8em; height: 1.8em; text-align: center; border: 1px solid #888; font-family: monospace; }
td.pad { background: #e6e6e6; } td.win { background: #9ecae1; } td.filt { background: #fdd0a2; }
td.out { background: #c7e9c0; } td.cur { background: #31a354; color: white; }
#eq { font-family: monospace; font-size: 1.1em; margin: 1em 0; }
</style></head><body>
<h2>__TITLE__</h2>
<p>Each output value is the dot product of a filter with the highlighted input window, plus the bias.</p>
<div><button id="prev">&larr; previous</button> <button id="play">play</button>
<button id="next">next &rarr;</button></div>
<div id="eq"></div>
<div class="row" id="view"></div>
<script>
const D = __DATA__;
let step = 0, timer = null;
function table(values, cls) {
  let h = "<table>";
  values.forEach((row, r) => { h += "<tr>"; row.forEach((v, c) => { h += `<td class="${cls(r, c)}">${v === null ? "" : v}</td>`; }); h += "</tr>"; });
  return h + "</table>";
}
function render() {
  const s = D.steps[step], kh = D.weight[0][0].length, kw = D.weight[0][0][0].length;
  const n = D.x[0].length, m = D.x[0][0].length, p = D.pad, per = D.outH * D.outW;
  let h = '<div class="col">';
  D.x.forEach((plane, c) => {
    h += `<h3>x[:, :, ${c}] &middot; w${s.filter} = ${s.per_channel[c]}</h3>`;
    h += table(plane, (r, q) => (r >= s.top && r < s.top + kh && q >= s.left && q < s.left + kw) ? "win"
      : (r < p || r >= n - p || q < p || q >= m - p) ? "pad" : "");
  });
  h += "</div>";
  D.weight.forEach((w, k) => {
    h += `<div class="col"><h3>filter w${k}, bias b${k} = ${D.bias[k]}</h3>`;
    w.forEach((plane, c) => { h += `<h3>w${k}[:, :, ${c}]</h3>` + table(plane, () => k === s.filter ? "filt" : ""); });
    h += "</div>";
  });
  h += '<div class="col">';
  for (let k = 0; k < D.weight.length; k++) {
    const vals = [];
    for (let r = 0; r < D.outH; r++) { const row = []; for (let q = 0; q < D.outW; q++) {
      const i = k * per + r * D.outW + q; row.push(i <= step ? D.steps[i].value : null); } vals.push(row); }
    h += `<h3>out[:, :, ${k}]</h3>` + table(vals, (r, q) => { const i = k * per + r * D.outW + q;
      return i === step ? "cur" : i < step ? "out" : ""; });
  }
  h += "</div>";
  document.getElementById("view").innerHTML = h;
  document.getElementById("eq").textContent = `step ${step + 1}/${D.steps.length}: ` + D.equations[step];
}
document.getElementById("prev").onclick = () => { step = (step + D.steps.length - 1) % D.steps.length; render(); };
document.getElementById("next").onclick = () => { step = (step + 1) % D.steps.length; render(); };
document.getElementById("play").onclick = (e) => {
  if (timer) { clearInterval(timer); timer = null; e.target.textContent = "play"; }
  else { timer = setInterval(() => { step = (step + 1) % D.steps.length; render(); }, 1200); e.target.textContent = "pause"; }
};
render();
</script></body></html>
"""
