"""CrossEntropyLoss and MultiMarginLoss: gradcheck, naive vs fast, PyTorch, stability, errors."""
import numpy as np
import pytest
torch = pytest.importorskip("torch")  # PyTorch is the oracle; without it these tests skip

import cnnkit
from cnnkit.functional.loss import cross_entropy_backward, cross_entropy_forward
from cnnkit.nn.loss import CrossEntropyLoss, MultiMarginLoss
from cnnkit.nn.module import Module
from cnnkit.testing.reference import loss as ref

N, C = 6, 5
REDUCTIONS = ["mean", "sum", "none"]


class LossOfLogits(Module):
    """A loss with fixed labels as a one-input module, so ``gradcheck`` can drive it."""

    def __init__(self, lossf, labels):
        super().__init__()
        self.lossf = lossf
        self.labels = labels

    def forward(self, x):
        return np.asarray(self.lossf(x, self.labels))

    def backward(self, dy, input_grad=True):
        return self.lossf.backward(dy, input_grad=input_grad)


def make_data(rng, dtype=np.float64, scale=2.0):
    logits = (scale * rng.standard_normal((N, C))).astype(dtype)
    labels = rng.integers(0, C, N)
    labels[:2] = [0, C - 1]  # both ends of the label range
    weight = rng.uniform(0.2, 2.0, C)
    return logits, labels, weight


def cross_entropy_pair(weight, label_smoothing, reduction):
    ours = CrossEntropyLoss(weight, reduction=reduction, label_smoothing=label_smoothing)
    theirs = torch.nn.CrossEntropyLoss(weight=None if weight is None else torch.from_numpy(weight),
                                       reduction=reduction, label_smoothing=label_smoothing)
    return ours, theirs


def multi_margin_pair(p, margin, weight, reduction):
    ours = MultiMarginLoss(p, margin, weight, reduction=reduction)
    theirs = torch.nn.MultiMarginLoss(p, margin, None if weight is None else torch.from_numpy(weight),
                                      reduction=reduction)
    return ours, theirs


