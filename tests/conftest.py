import os
from pathlib import Path

import numpy as np
import pytest

# The verified copies of the real datasets sit beside the checkout (see ../shared/data/README.md).
SHARED_DATA = Path(os.environ.get("CNNKIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def one_blas_thread():
    """One BLAS thread per test process: with two pytest workers on two cores, OpenBLAS threads
    spin-waiting on each other made matrix products 10-25x slower."""
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def cheap_weights(monkeypatch):
    """Build the big nets without drawing 100M random numbers: zero weights, no re-init.

    Parameter counts, shapes and MACs do not depend on the values; np.zeros is lazily allocated.
    """
    import cnnkit

    def zeros(weight_shape, bias_size, dtype, generator):
        return np.zeros(weight_shape, dtype), (np.zeros(bias_size, dtype) if bias_size else None)

    monkeypatch.setattr(cnnkit.nn.linear, "default_weight_and_bias", zeros)
    monkeypatch.setattr(cnnkit.nn.conv, "default_weight_and_bias", zeros)
    monkeypatch.setattr(cnnkit.nn.init, "kaiming_normal_", lambda p, *a, **k: p)
    monkeypatch.setattr(cnnkit.nn.init, "normal_", lambda p, *a, **k: p)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def numpy_backend():
    """Run a test on the NumPy kernels only (tests of which NumPy kernel `auto` picks)."""
    from cnnkit.backend import use_backend

    with use_backend("numpy"):
        yield
