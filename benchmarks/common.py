"""Timing helpers shared by the speed benchmarks: thread setup, the machine's sgemm rate, and
interleaved median timing of cnnkit against PyTorch in the same process.

The machine is shared and small (2 cores), so a single timing means little. Every comparison here
runs the candidates *interleaved* (cnnkit, torch, cnnkit, torch, ...) so that a burst of load from
elsewhere hits both, takes the median of several repetitions, and reports the ratio
``cnnkit time / PyTorch time``.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

THREADS = int(os.environ.get("CNNKIT_BENCH_THREADS", "2"))
# BLAS reads these at load time: set them before NumPy is imported anywhere.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CNNKIT_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))
# PyTorch's OpenMP threads spin while they wait for work. On a machine shared with other jobs a
# spinning thread steals the core its partner needs: LeNet-5's PyTorch training step measured
# 177 ms with the default policy and 38 ms with PASSIVE under load (23 ms on one thread). PASSIVE
# is PyTorch's best case here, so it is the default (set OMP_WAIT_POLICY to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402


def setup_threads(threads: int = THREADS):
    """Give NumPy's BLAS and PyTorch the same number of threads; return the torch module."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # the environment variables above already did it
        pass
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1) if _interop_unset(torch) else None
    return torch


def _interop_unset(torch) -> bool:
    # set_num_interop_threads may be called once, before any parallel work.
    try:
        return torch.get_num_interop_threads() != 1
    except RuntimeError:
        return False


def blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info

        return max((i.get("num_threads", 0) for i in threadpool_info() if i.get("user_api") == "blas"), default=THREADS)
    except ImportError:
        return THREADS


def time_call(run, setup=None) -> float:
    """Seconds taken by ``run(state)`` where ``state = setup()`` (setup is not timed)."""
    state = setup() if setup is not None else None
    start = time.perf_counter()
    run(state)
    return time.perf_counter() - start


# Untimed pause after every timed call. PyTorch's OpenMP threads (GNU libgomp) spin-wait after each
# parallel region (GOMP_SPINCOUNT, ~300k pause instructions, tens of milliseconds here), and
# OpenBLAS's workers do the same after a multi-threaded GEMM; whichever framework ran next
# found both cores busy (measured: cnnkit's 128x16x32x32 convolution 15 ms alone, 21 ms right
# after a PyTorch call). The pause lets each framework run on an idle machine, as a user's
# program would, while the rounds stay interleaved against the machine's drift. OpenBLAS's
# workers spin for 0.1-0.2 s after a multi-threaded GEMM (cnnkit's convolution 23-29 ms within
# 0.1 s of a 2-thread sgemm, 14 ms after 0.2 s), so a candidate that runs one (the sgemm
# reference) gets a longer pause: ``settle`` may map names to seconds.
SETTLE_SECONDS = 0.03
BLAS_SETTLE_SECONDS = 0.25


def interleaved(candidates: dict, repeat: int = 7, warmup: int = 1, min_seconds: float = 0.0,
                settle=SETTLE_SECONDS, steady: bool = True) -> dict:
    """Median seconds per candidate, timed in interleaved rounds.

    ``candidates`` maps a name to ``run`` or to ``(setup, run)``: ``setup()`` (untimed) returns the
    state that ``run(state)`` consumes, e.g. a forward pass before a timed backward. Each round
    times every candidate once, in turn, with ``settle`` seconds (or ``settle[name]``) of untimed
    pause after each call (see ``SETTLE_SECONDS``); at least ``repeat`` rounds run, more while the total time stays
    below ``min_seconds`` (so very fast operations get more samples).

    ``steady``: a candidate without a ``setup`` runs once, untimed, right before its timed call,
    so that each timed call is the second of two back to back, as steps are in a training loop.
    Measured on this (virtual) machine: after the settle pause, idle OpenMP workers and cores
    took milliseconds to wake, which added about 10 ms to every call of both frameworks (LeNet-5
    training step: cnnkit 7.8 / PyTorch 12.4 ms back to back, 20.1 / 21.4 ms after a 30 ms pause).
    A ``setup`` already runs right before its timed call.
    """
    pairs = {k: (v if isinstance(v, tuple) else (None, v)) for k, v in candidates.items()}
    pauses = {k: settle.get(k, SETTLE_SECONDS) if isinstance(settle, dict) else settle for k in pairs}
    samples = {k: [] for k in pairs}
    for _ in range(warmup):
        for setup, run in pairs.values():
            time_call(run, setup)
    started = time.perf_counter()
    rounds = 0
    while rounds < repeat or (time.perf_counter() - started < min_seconds and rounds < 50 * repeat):
        for name, (setup, run) in pairs.items():
            if steady and setup is None:
                run(None)
            samples[name].append(time_call(run, setup))
            time.sleep(pauses[name])
        rounds += 1
    return {k: statistics.median(v) for k, v in samples.items()}


def measure_sgemm(n: int = 2048, repeat: int = 7) -> float:
    """The machine's float32 GEMM rate through NumPy (OpenBLAS), in GFLOP/s (median of runs)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def machine_info(torch) -> dict:
    """Machine, versions and BLAS: the header of BENCHMARKS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown"
    try:
        from threadpoolctl import threadpool_info

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                blas = f"{info.get('internal_api')} {info.get('version')} ({info.get('architecture')})"
                break
    except ImportError:
        pass
    import cnnkit
    from cnnkit import backend

    name, why = backend.active_backend()
    kernels = name
    if name == "onednn":
        from cnnkit.cli.info import collect

        dnnl = collect()["onednn"]
        kernels = (f"oneDNN {dnnl['version']} ({dnnl['isa']}, {dnnl['openmp_threads']} OpenMP threads, "
                   f"{dnnl['activation_layout']} activations)")
    return {
        "backend": name,
        "kernels": kernels,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": THREADS,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "torch": torch.__version__,
        "cnnkit": cnnkit.__version__,
    }


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else (f"{ms:.2f}" if ms < 100 else f"{ms:.0f}")


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "n/a"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
