"""The training-memory estimate: one training step simulated on the traced leaf calls (see the
package docstring); ``tests/test_summary.py`` holds it against ``tracemalloc``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..functional.memory import LayerMemory
from ..nn.containers import fuse_norm_relu
from ..nn.module import Parameter
from .rules import memory_of

OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "nesterov": 1, "rmsprop": 1, "adagrad": 1, "adam": 2, "adamw": 2}


@dataclass
class Context:
    """What the memory simulation needs from a trace."""

    leaf_calls: list
    tensor_size: dict
    input_shape: tuple
    param_sizes: list
    trainable_sizes: list
    buffer_bytes: int


def _fused_norm_relu(calls, memories, batch, dtype) -> None:
    """A BatchNorm2d and the ReLU after it in a chain run as one op (``nn.containers.
    fuse_norm_relu``): the pair's rule is the normalisation's with ``relu=True``, and an output it
    keeps is the ReLU's (the one array both produce); the ReLU itself keeps nothing."""
    for i in range(len(calls) - 1):
        norm, relu = calls[i], calls[i + 1]
        if fuse_norm_relu(norm.module, relu.module) and relu.in_tensor == norm.out_tensor:
            fused = norm.module.step_memory(norm.input_shape, norm.output_shape, batch, dtype, relu=True)
            memories[i + 1] = LayerMemory(keeps_output=fused.keeps_output)
            fused.keeps_output = False
            memories[i] = fused


def training_memory(ctx: Context, batch: int, optimizer: str, dtype) -> dict:
    """Simulate one step (forward, backward, optimizer update) and return its peak in bytes."""
    if optimizer not in OPTIMIZER_STATE:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZER_STATE)}, got {optimizer!r}")
    calls = ctx.leaf_calls
    itemsize = np.dtype(dtype).itemsize
    memories = [memory_of(c.module, c.input_shape, c.output_shape, batch, dtype) for c in calls]
    _fused_norm_relu(calls, memories, batch, dtype)
    tensor_bytes = {t: batch * n * itemsize for t, n in ctx.tensor_size.items()}
    params = sum(ctx.param_sizes) * itemsize + ctx.buffer_bytes
    state = OPTIMIZER_STATE[optimizer] * sum(ctx.trainable_sizes) * itemsize
    input_bytes = tensor_bytes[0]
    scratch: dict[str, int] = {}
    for mem in memories:
        for name, size in mem.scratch.items():
            scratch[name] = max(scratch.get(name, 0), size)
    scratch_bytes = sum(scratch.values())
    persistent = params + state + input_bytes + scratch_bytes

    # Which arrays the caches keep, each attributed to the earliest leaf holding it (freed last).
    # A layer with several inputs (outputs) keeps all of them when its rule says it keeps its input (output).
    holder: dict[int, int] = {}
    for call, mem in zip(calls, memories):
        kept = (call.in_tensors if mem.keeps_input else ()) + (call.out_tensors if mem.keeps_output else ())
        for tensor in kept:
            if tensor != 0:  # the input batch is counted once, as persistent
                holder[tensor] = min(holder.get(tensor, call.order), call.order)
    kept_by = [0] * len(calls)
    for tensor, order in holder.items():
        kept_by[order] += tensor_bytes[tensor]
    for i, mem in enumerate(memories):
        kept_by[i] += mem.saved
    own_grads = [sum(p.size for p in vars(c.module).values() if isinstance(p, Parameter) and p.requires_grad)
                 * itemsize for c in calls]

    # The peak and what is live at that moment: (total, kept activations, gradients, transient, where).
    peak = (persistent, 0, 0, 0, "start")

    def consider(kept_now, grads_now, transient, where):
        nonlocal peak
        total = persistent + kept_now + grads_now + transient
        if total > peak[0]:
            peak = (total, kept_now, grads_now, transient, where)

    kept = 0
    kept_tensors: set[int] = set()
    for i, (call, mem) in enumerate(zip(calls, memories)):
        live_io = sum(tensor_bytes[t] for t in set(call.in_tensors + call.out_tensors) - kept_tensors - {0})
        consider(kept, 0, live_io + mem.forward_temp, f"forward of {call.name}")
        kept += kept_by[i]
        kept_tensors |= {t for t, order in holder.items() if order == i}
    activations = kept
    grads = 0
    for i in range(len(calls) - 1, -1, -1):
        call, mem = calls[i], memories[i]
        grads += own_grads[i]
        dy = sum(tensor_bytes[t] for t in set(call.out_tensors))
        dx = sum(tensor_bytes[t] for t in call.in_tensors) if i > 0 else 0
        consider(kept, grads, dy + dx + mem.backward_temp, f"backward of {call.name}")
        kept -= kept_by[i]
    # The optimizer step: every gradient, the state, and a parameter-sized temporary.
    largest = max(ctx.trainable_sizes, default=0) * itemsize
    consider(0, grads, 2 * largest, "optimizer step")
    total, kept_at_peak, grads_at_peak, transient, where = peak
    return {
        "batch_size": batch,
        "optimizer": optimizer,
        "params": params,                          # parameters and buffers
        "grads": sum(ctx.trainable_sizes) * itemsize,
        "optimizer_state": state,
        "activations": activations,                # kept for backward at the end of forward
        "input": input_bytes,
        "peak_at": where,
        "activations_at_peak": kept_at_peak,
        "grads_at_peak": grads_at_peak,
        "workspace": transient,                    # short-lived arrays at the peak
        "scratch": scratch_bytes,                  # kernels' shared work buffers, all step long
        "total": total,
    }
