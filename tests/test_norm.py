import copy

import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
from cnnkit.functional import norm as fast
from cnnkit.nn.normalization import BatchNorm1d, BatchNorm2d, LocalResponseNorm
from cnnkit.testing.reference import norm as naive

TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}
# (rtol, atol) for comparisons with PyTorch per dtype
TOL = {np.float32: (1e-5, 1e-5), np.float64: (1e-10, 1e-12)}

BN_CASES = [
    (BatchNorm1d, torch.nn.BatchNorm1d, (6, 4)),
    (BatchNorm1d, torch.nn.BatchNorm1d, (5, 3, 7)),
    (BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6)),
]
BN_IDS = ["bn1d-NC", "bn1d-NCL", "bn2d-NCHW"]


def close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def to_numpy(t):
    return t.detach().numpy()


def make_pair(cls, torch_cls, num_features, dtype, rng, **kwargs):
    """A cnnkit batch-norm layer and a torch one with the same random weight, bias and running stats."""
    layer = cls(num_features, dtype=dtype, **kwargs)
    ref = torch_cls(num_features, dtype=TORCH_DTYPE[dtype], **kwargs)
    if layer.affine:
        layer.weight.data[...] = rng.uniform(0.5, 2.0, num_features)
        layer.bias.data[...] = rng.standard_normal(num_features)
    if layer.track_running_stats:
        layer.running_mean[...] = rng.standard_normal(num_features)
        layer.running_var[...] = rng.uniform(0.5, 2.0, num_features)
    with torch.no_grad():
        for name, value in layer.state_dict().items():
            getattr(ref, name).copy_(torch.from_numpy(np.asarray(value)))
    return layer, ref


def forward_backward_torch(ref, x, dy):
    tx = torch.from_numpy(x).requires_grad_()
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy))
    return to_numpy(ty), tx.grad.numpy()


def random_input(rng, shape, dtype):
    # An offset mean and a non-unit spread, so normalisation has something to do.
    return (3.0 + 2.0 * rng.standard_normal(shape)).astype(dtype)


# -- tier 1: numerical gradient checks ------------------------------------------------------


@pytest.mark.parametrize("cls, torch_cls, shape", BN_CASES, ids=BN_IDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_gradcheck(cls, torch_cls, shape, training, rng):
    layer, _ = make_pair(cls, torch_cls, shape[1], np.float64, rng)
    layer.train(training)
    assert cnnkit.gradcheck(layer, random_input(rng, shape, np.float64), tol=1e-6) < 1e-6


def test_batchnorm_gradcheck_without_affine_and_without_running_stats():
    # Not the `rng` fixture: gradcheck draws its dy from seed 0 too, and dy equal to the
    # standardised input is exactly the direction batch norm's input gradient projects away.
    x = random_input(np.random.default_rng(1), (3, 2, 4, 3), np.float64)
    assert cnnkit.gradcheck(BatchNorm2d(2, affine=False), x) < 1e-6
    assert cnnkit.gradcheck(BatchNorm2d(2, track_running_stats=False).eval(), x) < 1e-6


@pytest.mark.parametrize("size", [1, 3, 4, 5, 7])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 6, 5)], ids=["NCHW", "NCL"])
def test_lrn_gradcheck(size, shape, rng):
    layer = LocalResponseNorm(size, alpha=0.8, beta=0.6, k=1.5)
    assert cnnkit.gradcheck(layer, rng.standard_normal(shape)) < 1e-6


# -- tier 2: fast kernels equal the naive reference ------------------------------------------


