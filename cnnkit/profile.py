"""Where does the time go? Per-layer forward/backward timing of a model, like ``caffe time``.

``profile(model, input_shape, batch_size)`` runs a few training steps (forward, backward without
the input gradient) and reports, for every leaf layer: forward and backward milliseconds, the
achieved GFLOP/s of the layers that count multiply-adds (``module.macs``) and its share of the
machine's sgemm rate, the kernel the layer ran (``last_algorithm``), and the split of its time
between data movement (im2col, col2im, transposes) and GEMM::

    >>> from cnnkit.profile import profile
    >>> print(profile(model, (3, 32, 32), batch_size=128))

Kernels mark their phases with ``with section("im2col"):`` from
:mod:`cnnkit.functional.instrument`, which this module records during a run. The name
``"gemm"`` counts as compute; every other section counts as data movement, and the rest of a
layer's time (element-wise work, Python) is shown as "other".
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .functional.instrument import enabled, recording, section  # noqa: F401  (for kernels outside cnnkit)

COMPUTE_SECTIONS = frozenset({"gemm", "onednn"})  # "onednn": a oneDNN primitive (not its reorders)
JIT_SECTION = "onednn compile"  # building a oneDNN primitive for a new shape (a JIT compile)


class _Recorder:
    """Accumulates section times for the (layer, phase) currently running."""

    def __init__(self):
        self.stack: list[tuple[str, str]] = []  # (layer name, "forward"/"backward")
        self.sections: dict[tuple[str, str], dict[str, float]] = {}

    def add(self, name: str, seconds: float) -> None:
        if not self.stack:
            return
        bucket = self.sections.setdefault(self.stack[-1], {})
        bucket[name] = bucket.get(name, 0.0) + seconds


# -- FLOP counts --------------------------------------------------------------------------------

def forward_flops(module, input_shape, output_shape) -> float:
    """Floating-point operations of one forward pass over a batch: 2 per multiply-add the layer
    declares (``module.macs``, one sample), times the batch; 0 when it counts none.

    Shape:
        input_shape, output_shape: with the batch axis first, (N, ...)
    """
    return 2.0 * input_shape[0] * module.macs(tuple(input_shape[1:]), tuple(output_shape[1:]))


_SGEMM_CACHE: dict = {}


def sgemm_rate(n: int = 1024, repeat: int = 5) -> float:
    """The machine's float32 GEMM rate through NumPy in GFLOP/s (best of ``repeat``; cached)."""
    if n not in _SGEMM_CACHE:
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty_like(a)
        np.matmul(a, a, out=out)
        best = min(_time(lambda: np.matmul(a, a, out=out)) for _ in range(repeat))
        _SGEMM_CACHE[n] = 2.0 * n**3 / best / 1e9
    return _SGEMM_CACHE[n]


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- the report ---------------------------------------------------------------------------------

@dataclass
class LayerProfile:
    name: str
    type: str
    output_shape: tuple
    algorithm: str
    forward_ms: float
    backward_ms: float
    forward_flops: float
    backward_flops: float
    sections_ms: dict = field(default_factory=dict)  # {"forward": {...}, "backward": {...}}

    @property
    def total_ms(self) -> float:
        return self.forward_ms + self.backward_ms

    @property
    def gflops(self) -> float:
        """Achieved rate over forward + backward (0 for layers without counted FLOPs)."""
        flops = self.forward_flops + self.backward_flops
        return flops / (self.total_ms * 1e6) if flops and self.total_ms else 0.0

    def split_ms(self) -> tuple[float, float, float]:
        """``(data movement, GEMM, other)`` milliseconds over forward + backward."""
        movement = compute = 0.0
        for phase in self.sections_ms.values():
            for name, ms in phase.items():
                if name in COMPUTE_SECTIONS:
                    compute += ms
                else:
                    movement += ms
        return movement, compute, max(self.total_ms - movement - compute, 0.0)


