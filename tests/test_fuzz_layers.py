"""Fuzz over layer configurations (issue 17): constructor -> forward -> backward, against PyTorch.

For every layer, a fixed-seed generator draws configurations and inputs, most of them plausible
(odd kernels and strides, padding up to the limit, dilation, groups, ceil mode, batches of 0 to
3, 1x1 to 9x9 images) and some with one value a user could get wrong (0, negative, a float or a
string where an int goes, sizes of 10**9 and more, a dim out of range, the wrong number of
channels, an integer input). The rules:

* a configuration with a wrong value: cnnkit raises ``ValueError``/``TypeError`` whose message
  names the value (PyTorch is not asked: some of these would make it allocate terabytes);
* otherwise, where PyTorch raises, cnnkit raises ``ValueError``/``TypeError`` too (one line);
* where cnnkit refuses on purpose (geometry that drops real input, DESIGN principle 4; 'same'
  padding that would need to be asymmetric) the configuration runs again with the opt-out,
  ``check_geometry=False``, or is skipped;
* where both run: the same forward, input gradient, parameter gradients and running statistics
  (float64, the same weights).
"""
from __future__ import annotations

import numpy as np
import pytest

import cnnkit.nn as nn

torch = pytest.importorskip("torch")

SEED = 17
VALID_CASES = 48  # per layer
INVALID_CASES = 12  # per layer


