"""Pictures of a network and its training: filters, activation maps, maximally activating
patches, saliency, the convolution demo, training curves, confusion matrix and a run's report.

Each picture is written to a file (PNG unless --out says .svg/.pdf; conv-demo also writes .gif
and .html) whose path is printed. IMAGE is an image file, or SPLIT:INDEX (e.g. test:7) for an
image of the checkpoint's dataset.

examples:
  cnnkit viz filters runs/mnist-lenet5/best.safetensors
  cnnkit viz activations runs/mnist-lenet5/best.safetensors test:0
  cnnkit viz patches runs/mnist-lenet5/best.safetensors --layer features.3 --channel 5
  cnnkit viz saliency runs/cifar10-resnet20/best.safetensors my_cat.png
  cnnkit viz conv-demo --out demo.gif
  cnnkit viz curves runs/mnist-lenet5
  cnnkit viz report runs/mnist-lenet5

The data folder defaults to the one the run recorded (--data-dir overrides it).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .common import dataset_for, load_checkpoint, positive_int, recorded_data_dir


def add_arguments(p):
    sub = p.add_subparsers(dest="picture", metavar="PICTURE")
    p.set_defaults(_viz_parser=p)

    def command(name, help_text, func):
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(_picture=func)
        return q

    q = command("filters", "the filters of a convolution layer as a grid of images", _filters)
    _checkpoint(q)
    q.add_argument("--layer", help="layer name (e.g. features.3) or convN (default: the first convolution)")
    q.add_argument("--max-filters", type=int, default=96)
    _out(q)

    q = command("activations", "each layer's output volume for an image, slice by slice, and the top-5 scores",
                _activations)
    _checkpoint(q)
    _image(q)
    q.add_argument("--layers", help="comma-separated layer names (default: up to --max-layers chosen layers)")
    q.add_argument("--max-slices", type=int, default=16, help="depth slices shown per layer (default 16)")
    q.add_argument("--max-layers", type=int, default=14)
    _out(q)

    q = command("patches", "the dataset patches (receptive fields) that activate one channel most", _patches)
    _checkpoint(q)
    q.add_argument("--layer", required=True, help="layer name (e.g. features.3) or convN")
    q.add_argument("--channel", type=int, required=True, help="channel of that layer")
    q.add_argument("--dataset", help="dataset to search (default: the checkpoint's)")
    q.add_argument("--split", default="test", choices=("train", "test"))
    q.add_argument("--limit", type=positive_int, default=5000, help="search the first N images (default 5000)")
    q.add_argument("-k", "--top", type=positive_int, default=9, help="how many patches (default 9)")
    q.add_argument("--data-dir", help="folder holding the dataset files")
    _out(q)

    q = command("saliency", "gradient saliency and occlusion sensitivity of a class score for an image", _saliency)
    _checkpoint(q)
    _image(q)
    q.add_argument("--target", help="class index or name (default: the predicted class)")
    q.add_argument("--occlusion-size", type=int, help="side of the occluding square (default: a quarter of the image)")
    _out(q)

    q = command("conv-demo", "the convolution demo with every number: step-by-step PNG, animated GIF or HTML "
                "(the HTML page steps with buttons and arrow keys and lists the products of each window)", _conv_demo)
    q.description = (q.description + ". The default is the notes' example: a 5x5x3 input, zero padding 1, two 3x3x3 "
                     "filters, stride 2; the output is (W - F + 2P)/S + 1 = (5 - 3 + 2*1)/2 + 1 = 3 wide, so 3x3x2. "
                     "Geometry that does not fit (e.g. --size 7 --pad 0 --stride 3) gets a picture of why instead.")
    q.add_argument("--size", type=int, default=5, help="input width and height W (default %(default)s)")
    q.add_argument("--channels", type=int, default=3, help="input depth, the number of channels (default %(default)s)")
    q.add_argument("--filters", type=int, default=2, help="number of filters K = output depth (default %(default)s)")
    q.add_argument("--kernel", type=int, default=3, help="filter width and height F (default %(default)s)")
    q.add_argument("--stride", type=int, default=2, help="step S of the window, in cells (default %(default)s)")
    q.add_argument("--pad", type=int, default=1, help="zero padding P on every side (default %(default)s)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random integer input (0..2) and filters (-1..1) "
                   "(default %(default)s)")
    q.add_argument("--steps", default="0,1", help="steps drawn in a PNG/SVG/PDF, counted from 0, e.g. 0,1,9 "
                   "(default %(default)s: the first two, which show the stride)")
    q.add_argument("--out", default="runs/viz/conv-demo.png", help="output file: .png, .svg, .pdf (chosen steps), "
                   ".gif (every step) or .html (interactive) (default %(default)s)")

    q = command("curves", "loss, accuracy and learning rate against epoch from a run's history "
                "(and the per-layer diagnostics when recorded)", _curves)
    q.add_argument("run_dir", metavar="RUN_DIR")
    _out(q)

    q = command("confusion", "confusion matrix of a checkpoint on a dataset split", _confusion)
    _checkpoint(q)
    q.add_argument("--dataset", help="dataset (default: the checkpoint's)")
    q.add_argument("--split", default="test", choices=("train", "test"))
    q.add_argument("--data-dir", help="folder holding the dataset files")
    q.add_argument("--limit", type=positive_int, help="use the first N images")
    _out(q)

    q = command("report", "write RUN_DIR/report.html (the same as `cnnkit report RUN_DIR`)", _report)
    from .report import add_arguments as report_arguments

    report_arguments(q)


def _checkpoint(q):
    q.add_argument("checkpoint", metavar="CKPT",
                   help="checkpoint written by `cnnkit train` (best.safetensors, last.safetensors)")


def _image(q):
    q.add_argument("image", metavar="IMAGE", help="image file, or SPLIT:INDEX (e.g. test:7) from the checkpoint's dataset")
    q.add_argument("--data-dir", help="folder holding the dataset files (for SPLIT:INDEX)")


def _out(q):
    q.add_argument("--out", help="output file (.png, .svg or .pdf; default: next to the checkpoint or in RUN_DIR)")


def run(args) -> int:
    if getattr(args, "picture", None) is None:
        args._viz_parser.print_help()
        return 2
    path = args._picture(args)
    for p in path if isinstance(path, list) else [path]:
        print(p)
    return 0


# -- helpers --------------------------------------------------------------------------------------
def _load(checkpoint):
    model = load_checkpoint(checkpoint).model
    model.eval()
    return model, getattr(model, "config", None) or {}


def _default_out(args, stem: str) -> Path:
    if getattr(args, "out", None):
        return Path(args.out)
    folder = Path(args.checkpoint).parent / "viz"
    return folder / (re.sub(r"[^A-Za-z0-9_.-]+", "_", stem) + ".png")


def _read_image(spec: str, config: dict, data_dir):
    """``(raw uint8 (C, H, W), model input (1, C, H, W), label name or None, short name)``."""
    from ..viz.report import model_input

    dataset = config.get("dataset")
    match = re.fullmatch(r"(train|test):(\d+)", spec)
    if match and not Path(spec).exists():
        if not dataset:
            raise ValueError(f"{spec!r} names a dataset image but the checkpoint does not record its dataset")
        from .. import data

        ds = data.load(dataset, match.group(1), root=data_dir)
        index = int(match.group(2))
        if index >= len(ds):
            raise ValueError(f"{spec}: the {match.group(1)} split of {dataset} has {len(ds)} images")
        raw = ds.images[index]
        return raw, model_input(raw[None], dataset), ds.classes[ds.labels[index]], f"{dataset}-{match.group(1)}{index}"
    if "input_shape" not in config:
        raise ValueError("the checkpoint does not record its input shape (train it with `cnnkit train`)")
    from .predict import load_image

    x01 = load_image(spec, tuple(config["input_shape"]))
    raw = np.round(x01[0] * 255).astype(np.uint8)
    return raw, model_input(raw[None], dataset), None, Path(spec).stem


def _classes(config):
    classes = config.get("classes")
    return list(classes) if classes else None


# -- the pictures ---------------------------------------------------------------------------------
def _filters(args):
    from ..viz.filters import plot_filters
    from ..viz.layers import first_conv, resolve_layer

    model, _ = _load(args.checkpoint)
    name = resolve_layer(model, args.layer)[0] if args.layer else first_conv(model)[0]
    path = _default_out(args, f"filters-{name}")
    plot_filters(model, name, max_filters=args.max_filters, path=path)
    return path


def _activations(args):
    from ..viz.activations import plot_activations

    model, config = _load(args.checkpoint)
    raw, x, label, short = _read_image(args.image, config, args.data_dir or recorded_data_dir(config))
    layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
    path = _default_out(args, f"activations-{short}")
    title = f"activations of {config.get('name', type(model).__name__)} for {args.image}" + (
        f" (true class {label})" if label is not None else "")
    plot_activations(model, x.astype(model.dtype), image=raw, classes=_classes(config), layers=layers,
                     max_slices=args.max_slices, max_layers=args.max_layers, path=path, title=title)
    return path


def _patches(args):
    from ..viz.layers import resolve_layer
    from ..viz.patches import plot_patches

    model, config = _load(args.checkpoint)
    dataset, ds = dataset_for(args, config, args.checkpoint)
    n = min(args.limit, len(ds)) if args.limit else len(ds)
    name = resolve_layer(model, args.layer)[0]
    path = _default_out(args, f"patches-{name}-ch{args.channel}")

    plot_patches(model, ds.images[:n], name, args.channel, k=args.top, transform=_normalizer(dataset, model.dtype),
                 labels=ds.labels[:n], classes=ds.classes, path=path)
    return path


def _normalizer(dataset, dtype):
    from ..data.transforms import DATASET_STATS, Normalize

    return Normalize.for_dataset(dataset) if dataset in DATASET_STATS else None


def _saliency(args):
    from ..viz.saliency import plot_saliency

    model, config = _load(args.checkpoint)
    raw, x, label, short = _read_image(args.image, config, args.data_dir or recorded_data_dir(config))
    classes = _classes(config)
    target = None
    if args.target is not None:
        if args.target.isdigit():
            target = int(args.target)
        elif classes and args.target in classes:
            target = classes.index(args.target)
        else:
            raise ValueError(f"--target {args.target!r} is neither a class index nor one of the classes {classes}")
    path = _default_out(args, f"saliency-{short}")
    title = f"saliency for {args.image}" + (f" (true class {label})" if label is not None else "")
    plot_saliency(model, x.astype(model.dtype), image=raw, classes=classes, target=target, path=path, title=title,
                  occlusion_size=args.occlusion_size)
    return path


DEMO_LIMITS = {"size": (1, 16), "channels": (1, 4), "filters": (1, 4), "kernel": (1, 7), "stride": (1, 8),
               "pad": (0, 3)}


def _conv_demo(args):
    from ..viz.conv_demo import (conv_demo_gif, conv_demo_html, geometry_problem, make_demo, misfit_html, plot_conv_demo,
                                 plot_misfit)

    for name, (low, high) in DEMO_LIMITS.items():  # a demo is followed by hand: small numbers only
        value = getattr(args, name)
        if not low <= value <= high:
            raise ValueError(f"--{name} must be between {low} and {high} for the demo, got {value}")
    path = Path(args.out)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf", ".gif", ".html", ".htm"):
        raise ValueError(f"--out must end in .png, .svg, .pdf, .gif or .html, got {args.out!r}")
    problem = geometry_problem(args.size, args.kernel, args.stride, args.pad)
    if problem is not None:
        print(problem)
        if suffix in (".html", ".htm"):
            return misfit_html(path, args.size, args.kernel, args.stride, args.pad)
        if suffix == ".gif":
            path = path.with_suffix(".png")
            print(f"(a picture of why instead of an animation: {path})")
        plot_misfit(args.size, args.kernel, args.stride, args.pad, path=path)
        return path
    demo = make_demo(args.size, args.channels, args.filters, args.kernel, args.stride, args.pad, args.seed)
    if suffix == ".gif":
        return conv_demo_gif(path, demo)
    if suffix in (".html", ".htm"):
        return conv_demo_html(path, demo)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--steps must be comma-separated integers, got {args.steps!r}") from None
    bad = [s for s in steps if not 0 <= s < demo.num_steps]
    if not steps or bad:
        raise ValueError(f"--steps must name steps between 0 and {demo.num_steps - 1}, got {args.steps!r}")
    plot_conv_demo(demo, steps, path=path)
    return path


def _curves(args):
    from ..viz.curves import plot_diagnostics, plot_history

    run_dir = Path(args.run_dir)
    path = Path(args.out) if args.out else run_dir / "curves.png"
    plot_history(run_dir, path=path, title=None)
    paths = [path]
    if (run_dir / "diagnostics.json").exists():
        diag = path.with_name(path.stem + "-diagnostics" + path.suffix)
        plot_diagnostics(run_dir, path=diag)
        paths.append(diag)
    return paths


def _confusion(args):
    from ..viz.curves import plot_confusion
    from ..viz.report import confusion_on

    model, config = _load(args.checkpoint)
    dataset, ds = dataset_for(args, config, args.checkpoint)
    cm = confusion_on(model, ds, dataset, args.limit)
    path = _default_out(args, f"confusion-{dataset}-{args.split}")
    plot_confusion(cm, ds.classes, path=path,
                   title=f"{dataset} {args.split}: accuracy {np.trace(cm) / cm.sum():.2%} on {int(cm.sum())} images")
    return path


def _report(args):
    from .report import build_report

    return build_report(args)