def compare_with_torch(ours, theirs, logits, labels, dloss, rtol):
    loss = ours(logits, labels)
    dlogits = ours.backward(dloss)
    tx = torch.from_numpy(logits.copy()).requires_grad_()
    if isinstance(theirs.weight, torch.Tensor):
        theirs.weight = theirs.weight.to(tx.dtype)
    tloss = theirs(tx, torch.from_numpy(labels))
    tloss.backward(torch.as_tensor(np.asarray(dloss, logits.dtype)))
    expected = tloss.detach().numpy()
    assert dlogits.dtype == logits.dtype and dlogits.shape == logits.shape
    np.testing.assert_allclose(loss, expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    tgrad = tx.grad.numpy()
    np.testing.assert_allclose(dlogits, tgrad, rtol=rtol, atol=rtol * np.abs(tgrad).max())


CE_CONFIGS = [(w, ls) for w in (False, True) for ls in (0.0, 0.1)]
MM_CONFIGS = [(p, margin, w) for p in (1, 2) for margin in (1.0, 0.5) for w in (False, True)]


# -- tier 1: gradcheck -------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight, label_smoothing", CE_CONFIGS)
def test_cross_entropy_gradcheck(use_weight, label_smoothing, reduction, rng):
    logits, labels, weight = make_data(rng)
    lossf = CrossEntropyLoss(weight if use_weight else None, reduction=reduction, label_smoothing=label_smoothing)
    assert cnnkit.gradcheck(LossOfLogits(lossf, labels), logits) < 1e-7


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p, margin, use_weight", MM_CONFIGS)
def test_multi_margin_gradcheck(p, margin, use_weight, reduction, rng):
    logits, labels, weight = make_data(rng)
    lossf = MultiMarginLoss(p, margin, weight if use_weight else None, reduction=reduction)
    # the hinge is not differentiable where a margin term is exactly 0; random logits stay clear of it
    assert cnnkit.gradcheck(LossOfLogits(lossf, labels), logits) < 1e-6


# -- tier 2: naive vs fast ---------------------------------------------------------------------
@pytest.mark.parametrize("use_weight, label_smoothing", CE_CONFIGS)
def test_cross_entropy_naive_equals_fast(use_weight, label_smoothing, rng):
    logits, labels, weight = make_data(rng)
    weight = weight if use_weight else None
    losses, grads, target_weights = ref.cross_entropy(logits, labels, weight, label_smoothing)

    per_sample = CrossEntropyLoss(weight, reduction="none", label_smoothing=label_smoothing)
    np.testing.assert_allclose(per_sample(logits, labels), losses, rtol=1e-12)
    np.testing.assert_allclose(per_sample.backward(np.ones(N)), grads, rtol=1e-10, atol=1e-15)

    mean = CrossEntropyLoss(weight, label_smoothing=label_smoothing)
    np.testing.assert_allclose(mean(logits, labels), losses.sum() / target_weights.sum(), rtol=1e-12)
    np.testing.assert_allclose(mean.backward(), grads / target_weights.sum(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("p, margin, use_weight", MM_CONFIGS)
def test_multi_margin_naive_equals_fast(p, margin, use_weight, rng):
    logits, labels, weight = make_data(rng)
    logits[2, :] = 0.3  # ties: every margin term of this row is exactly `margin`
    weight = weight if use_weight else None
    losses, grads = ref.multi_margin(logits, labels, p, margin, weight)

    per_sample = MultiMarginLoss(p, margin, weight, reduction="none")
    np.testing.assert_allclose(per_sample(logits, labels), losses, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(per_sample.backward(np.ones(N)), grads, rtol=1e-12, atol=1e-15)

    total = MultiMarginLoss(p, margin, weight, reduction="sum")
    np.testing.assert_allclose(total(logits, labels), losses.sum(), rtol=1e-12)
    np.testing.assert_allclose(total.backward(2.0), 2 * grads, rtol=1e-12, atol=1e-15)


# -- tier 3: PyTorch ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_weight, label_smoothing", CE_CONFIGS)
def test_cross_entropy_matches_torch(use_weight, label_smoothing, reduction, dtype, rtol, rng):
    logits, labels, weight = make_data(rng, dtype)
    ours, theirs = cross_entropy_pair(weight if use_weight else None, label_smoothing, reduction)
    dloss = rng.standard_normal(N) if reduction == "none" else 0.7
    compare_with_torch(ours, theirs, logits, labels, dloss, rtol)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p, margin, use_weight", MM_CONFIGS)
def test_multi_margin_matches_torch(p, margin, use_weight, reduction, dtype, rtol, rng):
    logits, labels, weight = make_data(rng, dtype, scale=0.5)  # small logits: many active margins
    ours, theirs = multi_margin_pair(p, margin, weight if use_weight else None, reduction)
    dloss = rng.standard_normal(N) if reduction == "none" else 1.3
    compare_with_torch(ours, theirs, logits, labels, dloss, rtol)


def test_multi_margin_exact_margin_tie_matches_torch():
    # x[y] - x[j] == margin exactly: the hinge is at its kink; torch's gradient there is 0.
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5]])
    labels = np.array([0, 1])
    ours, theirs = multi_margin_pair(1, 1.0, None, "mean")
    compare_with_torch(ours, theirs, logits, labels, 1.0, 1e-12)
    assert ours(logits, labels) == 0.0
    np.testing.assert_array_equal(ours.backward(), 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_extreme_logits_finite_and_match_torch(label_smoothing, dtype, rng):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]], dtype)
    labels = np.array([0, 0, 2, 1])  # right, badly wrong, badly wrong, uniform
    weight = np.array([0.5, 1.0, 2.0])
    for w in (None, weight):
        ours, theirs = cross_entropy_pair(w, label_smoothing, "mean")
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
            loss = ours(logits, labels)
            dlogits = ours.backward()
        assert np.isfinite(loss) and np.isfinite(dlogits).all()
        assert loss > 1e3  # the wrong samples lose about 2e4
        compare_with_torch(CrossEntropyLoss(w, label_smoothing=label_smoothing), theirs, logits, labels, 1.0, 1e-6)


def test_multi_margin_extreme_logits_match_torch():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, -1e4]], np.float32)
    labels = np.array([0, 0])
    for p in (1, 2):
        ours, theirs = multi_margin_pair(p, 1.0, None, "mean")
        compare_with_torch(ours, theirs, logits, labels, 1.0, 1e-6)


