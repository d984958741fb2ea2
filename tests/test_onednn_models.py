"""Whole models on the oneDNN backend: the same training step as the NumPy kernels, the registry's
choices and fallbacks, fused inference, the summary's memory estimate (within 10% of tracemalloc),
profile's report, and `import cnnkit` loading nothing."""
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import cnnkit.models as M
from cnnkit.backend import use_backend
from cnnkit.functional.workspace import clear_scratch
from cnnkit.nn.loss import CrossEntropyLoss
from cnnkit.optim import SGD, Adam
from cnnkit.summary import summary
from onednn_helpers import assert_close, requires_onednn

pytestmark = requires_onednn
SHAPES = {"lenet5": (1, 28, 28), "resnet20": (3, 32, 32), "resnet18": (3, 224, 224)}


def _gradients(name, backend, dtype=np.float32, batch=8):
    with use_backend(backend):
        model = M.create(name, seed=0).to(dtype)
        rng = np.random.default_rng(1)
        x = rng.standard_normal((batch,) + SHAPES[name]).astype(dtype)
        labels = rng.integers(0, 10, batch)
        lossf = CrossEntropyLoss()
        loss = lossf(model(x), labels)
        model.backward(lossf.backward(), input_grad=False)
        algorithms = {n: (type(m).__name__, m.last_algorithm) for n, m in model.named_modules()
                      if getattr(m, "last_algorithm", None)}
        return loss, {k: p.grad for k, p in model.named_parameters()}, dict(model.state_dict()), algorithms


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_training_step_matches_the_float64_reference(name):
    """oneDNN in float32 against the NumPy kernels in float64 (the reference's float32 path
    is itself further from float64 on ResNet-20: BatchNorm's float32 sums; PyTorch and oneDNN
    agree with float64 to ~1e-6 there, the NumPy float32 kernels to ~5e-3)."""
    loss, grads, state, algorithms = _gradients(name, "onednn")
    ref_loss, ref_grads, ref_state, _ = _gradients(name, "numpy", np.float64)
    # Every layer with a oneDNN kernel ran it, except ReLUs of few values and the small linear
    # layers of these nets (NumPy is faster there: a defer).
    assert {a for t, a in algorithms.values() if t not in ("ReLU", "Linear")} == {"onednn"}, algorithms
    assert abs(loss - ref_loss) < 1e-5 * max(1.0, abs(ref_loss))
    for key in ref_grads:
        scale = np.abs(ref_grads[key]).max()
        assert np.abs(grads[key] - ref_grads[key]).max() < 1e-4 * scale, key
    for key in ref_state:  # BatchNorm running statistics updated the same way
        assert_close(np.asarray(state[key], np.float64), np.asarray(ref_state[key], np.float64), name=key)


def test_float64_runs_on_numpy_and_numpy_backend_switches_off():
    model = M.create("lenet5", seed=0).double()
    model(np.zeros((2, 1, 28, 28)))
    assert all(m.last_algorithm != "onednn" for m in model.modules() if hasattr(m, "last_algorithm"))
    model = M.create("lenet5", seed=0)
    with use_backend("numpy"):
        model(np.zeros((2, 1, 28, 28), np.float32))
    assert all(m.last_algorithm != "onednn" for m in model.modules() if getattr(m, "last_algorithm", None))


def test_nan_input_falls_back_and_propagates_like_pytorch():
    from cnnkit.nn import MaxPool2d, ReLU

    x = np.random.default_rng(0).standard_normal((2, 16, 32, 32)).astype(np.float32)
    x[0, 3, 4, 5] = np.nan
    relu, pool = ReLU(), MaxPool2d(2)
    assert np.isnan(relu(x)[0, 3, 4, 5]) and relu.last_algorithm == "numpy"
    assert np.isnan(pool(x)[0, 3, 2, 2]) and pool.last_algorithm == "numpy"
    assert relu(np.abs(np.nan_to_num(x)) + 1).min() > 0 and relu.last_algorithm == "onednn"


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_fused_inference_matches_the_unfused_model(name):
    from cnnkit.nn.fuse import fuse

    import cnnkit

    model = M.create(name, seed=0).eval()
    x = np.random.default_rng(2).standard_normal((4,) + SHAPES[name]).astype(np.float32)
    fast = fuse(model, SHAPES[name])  # checks its own output against the model's on a batch
    with cnnkit.no_grad():
        want, got = model(x), fast(x)
    assert_close(got, want, rtol=1e-4)
    fused = [m for m in fast.modules() if getattr(m, "fused_relu", False)]
    assert fused and all(m.last_algorithm == "onednn" for m in fused)  # the ReLU as a oneDNN post-op