@pytest.mark.parametrize("shape", [(7, 3), (4, 3, 5), (3, 2, 4, 5), (1, 2, 3, 3)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_fast_equals_naive(shape, training, affine, rng):
    c = shape[1]
    x = random_input(rng, shape, np.float64)
    dy = rng.standard_normal(shape)
    weight = rng.uniform(0.5, 2.0, c) if affine else None
    bias = rng.standard_normal(c) if affine else None
    stats = (rng.standard_normal(c), rng.uniform(0.5, 2.0, c))
    fast_stats = tuple(s.copy() for s in stats)
    naive_stats = tuple(s.copy() for s in stats)

    y, cache = fast.batch_norm_forward(x, weight, bias, *fast_stats, training, 0.3, 1e-3)
    y_ref, cache_ref = naive.batch_norm_forward(x, weight, bias, *naive_stats, training, 0.3, 1e-3)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(fast_stats, naive_stats):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    if training:
        assert not np.allclose(fast_stats[0], stats[0])  # the update happened

    dx, dweight, dbias = fast.batch_norm_backward(dy, cache)
    dx_ref, dweight_ref, dbias_ref = naive.batch_norm_backward(dy, cache_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dweight, dweight_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbias, dbias_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 5, 4), (1, 4, 2, 2, 2)], ids=["NCHW", "NCL", "NCDHW"])
def test_lrn_fast_equals_naive(size, shape, rng):
    x = rng.standard_normal(shape)
    y, _ = fast.local_response_norm_forward(x, size, alpha=0.7, beta=0.9, k=0.5)
    np.testing.assert_allclose(y, naive.local_response_norm_forward(x, size, 0.7, 0.9, 0.5), rtol=1e-13)


def test_need_flags_skip_gradients(rng):
    x = random_input(rng, (4, 3, 2, 2), np.float64)
    weight, bias = np.ones(3), np.zeros(3)
    _, cache = fast.batch_norm_forward(x, weight, bias, None, None, True)
    dx, dweight, dbias = fast.batch_norm_backward(np.ones_like(x), cache, need_dx=False, need_dweight=False,
                                                  need_dbias=False)
    assert dx is None and dweight is None and dbias is None
    _, cache = fast.local_response_norm_forward(x, 3)
    assert fast.local_response_norm_backward(np.ones_like(x), cache, need_dx=False) is None


# -- tier 3: PyTorch -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, torch_cls, shape", BN_CASES, ids=BN_IDS)
def test_batchnorm_training_matches_torch_over_several_steps(cls, torch_cls, shape, dtype, rng):
    layer, ref = make_pair(cls, torch_cls, shape[1], dtype, rng)
    for step in range(3):
        x = random_input(rng, shape, dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y = layer(x)
        dx = layer.backward(dy)
        ty, tdx = forward_backward_torch(ref, x, dy)
        assert y.dtype == dtype and dx.dtype == dtype
        close(y, ty, dtype)
        close(dx, tdx, dtype)
        close(layer.weight.grad, to_numpy(ref.weight.grad), dtype, scale=10)
        close(layer.bias.grad, to_numpy(ref.bias.grad), dtype, scale=10)
        close(layer.running_mean, to_numpy(ref.running_mean), dtype)
        close(layer.running_var, to_numpy(ref.running_var), dtype)
        assert int(layer.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1
    assert layer.running_mean.dtype == dtype and layer.num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, torch_cls, shape", BN_CASES, ids=BN_IDS)
def test_batchnorm_eval_matches_torch_and_keeps_running_stats(cls, torch_cls, shape, dtype, rng):
    layer, ref = make_pair(cls, torch_cls, shape[1], dtype, rng)
    layer.eval(), ref.eval()
    before = copy.deepcopy(layer.state_dict())
    x = random_input(rng, shape, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = layer(x)
    dx = layer.backward(dy)  # saliency through an eval-mode net
    ty, tdx = forward_backward_torch(ref, x, dy)
    close(y, ty, dtype)
    close(dx, tdx, dtype)
    close(layer.weight.grad, to_numpy(ref.weight.grad), dtype, scale=10)
    close(layer.bias.grad, to_numpy(ref.bias.grad), dtype, scale=10)
    for key, value in layer.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_momentum_none_is_cumulative_average_like_torch(rng):
    layer, ref = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, 3, np.float64, rng, momentum=None)
    inputs = [random_input(rng, (4, 3, 2, 3), np.float64) for _ in range(4)]
    for x in inputs:
        layer(x)
        ref(torch.from_numpy(x))
    close(layer.running_mean, to_numpy(ref.running_mean), np.float64)
    close(layer.running_var, to_numpy(ref.running_var), np.float64)
    # the first batch has weight 1/1, so the initial buffers are forgotten: a plain average
    means = np.mean([x.mean(axis=(0, 2, 3)) for x in inputs], axis=0)
    np.testing.assert_allclose(layer.running_mean, means, rtol=1e-12)
    assert layer.num_batches_tracked == 4


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_track_running_stats_false_always_uses_batch_stats(training, rng):
    layer, ref = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, 3, np.float64, rng, track_running_stats=False)
    layer.train(training), ref.train(training)
    x = random_input(rng, (3, 3, 4, 2), np.float64)
    dy = rng.standard_normal(x.shape)
    y, dx = layer(x), None
    dx = layer.backward(dy)
    ty, tdx = forward_backward_torch(ref, x, dy)
    close(y, ty, np.float64)
    close(dx, tdx, np.float64)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), layer.bias.data, atol=1e-12)  # batch stats
    assert list(layer.state_dict()) == list(ref.state_dict()) == ["weight", "bias"]
    assert layer.running_mean is None and layer.num_batches_tracked is None


