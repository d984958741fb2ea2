"""oneDNN batch normalisation and LRN against the NumPy reference (float64) and PyTorch: forward,
every gradient, the running statistics (momentum, unbiased variance), eval mode, both layouts."""
import numpy as np
import pytest

from cnnkit.functional import norm as reference
from onednn_helpers import assert_close, in_layout, requires_onednn

pytestmark = requires_onednn

SHAPES = {"4-D": (4, 3, 5, 6), "16 channels": (2, 16, 7, 7), "batch of one": (1, 8, 3, 5), "2-D": (8, 5)}


def f32(a):
    return None if a is None else np.asarray(a, dtype=np.float32)


def layouts(shape):
    return ["nchw", "channels_last"] if len(shape) == 4 else ["nchw"]


def cases():
    for name, shape in SHAPES.items():
        for layout in layouts(shape):
            yield name, layout


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name, layout", list(cases()))
def test_batch_norm_matches_reference(name, layout, training, affine, rng):
    from cnnkit.functional.onednn import norm

    shape = SHAPES[name]
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 1
    weight = rng.standard_normal(c) if affine else None
    bias = rng.standard_normal(c) if affine else None
    mean0, var0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    mean_ref, var_ref = mean0.copy(), var0.copy()
    y_ref, cache_ref = reference.batch_norm_forward(x, weight, bias, mean_ref, var_ref, training, 0.1, 1e-5)
    dy = rng.standard_normal(shape)
    grads_ref = reference.batch_norm_backward(dy, cache_ref)

    mean, var = f32(mean0), f32(var0)
    args = (in_layout(f32(x), layout) if len(shape) == 4 else f32(x), f32(weight), f32(bias), mean, var, training)
    assert norm.batch_norm_decline(*args) is None
    y, cache = norm.batch_norm_forward(*args, momentum=0.1, eps=1e-5)
    assert_close(y, y_ref, rtol=1e-5, name="y")
    assert_close(mean, mean_ref, name="running_mean")  # updated in place, with momentum
    assert_close(var, var_ref, name="running_var")  # ... and the unbiased batch variance
    grads = norm.batch_norm_backward(in_layout(f32(dy), layout) if len(shape) == 4 else f32(dy), cache)
    for got, want, what in zip(grads, grads_ref, ("dx", "dweight", "dbias")):
        assert_close(got, want, rtol=1e-4, name=what)


def test_batch_norm_gradients_on_request_and_torch(rng):
    torch = pytest.importorskip("torch")
    from cnnkit.functional.onednn import norm

    x = f32(rng.standard_normal((6, 4, 5, 5)))
    weight, bias = f32(rng.standard_normal(4)), f32(rng.standard_normal(4))
    mean, var = np.zeros(4, np.float32), np.ones(4, np.float32)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    tw, tb = torch.from_numpy(weight.copy()).requires_grad_(), torch.from_numpy(bias.copy()).requires_grad_()
    tmean, tvar = torch.zeros(4), torch.ones(4)
    ty = torch.nn.functional.batch_norm(tx, tmean, tvar, tw, tb, training=True, momentum=0.1, eps=1e-5)
    dy = f32(rng.standard_normal(x.shape))
    ty.backward(torch.from_numpy(dy))
    y, cache = norm.batch_norm_forward(x, weight, bias, mean, var, True, 0.1, 1e-5)
    assert_close(y, ty.detach().numpy(), rtol=1e-5)
    assert_close(mean, tmean.numpy())
    assert_close(var, tvar.numpy())
    dx, dw, db = norm.batch_norm_backward(dy, cache)
    for got, want in ((dx, tx.grad), (dw, tw.grad), (db, tb.grad)):
        assert_close(got, want.numpy(), rtol=1e-4)
    dx, dw, db = norm.batch_norm_backward(dy, cache, need_dx=True, need_dweight=False, need_dbias=False)
    assert dw is None and db is None
    assert_close(dx, tx.grad.numpy(), rtol=1e-4)


def test_batch_norm_needs_two_values_per_channel():
    from cnnkit.functional.onednn import norm

    with pytest.raises(ValueError, match="more than 1 value per channel"):
        norm.batch_norm_forward(np.ones((1, 3, 1, 1), np.float32), None, None, None, None, True)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("size, channels", [(3, 7), (5, 16), (5, 3), (3, 1), (9, 12)])
def test_lrn_matches_reference(size, channels, layout, rng):
    from cnnkit.functional.onednn import norm

    x = rng.standard_normal((2, channels, 4, 5))
    y_ref, cache_ref = reference.local_response_norm_forward(x, size, 1e-2, 0.75, 2.0)
    dy = rng.standard_normal(x.shape)
    assert norm.local_response_norm_decline(f32(x), size, 1e-2, 0.75, 2.0) is None
    y, cache = norm.local_response_norm_forward(in_layout(f32(x), layout), size, 1e-2, 0.75, 2.0)
    assert_close(y, y_ref)
    assert_close(norm.local_response_norm_backward(in_layout(f32(dy), layout), cache),
                 reference.local_response_norm_backward(dy, cache_ref))
    assert norm.local_response_norm_backward(f32(dy), cache, need_dx=False) is None


def test_lrn_matches_torch_alexnet_settings(rng):
    torch = pytest.importorskip("torch")
    from cnnkit.functional.onednn import norm

    x = f32(rng.standard_normal((2, 16, 6, 6)) * 3)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = torch.nn.functional.local_response_norm(tx, 5, 1e-4, 0.75, 2.0)
    dy = f32(rng.standard_normal(x.shape))
    ty.backward(torch.from_numpy(dy))
    y, cache = norm.local_response_norm_forward(x, 5, 1e-4, 0.75, 2.0)
    assert_close(y, ty.detach().numpy())
    assert_close(norm.local_response_norm_backward(dy, cache), tx.grad.numpy())


def test_lrn_declines_even_and_unit_sizes(rng):
    from cnnkit.functional.onednn import norm

    x = f32(rng.standard_normal((1, 4, 3, 3)))
    assert "even" in norm.local_response_norm_decline(x, 4)
    assert "size 1" in norm.local_response_norm_decline(x, 1)
    assert "4-D" in norm.local_response_norm_decline(f32(rng.standard_normal((1, 4, 3))), 3)