@pytest.fixture(autouse=True)
def float64_torch():
    """float64 PyTorch on one thread (its thread pool costs 10 ms per tiny op on a busy machine)."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


class Case:
    """One configuration: ``ours(**kwargs)`` / ``theirs(**kwargs)`` on an input of ``shape``."""

    def __init__(self, kwargs, shape, *, bad=None, train=True, extra=None, positive=False, dtype=np.float64):
        self.kwargs, self.shape, self.bad, self.train = kwargs, shape, bad, train
        self.extra = extra or {}  # cnnkit-only keyword arguments (dtype, algorithm, ...)
        self.positive, self.dtype = positive, np.dtype(dtype)

    def __repr__(self):
        return f"kwargs={self.kwargs} extra={self.extra} input={self.shape} train={self.train} bad={self.bad!r}"


def _ints(rng, low, high, size=2):
    return tuple(int(v) for v in rng.integers(low, high + 1, size))


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


# -- configuration generators, one per layer: (rng, valid) -> Case ---------------------------------
def conv2d(rng, valid):
    groups = _pick(rng, [1, 1, 2])
    cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    kw = {"in_channels": cin, "out_channels": cout, "kernel_size": _ints(rng, 1, 4), "stride": _ints(rng, 1, 3),
          "padding": _pick(rng, [0, 1, 2, (0, 1), (2, 1), "valid", "same"]), "dilation": _ints(rng, 1, 2),
          "groups": groups, "bias": bool(rng.integers(2))}
    if kw["padding"] == "same":
        kw["stride"] = 1
    extra = {"dtype": np.float64, "algorithm": _pick(rng, ["im2col", "flat", "auto"] if groups == 1 else ["im2col"])}
    shape = (int(rng.integers(0, 4)), cin, *_ints(rng, 1, 9))
    if valid:
        return Case(kw, shape, extra=extra)
    if kw["padding"] == "same":  # its own refusals (even kernels) would come first
        kw["padding"] = 1
    name, bad = _pick(rng, [("in_channels", -3), ("in_channels", 2.5), ("out_channels", 10**12),
                            ("kernel_size", -2), ("kernel_size", "3"), ("stride", 0), ("padding", -1),
                            ("padding", "full"), ("dilation", 0), ("groups", 5), ("channels", cin + 1),
                            ("dtype", "int64"), ("ndim", 3)])
    return _inject(kw, shape, extra, name, bad, channel_axis=1)


def linear(rng, valid):
    kw = {"in_features": int(rng.integers(1, 7)), "out_features": int(rng.integers(1, 7)),
          "bias": bool(rng.integers(2))}
    shape = (int(rng.integers(0, 4)), kw["in_features"])
    extra = {"dtype": np.float64}
    if valid:
        return Case(kw, shape, extra=extra)
    name, bad = _pick(rng, [("in_features", 0), ("in_features", -1), ("out_features", 2.5), ("in_features", "3"),
                            ("out_features", 10**12), ("channels", kw["in_features"] + 2), ("ndim", 4)])
    return _inject(kw, shape, extra, name, bad, channel_axis=1)


def batch_norm(dims):
    def generate(rng, valid):
        kw = {"num_features": int(rng.integers(1, 5)), "eps": _pick(rng, [1e-5, 1e-3, 0.1]),
              "momentum": _pick(rng, [0.1, 0.5, None, 0.0, 1.0]), "affine": bool(rng.integers(2)),
              "track_running_stats": bool(rng.integers(4) > 0)}
        trailing = _ints(rng, 1, 4, dims - 2)
        shape = (int(rng.integers(0, 4)), kw["num_features"], *trailing)
        extra = {"dtype": np.float64}
        train = bool(rng.integers(2))
        if valid:
            return Case(kw, shape, extra=extra, train=train)
        name, bad = _pick(rng, [("num_features", 0), ("num_features", -2), ("num_features", 2.5),
                                ("num_features", 10**12), ("eps", -1.0), ("momentum", 1.5), ("momentum", "fast"),
                                ("channels", kw["num_features"] + 3), ("dtype", "int32")])
        return _inject(kw, shape, extra, name, bad, channel_axis=1, train=train)

    return generate


def _window(rng):
    kernel = _ints(rng, 1, 4)
    return kernel, _pick(rng, [None, _ints(rng, 1, 3), 1, 2]), tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)


def max_pool(rng, valid):
    kernel, stride, padding = _window(rng)
    kw = {"kernel_size": kernel, "stride": stride, "padding": padding, "dilation": _ints(rng, 1, 2),
          "ceil_mode": bool(rng.integers(2))}
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 4)), *_ints(rng, 1, 9))
    if valid:
        return Case(kw, shape)
    name, bad = _pick(rng, [("kernel_size", 0), ("kernel_size", -1), ("stride", 0), ("padding", -1),
                            ("padding", 7), ("dilation", 0), ("kernel_size", 2.5), ("dtype", "int64"), ("ndim", 2)])
    return _inject(kw, shape, {}, name, bad)


def avg_pool(rng, valid):
    kernel, stride, padding = _window(rng)
    kw = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": bool(rng.integers(2)),
          "count_include_pad": bool(rng.integers(2)), "divisor_override": _pick(rng, [None, None, 1, 3])}
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 4)), *_ints(rng, 1, 9))
    if valid:
        return Case(kw, shape)
    name, bad = _pick(rng, [("kernel_size", 0), ("stride", -2), ("padding", 9), ("divisor_override", 0),
                            ("divisor_override", "2"), ("ndim", 5)])
    return _inject(kw, shape, {}, name, bad)


def lp_pool(rng, valid):
    kw = {"norm_type": _pick(rng, [1, 2, 2.0]), "kernel_size": _ints(rng, 1, 3),
          "stride": _pick(rng, [None, _ints(rng, 1, 2)]), "ceil_mode": bool(rng.integers(2))}
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 4)), *_ints(rng, 1, 8))
    if valid:
        return Case(kw, shape, positive=True)  # power sums away from 0 (LPPool's NaN is another issue's)
    name, bad = _pick(rng, [("norm_type", 0), ("norm_type", -1), ("norm_type", "2"), ("kernel_size", 0),
                            ("stride", 0)])
    return _inject(kw, shape, {}, name, bad, positive=True)


def adaptive_avg_pool(rng, valid):
    size = _pick(rng, [int(rng.integers(1, 9)), _ints(rng, 1, 8), (None, int(rng.integers(1, 6))),
                       (int(rng.integers(1, 6)), None)])
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 4)), *_ints(rng, 1, 9))
    if valid:
        return Case({"output_size": size}, shape)
    name, bad = _pick(rng, [("output_size", 0), ("output_size", -3), ("output_size", 10**9),
                            ("output_size", (2,)), ("output_size", "3"), ("output_size", (4, 10**10)),
                            ("ndim", 3)])
    return _inject({"output_size": size}, shape, {}, name, bad)


def local_response_norm(rng, valid):
    kw = {"size": int(rng.integers(1, 7)), "alpha": _pick(rng, [1e-4, 0.01, 1.0]), "beta": _pick(rng, [0.75, 0.5, 2.0]),
          "k": _pick(rng, [1.0, 2.0])}
    shape = (int(rng.integers(0, 3)), int(rng.integers(1, 7)), *_ints(rng, 1, 5))
    if valid:
        return Case(kw, shape)
    name, bad = _pick(rng, [("size", 0), ("size", -1), ("size", 2.5), ("alpha", "a"), ("ndim", 2)])
    return _inject(kw, shape, {}, name, bad)


def elementwise(cls_name, make_kwargs=lambda rng: {}, invalid=(("dtype", "int64"),)):
    def generate(rng, valid):
        kw = make_kwargs(rng)
        shape = _pick(rng, [(int(rng.integers(0, 4)), int(rng.integers(1, 6))),
                            (int(rng.integers(0, 3)), int(rng.integers(1, 4)), *_ints(rng, 1, 4))])
        if valid or not invalid:
            return Case(kw, shape, train=bool(rng.integers(2)))
        name, bad = _pick(rng, list(invalid))
        return _inject(kw, shape, {}, name, bad)

    return generate


def _dim(rng):
    return {"dim": _pick(rng, [1, -1, 0])}


def _inject(kw, shape, extra, name, bad, channel_axis=None, **case):
    """The case with one wrong value: a constructor argument, or the input (channels, dtype, ndim)."""
    kw = dict(kw)
    if name == "channels":
        shape = shape[:channel_axis] + (bad,) + shape[channel_axis + 1:]
    elif name == "ndim":
        shape = (max(shape[0], 1),) + (2,) * (bad - 1)
        bad = str(shape)
    elif name == "dtype":
        return Case(kw, shape, bad=bad, extra=extra, dtype=np.dtype(bad), **case)
    else:
        kw[name] = bad
    return Case(kw, shape, bad=bad, extra=extra, **case)


LAYERS = {
    "Conv2d": (nn.Conv2d, torch.nn.Conv2d, conv2d),
    "Linear": (nn.Linear, torch.nn.Linear, linear),
    "BatchNorm1d": (nn.BatchNorm1d, torch.nn.BatchNorm1d, batch_norm(3)),
    "BatchNorm2d": (nn.BatchNorm2d, torch.nn.BatchNorm2d, batch_norm(4)),
    "MaxPool2d": (nn.MaxPool2d, torch.nn.MaxPool2d, max_pool),
    "AvgPool2d": (nn.AvgPool2d, torch.nn.AvgPool2d, avg_pool),
    "LPPool2d": (nn.LPPool2d, torch.nn.LPPool2d, lp_pool),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, torch.nn.AdaptiveAvgPool2d, adaptive_avg_pool),
    "LocalResponseNorm": (nn.LocalResponseNorm, torch.nn.LocalResponseNorm, local_response_norm),
    "ReLU": (nn.ReLU, torch.nn.ReLU, elementwise("ReLU")),
    "LeakyReLU": (nn.LeakyReLU, torch.nn.LeakyReLU, elementwise(
        "LeakyReLU", lambda rng: {"negative_slope": _pick(rng, [0.01, 0.2, -0.5])},
        [("negative_slope", "steep"), ("dtype", "int16")])),
    "Tanh": (nn.Tanh, torch.nn.Tanh, elementwise("Tanh")),
    "Sigmoid": (nn.Sigmoid, torch.nn.Sigmoid, elementwise("Sigmoid")),
    "Softmax": (nn.Softmax, torch.nn.Softmax, elementwise("Softmax", _dim, [("dim", 7), ("dim", "1"), ("dtype", "int8")])),
    "LogSoftmax": (nn.LogSoftmax, torch.nn.LogSoftmax, elementwise("LogSoftmax", _dim, [("dim", -9), ("dtype", "uint8")])),
    "Dropout": (nn.Dropout, torch.nn.Dropout, elementwise(
        "Dropout", lambda rng: {"p": _pick(rng, [0.0, 1.0])}, [("p", 1.5), ("p", -0.1), ("p", "half"), ("dtype", "int64")])),
    "Flatten": (nn.Flatten, torch.nn.Flatten, elementwise(
        "Flatten", lambda rng: {"start_dim": _pick(rng, [1, 0, -1]), "end_dim": _pick(rng, [-1, 1])},
        [("start_dim", 9), ("end_dim", "x")])),
}

# Refusals cnnkit makes on purpose where PyTorch runs (DESIGN principle 4 and Conv2d's docstring).
GEOMETRY_REFUSAL = "unused: (W - F + 2P)/S + 1"
DELIBERATE = ("needs asymmetric padding", "sees only padding")


def _input(case, rng):
    x = rng.standard_normal(case.shape)
    if case.positive:
        x = np.abs(x) + 0.1
    return x.astype(case.dtype) if case.dtype.kind != "f" else x


def _run_ours(ours_cls, case, x, dy_rng, extra=None):
    """cnnkit's layer, its state before forward, its output, the gradient drawn and its dx."""
    layer = ours_cls(**case.kwargs, **case.extra, **(extra or {}))
    layer.train(case.train)
    before = {k: np.array(v, copy=True) for k, v in layer.state_dict().items()}
    y = layer(x)
    dy = dy_rng.standard_normal(y.shape)
    return (layer, before), y, dy, layer.backward(dy)