def _measured_peak(model, shape, batch, optimizer_cls, **opt_kwargs) -> int:
    """tracemalloc's peak during the second training step (optimizer state exists by then)."""
    opt = optimizer_cls(model.parameters(), **opt_kwargs)
    lossf = CrossEntropyLoss()
    rng = np.random.default_rng(0)

    def step():
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        labels = rng.integers(0, 10, batch)
        opt.zero_grad()
        lossf(model(x), labels)
        model.backward(lossf.backward(), input_grad=False)
        opt.step()

    step()
    tracemalloc.reset_peak()
    step()
    return tracemalloc.get_traced_memory()[1]


@pytest.mark.parametrize("name, batch, optimizer", [("lenet5", 32, "momentum"), ("lenet5", 16, "adam"),
                                                    ("resnet20", 16, "momentum"), ("resnet18", 2, "momentum")])
def test_training_memory_estimate_within_10_percent(name, batch, optimizer):
    shape = SHAPES[name]
    # Untraced steps of the same shapes first: they load the library and the modules and ctypes
    # functions a first call creates, memory that is the process's, not the training step's.
    _measured_peak(M.create(name, seed=0), shape, batch, SGD, lr=0.01)
    clear_scratch()
    tracemalloc.start()  # before the model, so parameters and optimizer state are in the peak
    try:
        model = M.create(name, seed=0)
        if optimizer == "adam":
            measured = _measured_peak(model, shape, batch, Adam, lr=1e-3)
        else:
            measured = _measured_peak(model, shape, batch, SGD, lr=0.01, momentum=0.9)
    finally:
        tracemalloc.stop()
    estimate = summary(model, shape, batch_size=batch, optimizer=optimizer).training["total"]
    assert abs(estimate - measured) / measured < 0.10, (estimate, measured)


def test_profile_names_onednn_and_counts_jit_compiles():
    from cnnkit.functional.onednn import runtime
    from cnnkit.profile import profile

    runtime.clear_cache()
    before = runtime.stats()["primitives"]
    result = profile(M.create("lenet5", seed=0), SHAPES["lenet5"], batch_size=4, repeat=1, warmup=1,
                     sgemm_gflops=100.0)
    conv = next(r for r in result.layers if r.type == "Conv2d")
    assert conv.algorithm == "onednn" and conv.split_ms()[1] > 0  # oneDNN primitives count as compute
    assert runtime.stats()["primitives"] > before  # new shapes: JIT compiles, counted
    warmup_jit, timed_jit = result.jit_ms  # ... and reported: all in the warm-up step
    assert warmup_jit > 0 and timed_jit == 0 and "JIT compiles" in str(result)


def test_import_cnnkit_loads_no_library():
    code = ("import cnnkit, cnnkit.nn, cnnkit.functional.onednn; "
            "print(any('libdnnl' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_RUN_LENET = ("import numpy as np, cnnkit; from cnnkit import backend, models; "
              "m = models.create('lenet5', seed=0); m(np.zeros((2, 1, 28, 28), np.float32)); "
              "print(backend.active_backend()[0], "
              "{x.last_algorithm for x in m.modules() if getattr(x, 'last_algorithm', None)})")


def test_import_cnnkit_alone_registers_the_backend():
    """A fresh process that imports only cnnkit runs oneDNN (the other tests share a process
    whose imports could hide a missing registration)."""
    out = subprocess.run([sys.executable, "-c", _RUN_LENET], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("onednn") and "'onednn'" in out.stdout, out.stdout


def test_missing_library_means_numpy_everywhere(tmp_path):
    env = {"CNNKIT_ONEDNN_LIBRARY": str(tmp_path / "libdnnl.so.3.2"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _RUN_LENET], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.startswith("numpy") and "onednn" not in out.stdout