@dataclass
class Profile:
    layers: list
    batch_size: int
    input_shape: tuple
    step_ms: float
    sgemm_gflops: float
    backward: bool
    jit_ms: tuple = (0.0, 0.0)  # oneDNN JIT compiles for new shapes: (warm-up steps, timed steps)

    @property
    def forward_ms(self) -> float:
        return sum(r.forward_ms for r in self.layers)

    @property
    def backward_ms(self) -> float:
        return sum(r.backward_ms for r in self.layers)

    def to_dict(self) -> dict:
        rows = []
        for r in self.layers:
            movement, compute, other = r.split_ms()
            rows.append(dict(name=r.name, type=r.type, output_shape=list(r.output_shape), algorithm=r.algorithm,
                             forward_ms=r.forward_ms, backward_ms=r.backward_ms, gflops=r.gflops,
                             percent_of_sgemm=100 * r.gflops / self.sgemm_gflops if r.gflops else None,
                             data_movement_ms=movement, gemm_ms=compute, other_ms=other, sections_ms=r.sections_ms))
        return dict(batch_size=self.batch_size, input_shape=list(self.input_shape), step_ms=self.step_ms,
                    forward_ms=self.forward_ms, backward_ms=self.backward_ms, sgemm_gflops=self.sgemm_gflops,
                    jit_compile_ms={"warmup": self.jit_ms[0], "timed": self.jit_ms[1]},
                    layers=rows)

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def __str__(self) -> str:
        header = ["layer", "type", "output", "algorithm", "fwd ms", "bwd ms", "GFLOP/s", "% sgemm",
                  "move ms", "gemm ms", "other ms"]
        rows = []
        for r in self.layers:
            movement, compute, other = r.split_ms()
            rate = f"{r.gflops:.1f}" if r.gflops else ""
            share = f"{100 * r.gflops / self.sgemm_gflops:.0f}%" if r.gflops else ""
            rows.append([r.name, r.type, "x".join(map(str, r.output_shape[1:])), r.algorithm,
                         f"{r.forward_ms:.2f}", f"{r.backward_ms:.2f}" if self.backward else "", rate, share,
                         f"{movement:.2f}" if movement else "", f"{compute:.2f}" if compute else "",
                         f"{other:.2f}"])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                  for row in rows]
        movement = sum(r.split_ms()[0] for r in self.layers)
        compute = sum(r.split_ms()[1] for r in self.layers)
        total = self.forward_ms + self.backward_ms
        lines.append("")
        lines.append(
            f"batch {self.batch_size}, input {'x'.join(map(str, self.input_shape))}: "
            f"{'training step' if self.backward else 'inference'} {self.step_ms:.1f} ms "
            f"(layers: forward {self.forward_ms:.1f} ms, backward {self.backward_ms:.1f} ms; "
            f"data movement {movement:.1f} ms = {100 * movement / max(total, 1e-9):.0f}%, "
            f"GEMM {compute:.1f} ms = {100 * compute / max(total, 1e-9):.0f}%); "
            f"sgemm rate {self.sgemm_gflops:.0f} GFLOP/s"
        )
        warmup_jit, timed_jit = self.jit_ms
        if warmup_jit or timed_jit:
            lines.append(f"oneDNN JIT compiles for new shapes: {warmup_jit:.1f} ms in the warm-up (not timed)"
                         + (f", {timed_jit:.1f} ms in the timed steps (a shape changed between steps)"
                            if timed_jit else ", none in the timed steps"))
        return "\n".join(lines)


def _leaf_modules(model):
    return [(name or type(model).__name__, m) for name, m in model.named_modules() if not any(True for _ in m.children())]


def _algorithm(module) -> str:
    return str(getattr(module, "last_algorithm", None) or getattr(module, "algorithm", None) or "")


class _Instrument:
    """Wraps every leaf module's forward/backward (on the instance) to time it; undone on exit."""

    def __init__(self, model, recorder: _Recorder):
        self.recorder = recorder
        self.leaves = _leaf_modules(model)
        self.times = {name: {"forward": [], "backward": []} for name, _ in self.leaves}
        self.shapes = {}
        self.input_grad = {}

    def __enter__(self):
        for name, module in self.leaves:
            module.forward = self._wrap(name, module, "forward", type(module).forward.__get__(module))
            module.backward = self._wrap(name, module, "backward", type(module).backward.__get__(module))
        return self

    def __exit__(self, *exc):
        for _, module in self.leaves:
            vars(module).pop("forward", None)
            vars(module).pop("backward", None)
        return False

    def _wrap(self, name, module, phase, method):
        recorder = self.recorder

        def timed(x, *args, **kwargs):
            recorder.stack.append((name, phase))
            start = time.perf_counter()
            try:
                out = method(x, *args, **kwargs)
            finally:
                self.times[name][phase].append(time.perf_counter() - start)
                recorder.stack.pop()
            if phase == "forward":  # of the first input and the first output, for several (Split, MatMul)
                first = out[0] if isinstance(out, tuple) else out
                self.shapes[name] = (tuple(x.shape), tuple(first.shape))
            else:
                self.input_grad[name] = kwargs.get("input_grad", args[0] if args else True)
            return out

        return timed


