"""Export a checkpoint (or a zoo model with fresh weights) to ONNX, checked with onnx.checker and,
when onnxruntime is installed, compared with cnnkit's own output on a random batch.

A checkpoint is exported at the input shape its run recorded; a zoo model at its usual input.
Needs the optional packages onnx and onnxruntime: pip install onnx onnxruntime (into the
environment cnnkit runs in, e.g. .venv/bin/pip).
"""
from __future__ import annotations

from .common import check_model_name, load_checkpoint, model_names, parse_shape
from .errors import UsageError


def add_arguments(p):
    p.add_argument("source", help="a cnnkit checkpoint (.safetensors, as written by `cnnkit train`) or a model "
                   "name from the zoo")
    p.add_argument("output", help="the .onnx file to write")
    p.add_argument("--input", type=parse_shape, help="input shape of one sample, e.g. 3x224x224 "
                   "(default: the shape the checkpoint records, else the model's usual input)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset version (default 13)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to 1 instead of symbolic N")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")


def _model_and_shape(args):
    from pathlib import Path

    from .. import models
    from ..summary import default_input_shape

    if Path(args.source).exists() or args.source.lower().endswith((".safetensors", ".npz", ".ckpt")):
        checkpoint = load_checkpoint(args.source)
        model, config = checkpoint.model, checkpoint.config
        recorded = config.get("input_shape") or (config.get("kwargs") or {}).get("input_shape")
        name = config.get("name")
        if args.input is not None:
            shape = args.input
        elif recorded:
            shape = tuple(int(s) for s in recorded)
        elif name in models.list_models() and name != "spec":
            shape = default_input_shape(name)
        else:
            raise UsageError(f"{args.source} does not record its input shape: give --input, e.g. --input 3x32x32")
        return model.eval(), tuple(shape)
    if args.source not in model_names():
        check_model_name(args.source)  # a one-line reason for generic names
        raise UsageError(f"{args.source!r} is neither a checkpoint file nor a model name ({', '.join(model_names())})")
    model = models.create(args.source)
    return model.eval(), tuple(args.input or default_input_shape(args.source))


def run(args) -> int:
    import numpy as np

    from .. import onnx as cnnkit_onnx
    from ..nn.module import no_grad

    model, shape = _model_and_shape(args)
    cnnkit_onnx.export(model, args.output, shape, opset=args.opset, dynamic_batch=not args.static_batch)
    print(f"wrote {args.output} (opset {args.opset}, input (N, {', '.join(map(str, shape))})), onnx.checker: ok")
    if args.no_verify:
        return 0
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime not installed: output not compared (pip install onnxruntime)")
        return 0
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    session = onnxruntime.InferenceSession(str(args.output))
    ref = session.run(None, {session.get_inputs()[0].name: x})[0]
    with no_grad():
        ours = model.float()(x)
    err = float(np.abs(ours - ref).max())
    print(f"onnxruntime vs cnnkit on a random batch of 2: max abs difference {err:.2e}")
    return 0 if err <= 1e-3 * max(1.0, float(np.abs(ref).max())) else 1