def _run_theirs(theirs_cls, case, ours, x, dy):
    """PyTorch's layer with cnnkit's weights and statistics (as they were before forward)."""
    layer = theirs_cls(**case.kwargs)
    layer.train(case.train)
    with torch.no_grad():
        for key, value in layer.state_dict().items():
            value.copy_(torch.as_tensor(ours[1][key]))
    xt = torch.tensor(x, requires_grad=True)
    yt = layer(xt)
    yt.backward(torch.tensor(dy))
    return layer, yt.detach().numpy(), xt.grad.numpy()


def _check_refusal(error, case):
    assert isinstance(error, (ValueError, TypeError)), f"{case}: {type(error).__name__}: {error}"
    message = str(error)
    assert message and "\n" not in message, f"{case}: not one line: {message!r}"
    return message


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_fuzz_layer_against_pytorch(name):
    ours_cls, theirs_cls, generate = LAYERS[name]
    rng = np.random.default_rng([SEED, sorted(LAYERS).index(name)])
    compared = refused = 0
    for i in range(VALID_CASES + INVALID_CASES):
        case = generate(rng, valid=i < VALID_CASES)
        x = _input(case, rng)
        dy_seed = int(rng.integers(2**31))
        if case.bad is not None:  # one wrong value: cnnkit names it (PyTorch is not asked)
            try:
                _run_ours(ours_cls, case, x, np.random.default_rng(dy_seed))
            except Exception as error:  # noqa: BLE001 - checked to be ValueError/TypeError
                message = _check_refusal(error, case)
                assert str(case.bad) in message or repr(case.bad) in message, f"{case}: {message}"
                refused += 1
                continue
            pytest.fail(f"{case}: cnnkit accepts the wrong value {case.bad!r}")
        try:
            theirs_error = None
            theirs_cls(**case.kwargs).train(case.train)(torch.tensor(x))
        except Exception as error:  # noqa: BLE001 - any PyTorch refusal
            theirs_error = error
        try:
            layer, y, dy, dx = _run_ours(ours_cls, case, x, np.random.default_rng(dy_seed))
        except (ValueError, TypeError) as error:
            message = _check_refusal(error, case)
            if theirs_error is not None:
                refused += 1
                continue
            if any(text in message for text in DELIBERATE):
                continue
            assert GEOMETRY_REFUSAL in message, f"{case}: cnnkit refuses what PyTorch runs: {message}"
            try:
                layer, y, dy, dx = _run_ours(ours_cls, case, x, np.random.default_rng(dy_seed),
                                             {"check_geometry": False})
            except ValueError as error:
                if any(text in str(error) for text in DELIBERATE):
                    continue
                raise
        if theirs_error is not None:
            pytest.fail(f"{case}: PyTorch refuses ({theirs_error}) but cnnkit runs")
        try:
            theirs, yt, dxt = _run_theirs(theirs_cls, case, layer, x, dy)
        except Exception as error:  # noqa: BLE001 - BatchNorm's refusals surface only here
            pytest.fail(f"{case}: PyTorch refuses ({error}) but cnnkit runs")
        np.testing.assert_allclose(y, yt, rtol=1e-9, atol=1e-12, err_msg=f"forward {case}")
        np.testing.assert_allclose(dx, dxt, rtol=1e-9, atol=1e-12, err_msg=f"input gradient {case}")
        for key, param in layer[0].named_parameters():
            grad = dict(theirs.named_parameters())[key].grad
            np.testing.assert_allclose(param.grad, grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"{key} {case}")
        for key, value in theirs.state_dict().items():
            np.testing.assert_allclose(layer[0].state_dict()[key], value.numpy(), rtol=1e-12, err_msg=f"{key} {case}")
        compared += 1
    assert compared >= VALID_CASES // 2 and refused >= INVALID_CASES, (compared, refused)
