"""ONNX import: every supported operator against onnxruntime, at old and new opsets, and models
exported from PyTorch (classic-architecture patterns) forward and backward."""
import io

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cnnkit  # noqa: E402
import cnnkit.onnx as conx  # noqa: E402

F = TensorProto.FLOAT


def make(nodes, inits, x_shape, opset):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", F, ["N"] + list(x_shape[1:]))],
                              [helper.make_tensor_value_info("y", F, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    return model


def check(nodes, inits, x_shape, opset, rng, atol=1e-5):
    model = make(nodes, inits, x_shape, opset)
    x = rng.standard_normal(x_shape).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = conx.load(model).eval()
    y = g(x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=atol)
    return g


def w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


N = helper.make_node

CASES = {
    "conv_groups_dilation_asymmetric_pads": (11, (2, 4, 9, 8), [N("Conv", ["x", "W", "B"], ["y"], strides=[2, 1],
        pads=[1, 0, 2, 1], dilations=[1, 2], group=2)], lambda r: {"W": w(r, 6, 2, 3, 3), "B": w(r, 6)}),
    "conv_same_upper": (7, (1, 3, 9, 9), [N("Conv", ["x", "W"], ["y"], strides=[2, 2], auto_pad="SAME_UPPER")],
                        lambda r: {"W": w(r, 4, 3, 4, 4)}),
    "conv_same_lower_valid": (21, (1, 3, 8, 7), [N("Conv", ["x", "W"], ["h"], auto_pad="SAME_LOWER"),
                                                 N("Conv", ["h", "W2"], ["y"], auto_pad="VALID", strides=[2, 2])],
                              lambda r: {"W": w(r, 4, 3, 2, 2), "W2": w(r, 2, 4, 3, 3)}),
    "gemm_alpha_beta_flatten": (7, (2, 3, 2, 2), [N("Flatten", ["x"], ["f"]),
        N("Gemm", ["f", "B", "C"], ["y"], alpha=0.5, beta=2.0)], lambda r: {"B": w(r, 12, 5), "C": w(r, 1, 5)}),
    "gemm_transB_matmul": (13, (2, 6), [N("Gemm", ["x", "B", "C"], ["h"], transB=1), N("MatMul", ["h", "M"], ["y"])],
                           lambda r: {"B": w(r, 4, 6), "C": w(r, 4), "M": w(r, 4, 3)}),
    "arithmetic_with_constants": (13, (2, 3, 4, 4), [N("Add", ["x", "a"], ["h1"]), N("Mul", ["s", "h1"], ["h2"]),
        N("Sub", ["h2", "a"], ["h3"]), N("Div", ["h3", "d"], ["h4"]), N("Sub", ["a", "h4"], ["y"])],
        lambda r: {"a": w(r, 1, 3, 1, 1), "s": w(r, 3, 1, 1), "d": np.array(2.0, np.float32)}),
    "variable_add_mul_sum_concat": (8, (2, 3, 4, 4), [N("Relu", ["x"], ["r"]), N("Sigmoid", ["x"], ["s"]),
        N("Add", ["r", "s"], ["a"]), N("Mul", ["a", "x"], ["m"]), N("Sum", ["a", "m", "r"], ["t"]),
        N("Concat", ["t", "m"], ["y"], axis=1)], lambda r: {}),
    "activations": (7, (2, 5), [N("LeakyRelu", ["x"], ["a"], alpha=0.2), N("Tanh", ["a"], ["b"]),
        N("Identity", ["b"], ["c"]), N("Dropout", ["c"], ["d"], ratio=0.3), N("Softmax", ["d"], ["y"])], lambda r: {}),
    "dropout_and_softmax_opset13": (13, (2, 3, 2, 2), [N("Dropout", ["x", "ratio"], ["d"]),
        N("Softmax", ["d"], ["y"], axis=1)], lambda r: {"ratio": np.array(0.2, np.float32)}),
    "softmax_opset11_flattens": (11, (2, 3, 2, 2), [N("Softmax", ["x"], ["y"], axis=1)], lambda r: {}),
    "maxpool_ceil_dilation": (12, (1, 2, 10, 9), [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
        pads=[1, 1, 1, 1], dilations=[1, 2], ceil_mode=1)], lambda r: {}),
    "maxpool_asymmetric_pads": (11, (1, 2, 7, 7), [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
        pads=[0, 0, 1, 1])], lambda r: {}),
    "averagepool_exclude_and_include_pad": (10, (1, 2, 8, 7), [N("AveragePool", ["x"], ["h"], kernel_shape=[3, 3],
        strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), N("AveragePool", ["h"], ["y"], kernel_shape=[2, 2],
        pads=[1, 1, 1, 1], count_include_pad=1)], lambda r: {}),
    "averagepool_opset19": (19, (1, 2, 6, 6), [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 3])],
                            lambda r: {}),
    "lppool": (11, (1, 2, 6, 6), [N("LpPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], p=2,
                                    pads=[1, 1, 1, 1])], lambda r: {}),
    "global_pools": (7, (2, 3, 5, 4), [N("GlobalAveragePool", ["x"], ["a"]), N("GlobalMaxPool", ["x"], ["b"]),
                                       N("Add", ["a", "b"], ["y"])], lambda r: {}),
    "lrn": (13, (1, 7, 3, 3), [N("LRN", ["x"], ["y"], size=5, alpha=1e-2, beta=0.75, bias=2.0)], lambda r: {}),
    "batchnorm_opset9": (9, (2, 3, 4, 4), [N("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
                         lambda r: {"g": w(r, 3), "b": w(r, 3), "m": w(r, 3), "v": r.random(3).astype(np.float32) + .5}),
    "batchnorm_opset15_1d": (15, (4, 3), [N("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
                             lambda r: {"g": w(r, 3), "b": w(r, 3), "m": w(r, 3), "v": r.random(3).astype(np.float32) + .5}),
    "shape_gather_reshape": (13, (2, 3, 2, 2), [N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["n"], axis=0),
        N("Unsqueeze", ["n", "ax"], ["n1"]), N("Concat", ["n1", "minus1"], ["shape"], axis=0),
        N("Reshape", ["x", "shape"], ["y"])], lambda r: {"zero": np.array(0, np.int64), "ax": np.array([0], np.int64),
                                                           "minus1": np.array([-1], np.int64)}),
    "flatten_reshape_const": (9, (2, 3, 2, 2), [N("Flatten", ["x"], ["f"], axis=1),
        N("Reshape", ["f", "shape"], ["y"])], lambda r: {"shape": np.array([0, -1], np.int64)}),
    "pad_opset11_and_clip13": (13, (1, 2, 3, 3), [N("Pad", ["x", "pads", "val"], ["p"]),
        N("Clip", ["p", "lo", "hi"], ["y"])], lambda r: {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64),
        "val": np.array(0.5, np.float32), "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)}),
    "pad_and_clip_opset7": (7, (1, 2, 3, 3), [N("Pad", ["x"], ["p"], pads=[0, 0, 1, 0, 0, 0, 0, 1], value=1.0),
                                              N("Clip", ["p"], ["y"], min=0.0, max=0.9)], lambda r: {}),
    "constant_and_constant_of_shape": (13, (2, 3), [
        N("Constant", [], ["c"], value=numpy_helper.from_array(np.array([3], np.int64))),
        N("ConstantOfShape", ["c"], ["k"], value=numpy_helper.from_array(np.array([2.5], np.float32))),
        N("Mul", ["x", "k"], ["y"])], lambda r: {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnxruntime(case, rng):
    opset, x_shape, nodes, inits = CASES[case]
    check(nodes, inits(rng), x_shape, opset, rng)


def test_imported_graph_is_trainable_gradcheck(rng):
    opset, x_shape, nodes, inits = CASES["conv_groups_dilation_asymmetric_pads"]
    g = conx.load(make(nodes, inits(rng), x_shape, opset))
    assert cnnkit.gradcheck(g, rng.standard_normal((1, 4, 6, 5)), max_checks=200) < 1e-6


def test_unsupported_operator_names_op_and_node(rng):
    model = make([N("Relu", ["x"], ["r"]), N("Einsum", ["r"], ["y"], name="my_einsum", equation="ij->ji")],
                 {}, (2, 3), 13)
    with pytest.raises(conx.UnsupportedOperatorError, match=r"'Einsum'.*'my_einsum'"):
        conx.load(model)


def test_missing_onnx_gives_install_hint(monkeypatch):
    import builtins

    from cnnkit.onnx import _deps

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "not_installed_pkg":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install"):
        _deps.require("not_installed_pkg")


# ---- models exported from PyTorch --------------------------------------------------------------


def torch_export(model, x, opset=13, **kw):
    buf = io.BytesIO()
    torch.onnx.export(model, torch.from_numpy(x), buf, dynamo=False, opset_version=opset, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}}, **kw)
    return onnx.load_from_string(buf.getvalue())


class TinyResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, 1, 1)
        self.down = torch.nn.Conv2d(8, 16, 1, 2)
        self.c3 = torch.nn.Conv2d(8, 16, 3, 2, 1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.c2(x) + x)
        x = torch.relu(self.c3(x) + self.down(x))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


class TinyInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = torch.nn.Conv2d(3, 4, 1)
        self.b2 = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(2, 4, 3, padding=1))
        self.b3 = torch.nn.Sequential(torch.nn.MaxPool2d(3, 1, 1), torch.nn.Conv2d(3, 2, 1))
        self.head = torch.nn.Sequential(torch.nn.MaxPool2d(3, 2, ceil_mode=True), torch.nn.Flatten(),
                                        torch.nn.Dropout(0.4), torch.nn.Linear(10 * 4 * 4, 3))

    def forward(self, x):
        return self.head(torch.cat([self.b1(x), torch.relu(self.b2(x)), self.b3(x)], 1))


def caffe_alexnet_like():
    # 11x11/4 on 67x67 drops real columns (Caffe geometry): import must accept it. (torch exports
    # LocalResponseNorm as a Pad/AveragePool/Pow decomposition, so LRN is tested on its own above.)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 11, 4), torch.nn.ReLU(),
        torch.nn.MaxPool2d(3, 2), torch.nn.Conv2d(6, 8, 5, padding=2, groups=2), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(8 * 3 * 3, 10), torch.nn.Sigmoid())


def vgg_like():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU6(), torch.nn.MaxPool2d(2),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.LeakyReLU(0.1),
        torch.nn.Linear(8, 4), torch.nn.Softmax(1))