@pytest.mark.parametrize("cls, torch_cls, shape", BN_CASES, ids=BN_IDS)
def test_affine_false_matches_torch(cls, torch_cls, shape, rng):
    layer, ref = make_pair(cls, torch_cls, shape[1], np.float64, rng, affine=False)
    assert list(layer.parameters()) == [] and layer.weight is None and layer.bias is None
    for _ in range(2):
        x = random_input(rng, shape, np.float64)
        dy = rng.standard_normal(shape)
        y = layer(x)
        dx = layer.backward(dy)
        ty, tdx = forward_backward_torch(ref, x, dy)
        close(y, ty, np.float64)
        close(dx, tdx, np.float64)
    close(layer.running_var, to_numpy(ref.running_var), np.float64)
    assert list(layer.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("cls, torch_cls", [(BatchNorm1d, torch.nn.BatchNorm1d), (BatchNorm2d, torch.nn.BatchNorm2d)])
def test_state_dict_keys_and_dtypes_equal_torch(cls, torch_cls):
    ours, theirs = cls(4).state_dict(), torch_cls(4).state_dict()
    assert list(ours) == list(theirs) == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    for key in ours:
        assert str(ours[key].dtype) == str(theirs[key].dtype).replace("torch.", "")
        assert tuple(ours[key].shape) == tuple(theirs[key].shape)
        np.testing.assert_array_equal(ours[key], theirs[key].numpy())


def test_load_torch_state_dict_then_eval_outputs_match(rng):
    ref = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 2.0)
        ref.bias.normal_()
    for _ in range(3):  # trained running statistics
        ref(torch.from_numpy(random_input(rng, (4, 3, 5, 5), np.float32)))
    ref.eval()
    layer = BatchNorm2d(3).eval()
    layer.load_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
    assert layer.num_batches_tracked == 3 and layer.num_batches_tracked.dtype == np.int64
    x = random_input(rng, (2, 3, 4, 6), np.float32)
    close(layer(x), to_numpy(ref(torch.from_numpy(x))), np.float32)


def test_to_double_casts_floating_buffers_only(rng):
    layer = BatchNorm1d(3).double()
    assert layer.weight.dtype == layer.running_var.dtype == np.float64
    assert layer.num_batches_tracked.dtype == np.int64
    layer(rng.standard_normal((4, 3)))
    assert layer.num_batches_tracked == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(2, 6, 3, 4), (3, 5, 7)], ids=["NCHW", "NCL"])
def test_lrn_matches_torch(size, shape, dtype, rng):
    params = dict(alpha=0.5, beta=0.8, k=2.0)
    layer = LocalResponseNorm(size, **params)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y = layer(x)
    dx = layer.backward(dy)
    ty, tdx = forward_backward_torch(torch.nn.LocalResponseNorm(size, **params), x, dy)
    assert y.dtype == dx.dtype == dtype
    close(y, ty, dtype)
    close(dx, tdx, dtype)