def profile(model, input_shape, batch_size: int = 32, *, repeat: int = 5, warmup: int = 1, backward: bool = True,
            dtype=np.float32, seed: int = 0, sgemm_gflops: float | None = None) -> Profile:
    """Time every leaf layer of ``model`` over ``repeat`` steps (medians) after ``warmup`` steps.

    With ``backward=True`` a step is a training-mode forward and a backward of a random output
    gradient with ``input_grad=False`` (what a training step runs; the loss and the optimizer are
    left out); with ``backward=False`` it is an eval-mode forward under ``no_grad``. Parameter
    gradients are reset after every step.

    Shape:
        input_shape: one sample, e.g. (3, 32, 32); the batch is (batch_size, *input_shape)
    """
    from .nn.module import no_grad

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size,) + tuple(input_shape)).astype(dtype)
    was_training = model.training
    model.train(backward)
    recorder = _Recorder()
    steps = []
    dy = None

    def step():
        nonlocal dy
        if backward:
            y = model(x)
            if dy is None:
                dy = rng.standard_normal(y.shape).astype(dtype) / y.size
            model.backward(dy, input_grad=False)
            model.zero_grad()
        else:
            with no_grad():
                model(x)

    try:
        with _Instrument(model, recorder) as inst, recording(recorder):
            warmup_jit = 0.0
            for i in range(warmup + repeat):
                if i == warmup:
                    warmup_jit = _jit_seconds(recorder)
                    recorder.sections.clear()
                    for t in inst.times.values():
                        t["forward"].clear()
                        t["backward"].clear()
                start = time.perf_counter()
                step()
                if i >= warmup:
                    steps.append(time.perf_counter() - start)
    finally:
        model.train(was_training)

    rate = sgemm_gflops if sgemm_gflops is not None else sgemm_rate()
    layers = []
    previous = None
    for name, module in inst.leaves:
        times = inst.times[name]
        if not times["forward"]:
            if previous is not None and getattr(previous[1], "relu_fused", False) and previous[0] in inst.shapes:
                # A ReLU that the BatchNorm before it ran (nn.containers.fuse_norm_relu): its time
                # is in that layer's row.
                layers.append(LayerProfile(name=name, type=type(module).__name__,
                                           output_shape=inst.shapes[previous[0]][1],
                                           algorithm=f"fused into {previous[0]}", forward_ms=0.0, backward_ms=0.0,
                                           forward_flops=0.0, backward_flops=0.0))
            previous = (name, module)
            continue
        previous = (name, module)
        in_shape, out_shape = inst.shapes[name]
        fwd_flops = forward_flops(module, in_shape, out_shape)
        # Backward: the weight gradient costs one forward's FLOPs, the input gradient another.
        bwd_flops = fwd_flops * (1 + bool(inst.input_grad.get(name, True))) if backward else 0.0
        sections = {phase: {k: 1e3 * v / repeat for k, v in recorder.sections.get((name, phase), {}).items()}
                    for phase in ("forward", "backward") if (name, phase) in recorder.sections}
        layers.append(LayerProfile(
            name=name, type=type(module).__name__, output_shape=out_shape, algorithm=_algorithm(module),
            forward_ms=1e3 * statistics.median(times["forward"]),
            backward_ms=1e3 * statistics.median(times["backward"]) if times["backward"] else 0.0,
            forward_flops=fwd_flops, backward_flops=bwd_flops, sections_ms=sections,
        ))
    return Profile(layers, batch_size, tuple(input_shape), 1e3 * statistics.median(steps), rate, backward,
                   jit_ms=(1e3 * warmup_jit, 1e3 * _jit_seconds(recorder)))


def _jit_seconds(recorder) -> float:
    return sum(sections.get(JIT_SECTION, 0.0) for sections in recorder.sections.values())
