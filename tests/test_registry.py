"""The kernel registry and the backend switch: auto picks the fastest kernel that accepts a call and
falls back to the NumPy reference; CNNKIT_BACKEND / use_backend decide which backends auto may use;
a layer's algorithm= pins one kernel; summary plans with the same rules."""
from typing import NamedTuple

import numpy as np
import pytest

import cnnkit
from cnnkit import backend
from cnnkit.functional import activation as F
from cnnkit.functional.conv import CONV2D
from cnnkit.functional.memory import ArraySpec, LayerMemory
from cnnkit.functional.registry import Kernel
from cnnkit.nn import Conv2d, ReLU, Sequential


class FakeCache(NamedTuple):
    y: object


@pytest.fixture
def fake_backend(monkeypatch):
    """A backend "fake" with a ReLU kernel that declines float64 and counts its calls."""
    calls = []

    def forward(x):
        calls.append("forward")
        y = np.maximum(x, 0)
        return y, FakeCache(y)

    def backward(dy, cache):
        calls.append("backward")
        return dy * (cache.y > 0)

    def decline(x):
        return "float32 only" if x.dtype != np.float32 else None

    # The registry alone: backends installed here (oneDNN) are hidden for the test.
    monkeypatch.setattr(F.RELU, "_kernels", {k: v for k, v in F.RELU._kernels.items() if v.backend == "numpy"})
    monkeypatch.setattr(F.RELU, "_by_cache", {t: k for t, k in F.RELU._by_cache.items() if k.backend == "numpy"})
    monkeypatch.setattr(backend, "_PROBES", {backend.REFERENCE_BACKEND: backend._PROBES[backend.REFERENCE_BACKEND]})
    monkeypatch.setattr(backend, "_probe_results", {})
    backend.register_backend("fake", lambda: None)
    F.RELU.register(Kernel("fake", "fake", 100, forward, backward, FakeCache, decline=decline,
                           memory=lambda x: LayerMemory(saved=123)))
    return calls


def test_auto_takes_the_highest_priority_kernel_that_accepts(fake_backend, rng):
    layer = ReLU()
    x = rng.standard_normal((2, 3)).astype(np.float32)
    y = layer(x)
    assert layer.last_algorithm == "fake" and fake_backend == ["forward"]
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), (x > 0).astype(np.float32))
    assert fake_backend == ["forward", "backward"]  # backward found the kernel by its cache
    layer(x.astype(np.float64))  # declined: the NumPy kernel runs
    assert layer.last_algorithm == "numpy" and fake_backend == ["forward", "backward"]


def test_backend_switch_and_context_manager(fake_backend, rng, monkeypatch):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    layer = ReLU()
    with backend.use_backend("numpy"):
        layer(x)
        assert layer.last_algorithm == "numpy"
        assert backend.active_backend()[0] == "numpy"
    layer(x)
    assert layer.last_algorithm == "fake" and backend.active_backend()[0] == "fake"
    monkeypatch.setattr(backend, "_setting", "numpy")  # what CNNKIT_BACKEND=numpy sets at import
    layer(x)
    assert layer.last_algorithm == "numpy"
    with pytest.raises(ValueError, match="must be 'auto' or one of numpy, fake, got 'cuda'"):
        backend.set_backend("cuda")


def test_a_backend_that_cannot_load_is_skipped_with_its_reason(fake_backend, rng):
    backend.register_backend("fake", lambda: "libfake.so not found: pip install fake")
    layer = ReLU()
    layer(rng.standard_normal((2, 3)).astype(np.float32))
    assert layer.last_algorithm == "numpy"
    assert backend.active_backend() == ("numpy", "fake: libfake.so not found: pip install fake")
    assert F.RELU.why_not(ArraySpec((2, 3), np.float32))["fake"].startswith("libfake.so not found")


def test_invalid_environment_setting_is_named(monkeypatch):
    monkeypatch.setattr(backend, "_setting", "onedn")
    monkeypatch.setattr(backend, "_from_environment", "onedn")
    with pytest.raises(ValueError, match="CNNKIT_BACKEND must be 'auto' or one of .*got 'onedn'"):
        backend.enabled_backends()


def test_explicit_algorithm_runs_that_kernel_or_says_why_not(fake_backend, rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match="relu: algorithm='fake' cannot run this call: float32 only"):
        ReLU(algorithm="fake")(x)
    with pytest.raises(ValueError, match=r"ReLU: algorithm must be one of \('auto', 'fake', 'numpy'\), got 'x'"):
        ReLU(algorithm="x")
    layer = ReLU(algorithm="numpy")
    layer(x.astype(np.float32))
    assert layer.last_algorithm == "numpy"


def test_summary_plans_with_the_kernels_memory_rule(fake_backend):
    s = cnnkit.summary(Sequential(ReLU()), (3, 4, 4), batch_size=2)
    row_kept = s.training["activations"]
    assert row_kept == 123  # the fake kernel's rule, asked with ArraySpecs


def test_conv_kernels_and_their_reasons(rng):
    x, w = ArraySpec((8, 3, 32, 32), np.float32), ArraySpec((16, 3, 3, 3), np.float32)
    reasons = CONV2D.why_not(x, w, None, 1, 1, 1, 1)
    assert reasons["im2col"] is None and "im2col is as fast" in reasons["flat"]
    grouped = CONV2D.why_not(ArraySpec((8, 16, 8, 8), np.float32), ArraySpec((16, 8, 3, 3), np.float32),
                             None, 1, 1, 1, 2)
    assert "needs groups=1" in grouped["flat"]
    with pytest.raises(ValueError, match="algorithm='flat' cannot run this layer: the flat kernel needs groups=1"):
        Conv2d(4, 4, 3, groups=2, algorithm="flat")
    with pytest.raises(TypeError, match="no registered kernel's forward makes"):
        CONV2D.backward(np.zeros((1, 1, 1, 1)), ("not", "a cache"))
