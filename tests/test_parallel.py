"""The thread-pool helpers: chunked work and the split GEMM give exactly what one call gives."""
import numpy as np
import pytest

from cnnkit.functional import parallel
from cnnkit.functional.parallel import parallel_chunks, split, threaded_matmul


@pytest.fixture
def many_threads(monkeypatch):
    """3 threads, and every job split however small."""
    monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(parallel, "MIN_SPLIT_MACS", 0)
    monkeypatch.setattr(parallel, "BLAS_SINGLE_THREAD_MACS", 0)


def test_split_covers_the_range_evenly():
    assert split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert split(2, 5) == [(0, 1), (1, 2)]


def test_parallel_chunks_visits_every_index_once(many_threads):
    seen = np.zeros(100, dtype=int)

    def work(start, stop):
        seen[start:stop] += 1

    parallel_chunks(work, 100)
    assert (seen == 1).all()


@pytest.mark.parametrize("a_shape, b_shape", [
    ((300, 20), (20, 40)),  # rows split
    ((5, 30), (30, 200)),  # few rows: columns split
    ((6, 7, 20), (20, 9)),  # batch split, b broadcast
    ((2, 3, 8, 10), (3, 10, 4)),  # batch split, b broadcast over the leading axis
    ((1, 8, 10), (4, 10, 6)),  # a broadcast along the batch
])
def test_threaded_matmul_equals_matmul(a_shape, b_shape, many_threads, rng):
    a = rng.standard_normal(a_shape)
    b = rng.standard_normal(b_shape)
    np.testing.assert_allclose(threaded_matmul(a, b), np.matmul(a, b), rtol=1e-12, atol=1e-12)
    bt = np.ascontiguousarray(np.swapaxes(b, -1, -2))
    out = np.empty(np.matmul(a, b).shape)
    assert threaded_matmul(a, np.swapaxes(bt, -1, -2), out=out) is out  # a transposed operand, into out
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12, atol=1e-12)


def test_threaded_matmul_keeps_float32(many_threads, rng):
    a = rng.standard_normal((64, 32)).astype(np.float32)
    assert threaded_matmul(a, a.T).dtype == np.float32
