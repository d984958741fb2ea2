"""The fast convolution paths (flat-grid kernel, algorithm choice, buffer reuse, threads) hold the
same three tiers as the reference kernel: gradcheck, naive loops, PyTorch."""
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip
F = torch.nn.functional

from cnnkit.functional import conv as conv_module
from cnnkit.functional import parallel
from cnnkit.functional.conv import choose_algorithm, conv2d_backward, conv2d_forward
from cnnkit.functional.conv_flat import flat_geometry, to_phases
from cnnkit.functional.workspace import Workspace, clear_scratch, scratch, scratch_nbytes
from cnnkit.nn.conv import Conv2d
from cnnkit.testing import gradcheck
from cnnkit.testing.reference.conv import conv2d_naive, conv2d_naive_backward

# These tests are about which NumPy kernel `auto` picks: run them without oneDNN.
pytestmark = pytest.mark.usefixtures("numpy_backend")

# (in, out, input (H, W), kernel, stride, padding, dilation): every geometry the flat kernel takes
CASES = {
    "3x3 s1 p1": (3, 4, (6, 6), 3, 1, 1, 1),
    "3x3 s1 p0": (3, 4, (6, 7), 3, 1, 0, 1),
    "3x3 s2 p1": (2, 3, (8, 8), 3, 2, 1, 1),
    "3x3 s2 p1 odd input": (2, 3, (9, 7), 3, 2, 1, 1),
    "3x3 s3 p2": (2, 3, (8, 8), 3, 3, 2, 1),
    "5x5 s2 p2": (2, 3, (9, 9), 5, 2, 2, 1),
    "kernel < stride (lossy, opted out)": (2, 3, (7, 7), 2, 3, 0, 1),
    "dilation 2": (2, 3, (9, 8), 3, 1, 2, 2),
    "dilation 2 stride 2": (2, 3, (9, 9), 3, 2, 2, 2),
    "1x1 s1": (5, 3, (4, 5), 1, 1, 0, 1),
    "1x1 s2": (5, 3, (5, 6), 1, 2, 0, 1),
    "1x1 s1 p1": (3, 2, (4, 4), 1, 1, 1, 1),
    "rectangular everything": (2, 3, (8, 11), (3, 2), (2, 3), (1, 2), (2, 1)),
    "rectangular, stride 1": (2, 3, (7, 10), (3, 5), 1, (2, 1), (1, 2)),
    "padding beyond the kernel's reach": (2, 3, (5, 6), 3, 1, 3, 1),
    "11x11 s4 (AlexNet-like)": (3, 4, (23, 23), 11, 4, 2, 1),
    "many filters, few positions": (3, 32, (3, 3), 2, 1, 0, 1),
}


def make(case, rng, dtype=np.float64, algorithm="flat", n=2):
    c_in, c_out, hw, kernel, stride, padding, dilation = CASES[case]
    layer = Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=True, check_geometry=False,
                   dtype=dtype, generator=rng, algorithm=algorithm)
    return layer, rng.standard_normal((n, c_in) + hw).astype(dtype)


def torch_grads(layer, x, dy):
    tx = torch.from_numpy(x).requires_grad_()
    tw = torch.from_numpy(layer.weight.data.copy()).requires_grad_()
    tb = torch.from_numpy(layer.bias.data.copy()).requires_grad_()
    ty = F.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation)
    ty.backward(torch.from_numpy(dy))
    return ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()


@pytest.fixture(params=["inline, direct dx", "threads, direct dx", "threads, col2im dx"])
def threads(request, monkeypatch):
    """Run each test inline and with the work cut into 3 thread chunks, and through both ways
    the flat kernel computes dx (direct per-phase convolution of dY, or dcols then col2im)."""
    from cnnkit.functional import conv_flat

    if request.param.startswith("threads"):
        monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
        monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
        monkeypatch.setattr(parallel, "MIN_SPLIT_MACS", 0)
    else:
        monkeypatch.setenv("CNNKIT_NUM_THREADS", "1")
    monkeypatch.setattr(conv_flat, "DIRECT_DX_MIN_CHANNELS", 1 if "direct" in request.param else 10**6)
    return request.param


