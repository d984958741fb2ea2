"""Exporters of the layers ONNX import adds (:mod:`cnnkit.onnx.layers`), so imported graphs export back.

These layers live in the ONNX package, beside the importer that builds them; their exporters are
listed here until the layers carry ``onnx_export`` methods like the rest of cnnkit's.
"""
from __future__ import annotations

import numpy as np

from .export_registry import register_exporter
from .layers import AddConstant, Clip, ConstantPad, GlobalMaxPool, MatMulConstant, MulConstant, Reshape, Slice, Sub


def register_all() -> None:
    """Register the exporters (called by :func:`cnnkit.onnx.exporter.export`; idempotent)."""
    register_exporter(AddConstant)(add_constant)
    register_exporter(MulConstant)(mul_constant)
    register_exporter(MatMulConstant)(matmul_constant)
    register_exporter(Reshape)(reshape)
    register_exporter(ConstantPad)(constant_pad)
    register_exporter(Slice)(slice_)
    register_exporter(Clip)(clip)
    register_exporter(GlobalMaxPool)(global_max_pool)
    register_exporter(Sub)(sub)


def add_constant(ctx, m, x, prefix):
    return ctx.node("Add", [x, ctx.constant(ctx.join(prefix, "bias"), m._value())], ctx.join(prefix, "Add"))


def mul_constant(ctx, m, x, prefix):
    return ctx.node("Mul", [x, ctx.constant(ctx.join(prefix, "weight"), m._value())], ctx.join(prefix, "Mul"))


def matmul_constant(ctx, m, x, prefix):
    w = ctx.constant(ctx.join(prefix, "weight"), m._value())
    return ctx.node("MatMul", [w, x] if m.constant_on_left else [x, w], ctx.join(prefix, "MatMul"))


def reshape(ctx, m, x, prefix):
    if m.allowzero:
        raise NotImplementedError("ONNX export of Reshape(allowzero=True) is not supported")
    return ctx.reshape(x, m.shape, prefix)


def constant_pad(ctx, m, x, prefix):
    pads = ctx.constant(ctx.join(prefix, "pads"), np.array(m.pads, np.int64))
    value = ctx.constant(ctx.join(prefix, "value"), np.array(m.value))
    return ctx.node("Pad", [x, pads, value], ctx.join(prefix, "Pad"), mode="constant")


def slice_(ctx, m, x, prefix):
    inputs = [x] + [ctx.constant(ctx.join(prefix, n), np.array(v, np.int64)) for n, v in
                    (("starts", m.starts), ("ends", m.ends), ("axes", m.axes), ("steps", m.steps))]
    return ctx.node("Slice", inputs, ctx.join(prefix, "Slice"))


def clip(ctx, m, x, prefix):
    inputs = [x, "", ""]
    if m.min is not None:
        inputs[1] = ctx.constant(ctx.join(prefix, "min"), np.array(m.min))
    if m.max is not None:
        inputs[2] = ctx.constant(ctx.join(prefix, "max"), np.array(m.max))
    while inputs[-1] == "":
        inputs.pop()
    return ctx.node("Clip", inputs, ctx.join(prefix, "Clip"))


def global_max_pool(ctx, m, x, prefix):
    return ctx.node("GlobalMaxPool", [x], ctx.join(prefix, "GlobalMaxPool"))


def sub(ctx, m, inputs, prefix):
    return ctx.node("Sub", inputs, prefix or "Sub")