def _randomize_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)


@pytest.mark.parametrize("name, build, shape, opset", [
    ("resnet-pattern", TinyResNet, (2, 3, 32, 32), 13),
    ("inception-pattern", TinyInception, (2, 3, 9, 9), 11),
    ("caffe-alexnet-pattern", caffe_alexnet_like, (1, 3, 67, 67), 9),
    ("vgg-pattern", vgg_like, (2, 3, 16, 16), 17),
])
def test_torch_exported_models_match_onnxruntime(name, build, shape, opset, rng):
    torch.manual_seed(0)
    model = build().eval()
    _randomize_bn(model)
    x = rng.standard_normal(shape).astype(np.float32)
    proto = torch_export(model, x, opset, do_constant_folding=False)
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x})[0]
    g = conx.load(proto).eval()
    np.testing.assert_allclose(g(x), ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(g(x), model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_imported_model_gradients_match_torch(rng):
    torch.manual_seed(0)
    model = TinyInception().double().eval()
    x = rng.standard_normal((2, 3, 9, 9))
    proto = torch_export(model.float(), x.astype(np.float32), 13)
    model.double()
    g = conx.load(proto, dtype=np.float64).eval()
    dy = rng.standard_normal((2, 3))
    g(x)
    dx = g.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    model(tx).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-8)
    conv = next(m for m in g.modules() if type(m).__name__ == "Conv2d" and m.weight.shape == (4, 2, 3, 3))
    np.testing.assert_allclose(conv.weight.grad, model.b2[2].weight.grad.numpy(), rtol=1e-6, atol=1e-8)


# ---- models exported at a fixed batch size (issue 14) -------------------------------------------


class MobileStyle(torch.nn.Module):
    """The patterns of fixed-batch exports: Hardswish, ReLU6, a channel shuffle by view/transpose,
    a mean head (ReduceMean) and a flatten by ``x.view(x.size(0), -1)``."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, 2, 1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=4)
        self.c2 = torch.nn.Conv2d(8, 16, 1)
        self.fc = torch.nn.Linear(16, 5)
        self.fc2 = torch.nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = torch.nn.functional.hardswish(self.bn(self.c1(x)))
        x = torch.nn.functional.relu6(self.dw(x))
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        x = self.c2(x)
        head = self.fc(x.mean((2, 3)))
        flat = self.fc2(torch.nn.functional.max_pool2d(x, 2).view(x.size(0), -1))
        return head + flat


@pytest.mark.parametrize("opset, export_batch, fold", [(13, 1, True), (13, 1, False), (14, 1, True), (17, 2, True)])
def test_fixed_batch_pytorch_export_runs_at_any_batch(opset, export_batch, fold, rng):
    torch.manual_seed(0)
    model = MobileStyle().eval()
    _randomize_bn(model)
    buf = io.BytesIO()
    x_export = torch.from_numpy(rng.standard_normal((export_batch, 3, 16, 16)).astype(np.float32))
    torch.onnx.export(model, x_export, buf, dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"],
                      do_constant_folding=fold)  # no dynamic_axes: the batch size is written into the file
    proto = onnx.load_from_string(buf.getvalue())
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == export_batch
    ops = {n.op_type for n in proto.graph.node}
    assert {"Reshape", "Transpose", "ReduceMean", "Clip"} <= ops and ({"HardSwish"} <= ops or {"HardSigmoid"} <= ops)
    ref = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x_export.numpy()})[0]
    g = conx.load(proto).eval()
    assert g.batch_size is None
    np.testing.assert_allclose(g(x_export.numpy()), ref, rtol=1e-4, atol=1e-5)
    for batch in (1, 4):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(g(x), model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


def test_fixed_batch_export_trains_like_torch(rng):
    torch.manual_seed(0)
    model = MobileStyle().double().eval()
    buf = io.BytesIO()
    torch.onnx.export(model.float(), torch.zeros(1, 3, 16, 16), buf, dynamo=False, opset_version=14)
    model.double()
    g = conx.load(onnx.load_from_string(buf.getvalue()), dtype=np.float64).eval()
    x = rng.standard_normal((4, 3, 16, 16))
    dy = rng.standard_normal((4, 5))
    g(x)
    dx = g.backward(dy)
    tx = torch.from_numpy(x).requires_grad_()
    model(tx).backward(torch.from_numpy(dy))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-9)
    dw = next(m for m in g.modules() if type(m).__name__ == "Conv2d" and m.groups == 4)
    np.testing.assert_allclose(dw.weight.grad, model.dw.weight.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_keras_style_nhwc_model(rng):
    """TF/Keras exports: an NHWC input transposed to NCHW, a ReduceMean + Squeeze global pool,
    and a MatMul + Add classifier (which becomes one Linear, so replace_head finds it)."""
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), N("Conv", ["t", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             N("Relu", ["c"], ["r"]), N("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
             N("Squeeze", ["m", "axes"], ["s"]), N("MatMul", ["s", "K"], ["k"]), N("Add", ["k", "bias"], ["y"])]
    inits = {"W": w(rng, 4, 3, 3, 3), "B": w(rng, 4), "axes": np.array([2, 3], np.int64), "K": w(rng, 4, 6),
             "bias": w(rng, 6)}
    model = make(nodes, inits, (1, 5, 5, 3), 13)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # Keras writes batch 1 or "unk"
    x = rng.standard_normal((3, 5, 5, 3)).astype(np.float32)
    ref = np.concatenate([ort.InferenceSession(model.SerializeToString()).run(None, {"x": x[i:i + 1]})[0]
                          for i in range(3)])
    g = conx.load(model).eval()
    np.testing.assert_allclose(g(x), ref, rtol=1e-5, atol=1e-6)
    linears = [m for m in g.modules() if type(m).__name__ == "Linear"]
    assert len(linears) == 1 and linears[0].bias is not None  # MatMul + Add fused
    from cnnkit import finetune

    finetune.replace_head(g, 2)
    assert g(x).shape == (3, 2)
