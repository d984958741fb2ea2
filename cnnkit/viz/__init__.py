"""Pictures of what a network learned and how it trained (Matplotlib, drawn headless by Agg).

* ``plot_filters``: a conv layer's filters as a grid (RGB for 3-channel inputs).
* ``plot_activations``: an image's activation volumes layer by layer, and the top-5 scores.
* ``plot_patches`` / ``top_activations``: the dataset patches (receptive fields, from
  ``receptive_field``) that activate one channel most (Zeiler & Fergus).
* ``plot_saliency`` / ``input_gradient`` / ``occlusion``: which pixels a class score depends on.
* ``plot_conv_demo`` / ``conv_demo_gif`` / ``conv_demo_html``: the convolution demo with numbers;
  ``geometry_problem`` / ``plot_misfit`` / ``misfit_html`` for geometry that does not fit.
* ``plot_history``, ``plot_confusion``, ``plot_diagnostics`` (``diagnostics_findings`` in words):
  training curves (every step's loss), confusion matrix, per-layer training statistics;
  ``write_report``: a run directory's ``report.html``.

Every ``plot_*`` returns a Matplotlib ``Figure`` and writes it when given ``path=`` (PNG, SVG or
PDF by suffix). No display is needed and ``matplotlib.pyplot`` is never imported.
"""
from ._figure import save_figure
from .activations import plot_activations
from .conv_demo import (ConvDemo, conv_demo_gif, conv_demo_html, geometry_problem, make_demo, misfit_html,
                        plot_conv_demo, plot_misfit)
from .curves import diagnostics_findings, plot_confusion, plot_diagnostics, plot_history, read_history, read_steps
from .filters import plot_filters
from .layers import capture_outputs, resolve_layer
from .patches import plot_patches, top_activations
from .receptive_field import ReceptiveField, receptive_field
from .report import write_report
from .saliency import input_gradient, occlusion, plot_saliency, saliency_map

__all__ = [
    "plot_filters", "plot_activations", "plot_patches", "top_activations", "receptive_field", "ReceptiveField",
    "plot_saliency", "input_gradient", "saliency_map", "occlusion", "ConvDemo", "make_demo", "plot_conv_demo",
    "conv_demo_gif", "conv_demo_html", "geometry_problem", "plot_misfit", "misfit_html", "plot_history",
    "read_history", "read_steps", "plot_confusion", "plot_diagnostics", "diagnostics_findings",
    "write_report", "capture_outputs", "resolve_layer", "save_figure",
]
