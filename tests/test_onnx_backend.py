"""ONNX's own backend test suite (``onnx.backend.test.BackendTest``) run through
``cnnkit.onnx.backend``, the way onnxruntime and other runtimes prove conformance.

In scope: every test whose model uses only operators cnnkit imports (``supported_operators()``),
on the CPU device. The tests of other operators (RNNs, attention, quantisation, string ops...)
are not collected. Within the scope, the tests below are excluded on purpose; each pattern ends
with its reason as a regex comment ``(?#...)``, which pytest prints as the skip reason.

Operators that cnnkit only folds at import (``Equal``, ``Less``, ``Mod``, ``Range``...) pass
when the backend binds their inputs as constants (see ``cnnkit.onnx.backend``); their tests
check the folding rules.
"""
import os
import warnings

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx.backend.test")

import onnx.backend.test  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

import cnnkit.onnx as conx  # noqa: E402
import cnnkit.onnx.backend as cnnkit_backend  # noqa: E402

EXCLUDED = [
    # cnnkit is a 2-D CNN framework: 1-D convolutions and pooling run as 2-D, 3-D ones are refused
    r"^test_((Conv|AvgPool|MaxPool|BatchNorm)3d|(averagepool|maxpool|lppool)_3d)"
    r"(?#volumetric 3-D convolution, pooling and batch norm: cnnkit is 2-D)",
    # cnnkit computes in float32 or float64 (and integers where ONNX allows them)
    r"(FLOAT16|float16|fp16|BFLOAT16|bfloat16|bf16|FLOAT8|E8M0|FLOAT4|INT4|UINT4|INT2|UINT2)"
    r"(?#float16, bfloat16, float8 and 2/4-bit types: cnnkit computes in float32/float64)",
    r"^test_castlike_(DOUBLE_to_FLOAT|FLOAT_to_DOUBLE)_(?#mixed float precision: a graph computes in one float type)",
    # training-mode graphs: cnnkit imports inference graphs and trains them with its own loop
    r"^test_(batchnorm_.*training_mode|training_dropout)(?#training-mode BatchNormalization/Dropout outputs)",
    # sequence and optional types are outside a CNN framework's tensors
    r"^test_identity_(opt|sequence)_(?#sequence and optional types)",
    # function-expanded ops that compute shapes or masks from runtime values; cnnkit evaluates
    # shape arithmetic (Range, Equal, Less, integer Div...) at import, from constants only
    r"^test_(attention|blackmanwindow|hammingwindow|hannwindow|center_crop_pad|causal_conv_with_state)_.*expanded"
    r"(?#shape or mask arithmetic on runtime values in an expanded function)",
    r"^test_operator_addmm_(?#Gemm whose C term is a computed tensor: cnnkit takes C as a constant bias)",
]

# The nine light models of onnx/backend/test/data/light run with constant weights at 224x224
# here (~40 s, 1.4 GB); tests/test_onnx_light_models.py covers them with random weights against
# onnxruntime at batch 1 and 4.
EXCLUDED.append(r"^test_(bvlc_alexnet|densenet121|inception_v1|inception_v2|resnet50|shufflenet|squeezenet|vgg19|"
                r"zfnet512)_(?#the light models: covered by tests/test_onnx_light_models.py with random weights)")


def _operators(model) -> set:
    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}")
            for attribute in node.attribute:
                for sub in [attribute.g] * attribute.HasField("g") + list(attribute.graphs):
                    walk(sub)

    walk(model.graph)
    return ops


def _in_scope() -> set:
    """Names of the tests whose models use only operators cnnkit imports."""
    supported, names = set(conx.supported_operators()), set()
    for kind in ("node", "simple", "pytorch-converted", "pytorch-operator", "real"):
        for case in load_model_tests(kind=kind):
            if kind == "real":
                names.add(case.name)  # the light models (excluded above, covered elsewhere)
                continue
            model = case.model if case.model is not None else onnx.load(os.path.join(case.model_dir, "model.onnx"))
            if _operators(model) <= supported:
                names.add(case.name)
    return names


with warnings.catch_warnings():  # onnx's test-case generators warn about their own overflows
    warnings.simplefilter("ignore")
    backend_test = onnx.backend.test.BackendTest(cnnkit_backend, __name__)
    _SCOPE = {f"{name}_cpu" for name in _in_scope()}
for pattern in EXCLUDED:
    backend_test.exclude(pattern)


def _scoped_cases() -> dict:
    """The runner's unittest classes, each keeping only the CPU tests in scope."""
    cases = backend_test.test_cases
    for case in cases.values():
        for test in [t for t in vars(case) if t.startswith("test_")]:
            if test not in _SCOPE:
                delattr(case, test)  # another operator, or the CUDA device: not cnnkit's
    return cases


globals().update(_scoped_cases())


# ---- the interface itself -----------------------------------------------------------------------

def _conv_model(shape_x, shape_w):
    from onnx import helper

    node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, shape_x),
                                            helper.make_tensor_value_info("W", 1, shape_w)],
                              [helper.make_tensor_value_info("y", 1, [shape_x[0], shape_w[0]] + list(shape_x[2:]))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), node


def test_prepare_run_model_run_node_and_rebinding(rng):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    model, node = _conv_model([1, 2, 5, 5], [3, 2, 3, 3])
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x, "W": w})[0]
    assert cnnkit_backend.supports_device("CPU") and not cnnkit_backend.supports_device("CUDA")
    np.testing.assert_allclose(cnnkit_backend.run_model(model, {"x": x, "W": w})["y"], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cnnkit_backend.run_node(node, [x, w])[0], ref, rtol=1e-5, atol=1e-6)
    rep = cnnkit_backend.prepare(model)
    np.testing.assert_allclose(rep.run([x, w])[0], ref, rtol=1e-5, atol=1e-6)
    assert list(rep._bound) == ["W"]  # the weight is bound as a constant, x stays an input
    np.testing.assert_allclose(rep.run([x, 2 * w])[0], 2 * ref, rtol=1e-5, atol=1e-6)  # new weight: re-imported


def test_backend_errors_are_one_line():
    model, _ = _conv_model([1, 2, 5, 5], [3, 2, 3, 3])
    model.graph.node[0].input.append("nowhere")  # reads a tensor nobody defines: an invalid model
    with pytest.raises(ValueError, match="fails onnx.checker"):
        cnnkit_backend.prepare(model)
    with pytest.raises(ValueError, match="device 'CUDA'"):
        cnnkit_backend.prepare(_conv_model([1, 2, 5, 5], [3, 2, 3, 3])[0], "CUDA")
    rep = cnnkit_backend.prepare(_conv_model([1, 2, 5, 5], [3, 2, 3, 3])[0])
    with pytest.raises(TypeError, match="sequence, map or optional"):
        rep.run([[1, 2], None])