# -- tier 1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_flat_gradcheck(case, rng, threads):
    layer, x = make(case, rng)
    assert gradcheck(layer, x, max_checks=200) < 1e-6  # runs on a float64 deep copy
    layer(x)
    assert layer.last_algorithm == "flat"


# -- tier 2 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_columns", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_flat_matches_naive(case, keep_columns, rng, threads):
    layer, x = make(case, rng)
    args = (layer.stride, layer.padding, layer.dilation, 1)
    w, b = layer.weight.data, layer.bias.data
    workspace = Workspace()
    for _ in range(2):  # the second pass reuses the workspace and scratch buffers
        y, cache = conv2d_forward(x, w, b, *args, algorithm="flat", keep_columns=keep_columns, workspace=workspace)
        np.testing.assert_allclose(y, conv2d_naive(x, w, b, *args), rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        for got, want in zip(conv2d_backward(dy, cache), conv2d_naive_backward(dy, x, w, *args)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# -- tier 3 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_flat_matches_torch(case, dtype, rng, threads):
    layer, x = make(case, rng, dtype)
    for _ in range(2):
        y = layer(x)
        dy = rng.standard_normal(y.shape).astype(dtype)
        layer.zero_grad()
        dx = layer.backward(dy)
        tol = 1e-10 if dtype == np.float64 else 1e-5
        for ours, theirs in zip((y, dx, layer.weight.grad, layer.bias.grad), torch_grads(layer, x, dy)):
            assert ours.dtype == dtype
            np.testing.assert_allclose(ours, theirs, rtol=tol, atol=tol * max(np.abs(theirs).max(), 1))


def test_auto_matches_torch_on_a_resnet_shape_and_batch_of_one(rng):
    for n in (1, 3):
        layer = Conv2d(16, 8, 3, padding=1, bias=False, generator=rng)
        x = rng.standard_normal((n, 16, 10, 9)).astype(np.float32)
        y = layer(x)
        assert layer.last_algorithm == "flat"
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(dy)
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(layer.weight.data.copy()).requires_grad_()
        ty = F.conv2d(tx, tw, None, 1, 1)
        ty.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(layer.weight.grad, tw.grad.numpy(), rtol=1e-4, atol=1e-4)


def test_input_grad_false_skips_dx_and_frozen_weight(rng):
    layer, x = make("3x3 s2 p1", rng)
    layer.backward(np.ones_like(layer(x)), input_grad=False)
    assert layer.weight.grad is not None
    layer.weight.requires_grad = False
    layer.zero_grad()
    dx = layer.backward(np.ones_like(layer(x)))
    assert dx.shape == x.shape and layer.weight.grad is None and layer.bias.grad is not None


def test_shape_change_between_calls_rebuilds_buffers(rng):
    """Same buffer size, different geometry: the zero borders must not be reused."""
    layer = Conv2d(3, 2, 3, padding=1, dtype=np.float64, generator=rng, algorithm="flat")
    for shape in ((2, 3, 4, 8), (2, 3, 8, 4), (4, 3, 4, 4), (2, 3, 4, 8)):
        x = rng.standard_normal(shape)
        args = (layer.stride, layer.padding, layer.dilation, 1)
        np.testing.assert_allclose(layer(x), conv2d_naive(x, layer.weight.data, layer.bias.data, *args), atol=1e-12)


def test_choose_algorithm_rule_and_validation(rng):
    assert choose_algorithm((8, 3, 32, 32), (16, 3, 3, 3)) == "im2col"  # first layer: few channels
    assert choose_algorithm((8, 16, 32, 32), (16, 16, 3, 3)) == "flat"
    assert choose_algorithm((8, 16, 32, 32), (16, 8, 3, 3), groups=2) == "im2col"
    with pytest.raises(ValueError, match="algorithm must be one of"):
        Conv2d(3, 4, 3, algorithm="fft")
    with pytest.raises(ValueError, match="needs groups=1"):
        Conv2d(4, 4, 3, groups=2, algorithm="flat")
    assert "algorithm='im2col'" in repr(Conv2d(3, 4, 3, algorithm="im2col"))


def test_benchmark_mode_picks_and_caches_a_valid_algorithm(rng, monkeypatch):
    from cnnkit.functional import registry

    monkeypatch.setattr(registry, "_benchmark", True)
    monkeypatch.setattr(conv_module.CONV2D, "_timed", {})
    choice = choose_algorithm((2, 8, 6, 6), (4, 8, 3, 3), 1, 1)
    assert choice in ("im2col", "flat")
    assert [k.name for k in conv_module.CONV2D._timed.values()] == [choice]


def test_flat_geometry_grid_and_taps():
    g = flat_geometry((2, 3, 32, 32), (3, 3), 2, 1)
    assert g.output == (16, 16) and g.grid == (17, 17) and len(g.phases) == 4
    assert g.taps[0] == (0, 0) and g.taps[8] == (0, 18)  # tap (2, 2): phase (0, 0), one row + one column on


def test_flat_geometry_stride_one_shares_padding_between_neighbours():
    g = flat_geometry((2, 16, 8, 8), (3, 3), 1, 1)
    assert g.output == (8, 8) and g.grid == (9, 9)  # not 10x10: one zero row/column between neighbours
    assert g.taps[8] == (0, 2 * 9 + 2) and g.tail == 20
    g = flat_geometry((1, 1, 5, 6), (3, 3), 1, 3)
    assert g.output == (9, 10) and g.grid == (9, 10)  # padding wider than the kernel: the output decides


def test_scratch_buffers_are_shared_by_key():
    a = scratch("t", (3, 4), np.float32)
    assert scratch("t", (3, 4), np.float32) is a
    assert scratch("t", (3, 4), np.float64) is not a


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (2, 0), (3, 2)])
def test_to_phases_overwrites_a_dirty_buffer(stride, padding, rng):
    x = rng.standard_normal((2, 3, 7, 9))
    g = flat_geometry(x.shape, (3, 3), stride, padding)
    clean = to_phases(x, g, out=np.zeros((len(g.phases), 3, g.length + g.tail)))
    dirty = to_phases(x, g, out=np.full_like(clean, np.nan))  # a reused scratch buffer's old contents
    np.testing.assert_array_equal(dirty, clean)


def test_scratch_names_share_one_arena():
    clear_scratch()
    big = scratch("arena-test", (8, 100), np.float32)
    small = scratch("arena-test", (3, 7), np.float64)
    assert np.shares_memory(big, small)  # one name: the largest request's memory, reused
    assert scratch_nbytes() >= big.nbytes
    clear_scratch()


@pytest.mark.parametrize("case", ["3x3 s1 p1", "3x3 s2 p1 odd input", "dilation 2", "1x1 s1 p1",
                                  "rectangular everything", "many filters, few positions"])
def test_flat_chunked_gemm_matches_naive(case, rng, threads, monkeypatch):
    """Tiny chunks (7 grid columns), so every product is cut into many chunks over the threads."""
    from cnnkit.functional import flat_gemm

    monkeypatch.setattr(flat_gemm, "chunk_length", lambda *args: 7)
    layer, x = make(case, rng, n=3)
    args = (layer.stride, layer.padding, layer.dilation, 1)
    w, b = layer.weight.data, layer.bias.data
    y, cache = conv2d_forward(x, w, b, *args, algorithm="flat")
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, *args), rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(conv2d_backward(dy, cache), conv2d_naive_backward(dy, x, w, *args)):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)
