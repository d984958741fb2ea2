"""Peak memory of a training step, each framework in its own fresh process (resident set size).

Run as a script it measures one framework::

    python benchmarks/memory.py cnnkit resnet20 128     # prints one JSON line

The process imports the framework, builds the model, the optimizer and one batch, and records its
resident set size (``baseline``). It then resets the kernel's high-water mark
(``/proc/self/clear_refs``), runs three training steps and reads the new high-water mark
(``VmHWM``). ``step_peak = peak - baseline`` is what a training step adds: activations, caches,
gradients, optimizer state and work buffers; it leaves out the interpreter and the framework's own
code, which differ widely (PyTorch's libraries alone take hundreds of MB).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(framework: str, model_name: str, batch: int, steps: int = 3) -> dict:
    sys.path.insert(0, HERE)
    import common
    from end_to_end import ModelCase, build_pair, inputs, model_cases, training_step_fns

    torch = common.setup_threads()
    case = next((c for c in model_cases() if c.model == model_name), None)
    if case is None:
        raise SystemExit(f"unknown model {model_name!r}")
    case = ModelCase(case.model, batch, case.input_shape, case.kwargs)
    model, twin = build_pair(torch, case)
    x, labels = inputs(case)
    step, tstep = training_step_fns(torch, model, twin, x, labels)
    run = step if framework == "cnnkit" else tstep
    # Only the framework under test keeps its model: drop the other one before the baseline.
    if framework == "cnnkit":
        del twin, tstep
    else:
        del model, step
    import gc

    gc.collect()
    baseline = _status_kb("VmRSS")
    reset = _reset_peak()
    for _ in range(steps):
        run()
    peak = _status_kb("VmHWM")
    return {"framework": framework, "model": model_name, "batch": batch, "baseline_mb": baseline / 1024,
            "peak_mb": peak / 1024, "step_peak_mb": (peak - baseline) / 1024, "peak_reset": reset}


def run(quick: bool, log=print) -> list[dict]:
    from end_to_end import model_cases

    rows = []
    for case in model_cases():
        if quick and not case.quick:
            continue
        results = {}
        for framework in ("cnnkit", "torch"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), framework, case.model, str(case.batch)],
                                 capture_output=True, text=True, env={**os.environ}, timeout=1200)
            if out.returncode != 0:
                raise RuntimeError(f"memory run {framework} {case.model} failed:\n{out.stderr[-3000:]}")
            results[framework] = json.loads(out.stdout.strip().splitlines()[-1])
        row = dict(model=case.model, batch=case.batch, cnnkit=results["cnnkit"], torch=results["torch"])
        rows.append(row)
        log(f"  {case.model:9s} batch {case.batch}: cnnkit +{row['cnnkit']['step_peak_mb']:.0f} MB, "
            f"torch +{row['torch']['step_peak_mb']:.0f} MB, ratio "
            f"{row['cnnkit']['step_peak_mb'] / row['torch']['step_peak_mb']:.2f}")
    return rows


if __name__ == "__main__":
    framework, model_name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.path.insert(0, os.path.dirname(HERE))  # the repository root, for `import cnnkit`
    print(json.dumps(measure(framework, model_name, batch)))
