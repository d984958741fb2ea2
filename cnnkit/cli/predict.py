"""Classify image files with one checkpoint or an ensemble (averaged softmax): top-k classes with
probabilities. Images are converted to the model's channels and size (as recorded in the checkpoint)."""
from __future__ import annotations

import numpy as np

from .common import positive_int
from .errors import UsageError, reading

CHECKPOINT_SUFFIXES = (".safetensors", ".npz", ".ckpt")  # .ckpt: refused by the reader with a clear line


def add_arguments(p):
    p.add_argument("checkpoints", nargs="+", metavar="CKPT_OR_IMAGE",
                   help="checkpoint file(s) (.safetensors) followed by image file(s)")
    p.add_argument("--top", type=positive_int, default=3, help="how many classes to show (default 3)")


def load_image(path, input_shape):
    """Read ``path`` with Pillow as a float32 (1, C, H, W) batch in [0, 1] matching ``input_shape``."""
    from PIL import Image

    channels, height, width = input_shape
    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None, None] if channels == 1 else arr.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(arr)


def run(args) -> int:
    from ..data.transforms import Normalize
    from ..nn.module import no_grad
    from ..train import softmax
    from .common import load_models

    ckpts = [a for a in args.checkpoints if a.lower().endswith(CHECKPOINT_SUFFIXES)]
    images = [a for a in args.checkpoints if a not in ckpts]
    if not ckpts or not images:
        raise UsageError("give at least one checkpoint (.safetensors) and one image file")
    models, configs = load_models(ckpts)
    cfg = configs[0]
    if "input_shape" not in cfg:
        raise UsageError(f"{ckpts[0]} does not record its input shape and classes (train it with `cnnkit train`)")
    classes = cfg.get("classes") or [str(i) for i in range(10)]
    normalize = Normalize.for_dataset(cfg["dataset"]) if cfg.get("dataset") else None
    for m in models:
        m.eval()
    for path in images:
        with reading(path, "image", "give a PNG, JPEG or other image Pillow reads"):
            x = load_image(path, tuple(cfg["input_shape"]))
        if normalize is not None:
            x = normalize(x, None)
        with no_grad():
            probs = sum(softmax(m(x).astype(np.float64)) for m in models)[0] / len(models)
        top = np.argsort(probs)[::-1][: args.top]
        print(f"{path}: " + ", ".join(f"{classes[i]} {probs[i]:.1%}" for i in top))
    return 0