# -- API: return types, dtypes, caching --------------------------------------------------------
def test_loss_returns_float_and_gradient_keeps_dtype(rng):
    logits, labels, weight = make_data(rng, np.float32)
    for lossf in (CrossEntropyLoss(weight, label_smoothing=0.1), MultiMarginLoss(2, weight=weight)):
        loss = lossf(logits, labels)
        assert type(loss) is float
        dlogits = lossf.backward(np.float64(1.0))  # a float64 dloss must not upcast
        assert dlogits.dtype == np.float32
    per_sample = CrossEntropyLoss(reduction="none")(logits, labels)
    assert per_sample.shape == (N,) and per_sample.dtype == np.float32


def test_kernel_returns_0d_array_in_logits_dtype(rng):
    logits, labels, _ = make_data(rng, np.float32)
    loss, cache = cross_entropy_forward(logits, labels)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == np.float32
    assert cross_entropy_backward(1.0, cache).dtype == np.float32


def test_dloss_scales_gradient_and_logits_untouched(rng):
    logits, labels, _ = make_data(rng)
    before = logits.copy()
    lossf = CrossEntropyLoss()
    lossf(logits, labels)
    g1 = lossf.backward()
    lossf(logits, labels)
    g3 = lossf.backward(3.0)
    np.testing.assert_allclose(g3, 3 * g1, rtol=1e-14)
    np.testing.assert_array_equal(logits, before)
    np.testing.assert_allclose(g1.sum(axis=1), 0.0, atol=1e-15)  # softmax minus a distribution


def test_perfect_hinge_has_zero_loss_and_gradient():
    logits = np.array([[5.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    lossf = MultiMarginLoss()
    assert lossf(logits, np.array([0, 2])) == 0.0
    np.testing.assert_array_equal(lossf.backward(), 0.0)


def test_batch_of_one_and_integer_label_types(rng):
    logits = rng.standard_normal((1, 4))
    losses = [CrossEntropyLoss()(logits, np.array([3], dt)) for dt in (np.int64, np.int32, np.uint8)]
    assert losses[0] == losses[1] == losses[2]
    assert CrossEntropyLoss()(logits, [3]) == losses[0]  # a list of ints is fine too


def test_backward_needs_forward_and_no_grad_caches_nothing(rng):
    logits, labels, _ = make_data(rng)
    lossf = CrossEntropyLoss()
    with pytest.raises(RuntimeError, match="without a cached forward"):
        lossf.backward()
    with cnnkit.no_grad():
        lossf(logits, labels)
    with pytest.raises(RuntimeError, match="without a cached forward"):
        lossf.backward()
    lossf(logits, labels)
    assert lossf.backward(input_grad=False) is None


def test_weight_is_a_buffer_and_follows_dtype():
    lossf = CrossEntropyLoss(np.array([1.0, 2.0, 3.0]))
    assert list(lossf.state_dict()) == ["weight"]
    lossf.float()
    assert lossf.weight.dtype == np.float32
    assert list(CrossEntropyLoss().state_dict()) == []
    assert repr(MultiMarginLoss(2, 0.5)) == "MultiMarginLoss(p=2, margin=0.5, reduction='mean')"


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [CrossEntropyLoss, MultiMarginLoss])
def test_clear_errors(make, rng):
    logits = rng.standard_normal((3, 10))
    lossf = make()
    with pytest.raises(ValueError, match=r"label 10 out of range for 10 classes"):
        lossf(logits, np.array([0, 10, 2]))
    with pytest.raises(ValueError, match=r"label -1 out of range for 10 classes"):
        lossf(logits, np.array([0, -1, 2]))
    with pytest.raises(TypeError, match="integer class labels, got dtype float64"):
        lossf(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class labels, got dtype bool"):
        lossf(logits, np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\) .* got labels of shape \(2,\)"):
        lossf(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"2-D logits \(N, C\), got shape \(3, 10, 1\)"):
        lossf(logits[..., None], np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="floating-point logits"):
        lossf(np.zeros((3, 10), np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"weight must have shape \(10,\)"):
        make(weight=np.ones(9))(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        make(reduction="avg")


def test_constructor_and_dloss_errors(rng):
    with pytest.raises(ValueError, match="label_smoothing must be a number in \\[0, 1\\], got 1.5"):
        CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="only p == 1 and p == 2 are supported, got p=3"):
        MultiMarginLoss(p=3)
    lossf = CrossEntropyLoss(reduction="none")
    lossf(rng.standard_normal((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"backward needs dloss of shape \(3,\), got shape \(\)"):
        lossf.backward()
    lossf = MultiMarginLoss()
    lossf(rng.standard_normal((3, 4)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="dloss must be a scalar"):
        lossf.backward(np.ones(3))