def test_lrn_default_parameters_match_torch(rng):
    x = 10 * rng.standard_normal((2, 7, 3, 3))
    np.testing.assert_allclose(LocalResponseNorm(5)(x), to_numpy(torch.nn.LocalResponseNorm(5)(torch.from_numpy(x))),
                               rtol=1e-12)


# -- batch of one, flags, shapes, repr ------------------------------------------------------


def test_batch_of_one(rng):
    layer, ref = make_pair(BatchNorm1d, torch.nn.BatchNorm1d, 3, np.float32, rng)
    layer.eval(), ref.eval()
    x = random_input(rng, (1, 3), np.float32)
    close(layer(x), to_numpy(ref(torch.from_numpy(x))), np.float32)  # eval: fine

    layer, ref = make_pair(BatchNorm2d, torch.nn.BatchNorm2d, 3, np.float32, rng)
    x = random_input(rng, (1, 3, 2, 3), np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, dx = layer(x), None
    dx = layer.backward(dy)
    ty, tdx = forward_backward_torch(ref, x, dy)  # train with H*W > 1: fine
    close(y, ty, np.float32)
    close(dx, tdx, np.float32)
    close(layer.running_var, to_numpy(ref.running_var), np.float32)


@pytest.mark.parametrize("layer, shape", [
    (BatchNorm1d(3), (1, 3)),
    (BatchNorm1d(3), (1, 3, 1)),
    (BatchNorm2d(3), (1, 3, 1, 1)),
    (BatchNorm2d(3, track_running_stats=False).eval(), (1, 3, 1, 1)),
])
def test_single_value_per_channel_in_training_is_a_clear_error(layer, shape):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        layer(np.ones(shape, np.float32))
    if layer.track_running_stats:
        assert layer.num_batches_tracked == 0  # the rejected batch left no trace


def test_input_grad_false_and_frozen_parameters(rng):
    layer = BatchNorm2d(2)
    x = random_input(rng, (3, 2, 2, 2), np.float32)
    layer(x)
    assert layer.backward(np.ones_like(x), input_grad=False) is None
    assert layer.weight.grad is not None and layer.bias.grad is not None
    layer.zero_grad()
    layer.weight.requires_grad = False
    layer(x)
    dx = layer.backward(rng.standard_normal(x.shape).astype(np.float32))
    assert dx.shape == x.shape and layer.weight.grad is None and layer.bias.grad is not None


def test_gradients_accumulate(rng):
    layer = BatchNorm1d(3)
    x = random_input(rng, (5, 3), np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    layer(x), layer.backward(dy)
    first = layer.weight.grad.copy()
    layer(x), layer.backward(dy)
    np.testing.assert_allclose(layer.weight.grad, 2 * first, rtol=1e-6)


def test_output_shape_and_repr():
    assert BatchNorm1d(4).output_shape((4,)) == (4,)
    assert BatchNorm1d(4).output_shape((4, 9)) == (4, 9)
    assert BatchNorm2d(4).output_shape((4, 5, 6)) == (4, 5, 6)
    assert LocalResponseNorm(3).output_shape((6, 5, 5)) == (6, 5, 5)
    for bad_layer, bad_shape in [(BatchNorm1d(4), (3,)), (BatchNorm2d(4), (4, 5)), (BatchNorm2d(4), (3, 5, 5)),
                                 (LocalResponseNorm(3), (6,))]:
        with pytest.raises(ValueError, match=r"expects one sample of shape"):
            bad_layer.output_shape(bad_shape)
    for ours, theirs in [(BatchNorm2d(4), torch.nn.BatchNorm2d(4)),
                         (BatchNorm1d(3, eps=1e-3, momentum=None, affine=False, track_running_stats=False),
                          torch.nn.BatchNorm1d(3, eps=1e-3, momentum=None, affine=False, track_running_stats=False))]:
        assert repr(ours) == repr(theirs).replace(" bias=True,", "").replace(" bias=False,", "")
    assert repr(LocalResponseNorm(5, k=2.0)) == repr(torch.nn.LocalResponseNorm(5, k=2.0))


@pytest.mark.parametrize("layer, x, error, match", [
    (BatchNorm1d(3), np.ones((2, 3, 4, 4), np.float32), ValueError, r"2-D \(N, C\) or 3-D \(N, C, L\).*\(2, 3, 4, 4\)"),
    (BatchNorm2d(3), np.ones((2, 3, 4), np.float32), ValueError, r"4-D \(N, C, H, W\).*\(2, 3, 4\)"),
    (BatchNorm2d(3), np.ones((2, 4, 4, 4), np.float32), ValueError, r"expects 3 input channels, got 4"),
    (BatchNorm1d(3), np.ones((2, 5), np.float32), ValueError, r"expects 3 input features, got 5"),
    (BatchNorm1d(3), np.ones((2, 3), np.float64), TypeError, r"float32 parameters but got a float64"),
    (BatchNorm1d(3), np.ones((2, 3), np.int64), TypeError, r"floating-point input"),
    (BatchNorm1d(3), [[1.0, 2.0, 3.0]], TypeError, r"expects an array"),
    (LocalResponseNorm(3), np.ones((2, 3), np.float32), ValueError, r"at least 3 axes.*\(2, 3\)"),
])
def test_bad_inputs_raise_clear_errors(layer, x, error, match):
    with pytest.raises(error, match=match):
        layer(x)


@pytest.mark.parametrize("build, match", [
    (lambda: BatchNorm2d(0), r"num_features must be a positive int, got 0"),
    (lambda: BatchNorm2d(3.0), r"num_features must be a positive int, got 3.0"),
    (lambda: BatchNorm2d(3, eps=0), r"eps must be a positive number, got 0"),
    (lambda: BatchNorm1d(3, momentum=1.5), r"momentum must be a number in \[0, 1\] or None.*1.5"),
    (lambda: BatchNorm1d(3, dtype=np.int32), r"dtype must be a floating type, got int32"),
    (lambda: LocalResponseNorm(0), r"size must be a positive int, got 0"),
    (lambda: LocalResponseNorm(3, alpha="big"), r"alpha must be a number, got 'big'"),
])
def test_bad_arguments_raise_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_float32_stays_float32_without_affine_or_buffers(rng):
    layer = BatchNorm2d(2, affine=False, track_running_stats=False)
    x = random_input(rng, (2, 2, 3, 3), np.float32)
    y = layer(x)
    assert y.dtype == np.float32 and layer.backward(np.ones_like(y)).dtype == np.float32
    assert layer(x.astype(np.float64)).dtype == np.float64  # no arrays of its own: any float works


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_on_threads_matches_torch(training, rng, monkeypatch):
    """BatchNorm's passes run over slices of the batch on threads; forced on (3 threads for 5
    images, tiny jobs), forward, running statistics and every gradient still match PyTorch."""
    from cnnkit.functional import parallel
    from cnnkit.functional.norm import batch_norm_backward, batch_norm_forward

    monkeypatch.setenv("CNNKIT_NUM_THREADS", "3")
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)
    x = rng.standard_normal((5, 4, 3, 6))
    dy = rng.standard_normal((5, 4, 3, 6))
    weight, bias = rng.standard_normal(4), rng.standard_normal(4)
    running_mean, running_var = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    t_mean, t_var = torch.from_numpy(running_mean.copy()), torch.from_numpy(running_var.copy())
    y, cache = batch_norm_forward(x, weight, bias, running_mean, running_var, training)
    dx, dweight, dbias = batch_norm_backward(dy, cache)

    tx, tw, tb = (torch.from_numpy(a.copy()).requires_grad_() for a in (x, weight, bias))
    ty = torch.nn.functional.batch_norm(tx, t_mean, t_var, tw, tb, training=training)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(running_mean, t_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(running_var, t_var.numpy(), rtol=1e-12)
    for ours, theirs in ((dx, tx), (dweight, tw), (dbias, tb)):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-9, atol=1e-11)
