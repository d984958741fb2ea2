"""Shared by the tests/test_onednn_*.py files: the skip marker, layouts and tolerances."""
import numpy as np
import pytest

from cnnkit.functional import onednn

REASON = onednn.unavailable_reason()
requires_onednn = pytest.mark.skipif(REASON is not None, reason=f"oneDNN not available: {REASON}")


def channels_last(x):
    """The same values as ``x`` in channels-last (NHWC) memory, still shaped (N, C, H, W)."""
    n, c, h, w = x.shape
    out = np.empty((n, h, w, c), dtype=x.dtype).transpose(0, 3, 1, 2)
    out[...] = x
    return out


def in_layout(x, layout):
    return channels_last(x) if layout == "channels_last" else np.ascontiguousarray(x)


def assert_close(actual, expected, rtol=2e-5, name=""):
    """float32 against a float64 (or float32) reference: relative to the reference's scale."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()) if expected.size else 0.0, 1.0)
    assert actual.shape == expected.shape, (name, actual.shape, expected.shape)
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol, atol=rtol * scale,
                               err_msg=name)
