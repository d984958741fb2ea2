"""The operators added for real-world models, each against onnxruntime (forward) and against
finite differences in float64 (backward: the imported graph trains), plus the inputs ONNX allows
that cnnkit's own layers refuse (integer MaxPool/Clip) and multi-input graphs."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cnnkit  # noqa: E402
import cnnkit.onnx as conx  # noqa: E402

F = TensorProto.FLOAT
N = helper.make_node


def make(nodes, inits, inputs, opset, outputs=("y",), elem=F, static=False):
    """``inputs``: {name: full shape}; the first one's leading axis is the batch, symbolic unless
    ``static`` (a graph that contracts its batch axis needs it fixed)."""
    infos = [helper.make_tensor_value_info(name, elem, ["N"] + list(shape[1:]) if i == 0 and not static else list(shape))
             for i, (name, shape) in enumerate(inputs.items())]
    types = {"idx": TensorProto.INT64, "mask": TensorProto.BOOL}
    graph = helper.make_graph(nodes, "t", infos, [helper.make_tensor_value_info(o, types.get(o, elem), None)
                                                  for o in outputs],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7 if opset < 15 else 8
    return model


def w(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def ints(*values):
    return np.array(values, np.int64)


X = (2, 3, 5, 4)
CASES = {  # name: (opset, {input: shape}, nodes, initializers(rng))
    "transpose_nhwc_input": (13, {"x": (2, 5, 4, 3)}, [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
                              N("Conv", ["t", "W"], ["y"], pads=[1, 1, 1, 1])], lambda r: {"W": w(r, 4, 3, 3, 3)}),
    "channel_shuffle": (13, {"x": (2, 6, 3, 3)}, [N("Reshape", ["x", "s1"], ["a"]),
                         N("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3, 4]), N("Reshape", ["b", "s2"], ["y"])],
                        lambda r: {"s1": ints(0, 2, 3, 3, 3), "s2": ints(0, 6, 3, 3)}),
    "transpose_moves_batch": (13, {"x": (2, 3, 4)}, [N("Transpose", ["x"], ["y"], perm=[2, 0, 1])], lambda r: {}),
    "reduce_mean_head_opset13": (13, {"x": X}, [N("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
                                 N("Gemm", ["m", "B", "C"], ["y"], transB=1)], lambda r: {"B": w(r, 7, 3), "C": w(r, 7)}),
    "reduce_ops_opset18_axes_input": (18, {"x": X}, [N("ReduceMax", ["x", "ax"], ["a"], keepdims=1),
                                      N("ReduceSum", ["a", "ax2"], ["b"], keepdims=0),
                                      N("ReduceL2", ["x", "ax"], ["c"]), N("ReduceLogSumExp", ["x", "ax"], ["d"]),
                                      N("Add", ["c", "d"], ["e"]), N("ReduceMean", ["e"], ["f"]),
                                      N("ReduceSumSquare", ["x", "ax"], ["g"], keepdims=0), N("ReduceL1", ["g"], ["h"]),
                                      N("ReduceMin", ["x", "ax3"], ["i"], keepdims=0), N("Add", ["h", "f"], ["j"]),
                                      N("Mul", ["i", "j"], ["k"]), N("Mul", ["b", "k"], ["y"])],
                                      lambda r: {"ax": ints(2, 3), "ax2": ints(-1), "ax3": ints(1, 2, 3)}),
    "squeeze_unsqueeze_flatten": (13, {"x": (2, 1, 3, 1)}, [N("Squeeze", ["x", "ax"], ["a"]),
                                  N("Unsqueeze", ["a", "ax2"], ["b"]), N("Flatten", ["b"], ["y"], axis=2)],
                                  lambda r: {"ax": ints(1, 3), "ax2": ints(0, 2)}),
    "squeeze_unsqueeze_opset11": (11, {"x": (2, 1, 3)}, [N("Squeeze", ["x"], ["a"], axes=[1]),
                                  N("Unsqueeze", ["a"], ["y"], axes=[-1])], lambda r: {}),
    "flatten_axis_0": (13, {"x": X}, [N("Flatten", ["x"], ["y"], axis=0)], lambda r: {}),
    "prelu_per_channel_and_scalar": (9, {"x": X}, [N("PRelu", ["x", "s"], ["a"]), N("PRelu", ["a", "t"], ["y"])],
                                     lambda r: {"s": w(r, 3, 1, 1), "t": np.array([0.3], np.float32)}),
    "hardswish_hardsigmoid": (14, {"x": X}, [N("Mul", ["x", "three"], ["z"]), N("HardSwish", ["z"], ["a"]),
                              N("HardSigmoid", ["a"], ["y"], alpha=0.3, beta=0.4)],
                              lambda r: {"three": np.array(3.0, np.float32)}),
    "log_softmax_opset13_and_11": (13, {"x": X}, [N("LogSoftmax", ["x"], ["a"], axis=1), N("Softmax", ["a"], ["y"], axis=2)],
                                   lambda r: {}),
    "log_softmax_opset11_flattens": (11, {"x": X}, [N("LogSoftmax", ["x"], ["y"], axis=2)], lambda r: {}),
    "instance_norm": (13, {"x": X}, [N("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-3)],
                      lambda r: {"s": w(r, 3), "b": w(r, 3)}),
    "pad_reflect_edge_wrap": (19, {"x": X}, [N("Pad", ["x", "p1"], ["a"], mode="reflect"),
                              N("Pad", ["a", "p2"], ["b"], mode="edge"), N("Pad", ["b", "p3"], ["y"], mode="wrap")],
                              lambda r: {"p1": ints(0, 0, 2, 1, 0, 0, 1, 3), "p2": ints(0, 0, 1, 0, 0, 1, 0, 2),
                                         "p3": ints(0, 0, 1, 2, 0, 0, 2, 1)}),
    "pad_negative_crops": (13, {"x": X}, [N("Pad", ["x", "p"], ["y"])], lambda r: {"p": ints(0, 0, -1, 2, 0, 0, 1, -2)}),
    "gemm_transA": (13, {"x": (5, 3)}, [N("Gemm", ["x", "B", "C"], ["y"], transA=1, alpha=0.5, beta=2.0)],
                    lambda r: {"B": w(r, 5, 4), "C": w(r, 4)}),
    "gemm_bias_per_row": (13, {"x": (3, 5)}, [N("Gemm", ["x", "B", "C"], ["y"], transB=1)],
                          lambda r: {"B": w(r, 4, 5), "C": w(r, 3, 4)}),
    "matmul_3d_constant_and_bias_fusion": (13, {"x": (2, 3, 5)}, [N("MatMul", ["x", "M"], ["a"]),
                                           N("Flatten", ["a"], ["f"]), N("MatMul", ["f", "M2"], ["h"]),
                                           N("Add", ["h", "bias"], ["y"])],
                                           lambda r: {"M": w(r, 5, 4), "M2": w(r, 12, 6), "bias": w(r, 6)}),
    "maxpool_indices_and_dropout_mask": (13, {"x": X}, [N("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 2],
                                         pads=[0, 0, 1, 0]), N("Dropout", ["p", "ratio"], ["y", "mask"])],
                                         lambda r: {"ratio": np.array(0.3, np.float32)}),
    "maxpool_storage_order_1": (9, {"x": X}, [N("MaxPool", ["x"], ["y", "idx"], kernel_shape=[3, 2], strides=[1, 2],
                                              storage_order=1)], lambda r: {}),
    "averagepool_same_upper_exclude_pad": (11, {"x": (2, 3, 7, 6)}, [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 3],
                                           strides=[2, 2], auto_pad="SAME_UPPER")], lambda r: {}),
    "averagepool_asymmetric_count_include_pad": (11, {"x": X}, [N("AveragePool", ["x"], ["y"], kernel_shape=[3, 2],
                                                 pads=[2, 0, 0, 1], count_include_pad=1)], lambda r: {}),
    "averagepool_dilated_ceil": (19, {"x": (2, 3, 9, 8)}, [N("AveragePool", ["x"], ["y"], kernel_shape=[2, 3],
                                 strides=[2, 2], dilations=[2, 1], pads=[1, 1, 0, 1], ceil_mode=1)], lambda r: {}),
    "maxpool_big_pads": (13, {"x": X}, [N("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[2, 2, 2, 2])],
                         lambda r: {}),
    "lppool_odd_p_on_negatives": (18, {"x": X}, [N("Neg", ["x"], ["n"]), N("LpPool", ["n"], ["y"], kernel_shape=[2, 2],
                                  p=3, pads=[1, 0, 0, 1], ceil_mode=1)], lambda r: {}),
    "concat_batch_axis_split": (13, {"x": X}, [N("Relu", ["x"], ["r"]), N("Concat", ["x", "r"], ["c"], axis=0),
                                N("Split", ["c", "sp"], ["a", "b"], axis=1), N("Mul", ["a", "a"], ["aa"]),
                                N("ReduceSum", ["b", "one"], ["bb"]), N("Add", ["aa", "bb"], ["y"])],
                                lambda r: {"sp": ints(1, 2), "one": ints(1)}),
    "expand_tile_gather_slice": (13, {"x": (2, 3, 1)}, [N("Expand", ["x", "shape"], ["e"]), N("Tile", ["e", "reps"], ["t"]),
                                 N("Gather", ["t", "idx"], ["g"], axis=2), N("Slice", ["g", "s", "e2", "ax", "st"], ["y"])],
                                 lambda r: {"shape": ints(1, 3, 4), "reps": ints(1, 2, 1), "idx": ints(3, 0, -1),
                                            "s": ints(5), "e2": ints(0), "ax": ints(1), "st": ints(-2)}),
    "embedding_gather_of_a_table": (13, {"x": (2, 3)}, [N("Relu", ["x"], ["r"]), N("Gather", ["table", "idx"], ["e"]),
                                    N("Add", ["e", "r"], ["y"])], lambda r: {"table": w(r, 5, 3), "idx": ints(4, 1)}),
    "where_with_a_constant_branch": (13, {"x": X}, [N("Where", ["cond", "x", "zero"], ["a"]), N("Relu", ["x"], ["b"]),
                                     N("Where", ["cond2", "a", "b"], ["y"])],
                                     lambda r: {"cond": r.random((1, 3, 1, 4)) > 0.5, "cond2": r.random((3, 5, 1)) > 0.5,
                                                "zero": np.array(0.5, np.float32)}),
    "cast_round_trip": (13, {"x": X}, [N("Cast", ["x"], ["d"], to=TensorProto.DOUBLE), N("Sqrt", ["d"], ["s"]),
                        N("Cast", ["s"], ["y"], to=TensorProto.FLOAT)], lambda r: {}),
    "unary_functions": (13, {"x": X}, [N("Exp", ["x"], ["a"]), N("Log", ["a"], ["b"]), N("Elu", ["b"], ["c"], alpha=0.7),
                        N("Selu", ["c"], ["d"]), N("Softplus", ["d"], ["e"]), N("Softsign", ["e"], ["f"]),
                        N("Celu", ["f"], ["g"], alpha=1.3), N("Abs", ["x"], ["h"]), N("Sqrt", ["h"], ["i"]),
                        N("Reciprocal", ["i"], ["j"]), N("Erf", ["g"], ["k"]), N("Sin", ["k"], ["l"]),
                        N("Cos", ["l"], ["m"]), N("Mul", ["m", "j"], ["n"]), N("Neg", ["n"], ["o"]),
                        N("Pow", ["h", "half"], ["p"]), N("Add", ["o", "p"], ["y"])],
                        lambda r: {"half": np.array(1.5, np.float32)}),
    "max_min_mean_with_constants_relu6": (13, {"x": X}, [N("Max", ["x", "zero"], ["a"]), N("Min", ["a", "six", "five"], ["b"]),
                                          N("Sigmoid", ["x"], ["s"]), N("Mean", ["b", "s", "x"], ["c"]),
                                          N("Max", ["c", "s"], ["d"]), N("Sum", ["d", "one"], ["y"])],
                                          lambda r: {"zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32),
                                                     "five": np.array(0.5, np.float32), "one": np.array(1.0, np.float32)}),
    "div_of_two_tensors": (13, {"x": X}, [N("Sigmoid", ["x"], ["s"]), N("Add", ["s", "one"], ["d"]),
                           N("Div", ["x", "d"], ["y"])], lambda r: {"one": np.array(1.0, np.float32)}),
    "conv1d": (13, {"x": (2, 3, 9)}, [N("Conv", ["x", "W", "B"], ["y"], pads=[2, 1], strides=[2], dilations=[1])],
               lambda r: {"W": w(r, 4, 3, 3), "B": w(r, 4)}),
    "maxpool1d_and_global_pools": (13, {"x": (2, 3, 9)}, [N("MaxPool", ["x"], ["a"], kernel_shape=[3], pads=[1, 1]),
                                   N("GlobalAveragePool", ["a"], ["b"]), N("GlobalMaxPool", ["x"], ["c"]),
                                   N("GlobalLpPool", ["x"], ["d"], p=2), N("Sum", ["b", "c", "d"], ["y"])], lambda r: {}),
}

NOT_DIFFERENTIABLE = {
    "maxpool_storage_order_1",  # its second output is the indices
    "cast_round_trip",  # it casts to float32: a float64 gradient check would measure float32 rounding
}
STATIC_BATCH = {"gemm_transA", "gemm_bias_per_row", "transpose_moves_batch", "flatten_axis_0", "concat_batch_axis_split"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_matches_onnxruntime(case, rng):
    opset, inputs, nodes, inits = CASES[case]
    outputs = tuple(o for o in nodes[-1].output) if case.startswith(("maxpool_indices", "maxpool_storage")) else ("y",)
    model = make(nodes, inits(rng), inputs, opset, outputs, static=case in STATIC_BATCH)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in inputs.items()}
    refs = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    g = conx.load(model).eval()
    ys = g(*feeds.values())
    ys = ys if isinstance(ys, tuple) else (ys,)
    for y, ref in zip(ys, refs):
        assert y.dtype == ref.dtype and y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(set(CASES) - NOT_DIFFERENTIABLE))
def test_operator_gradients_match_finite_differences(case, rng):
    opset, inputs, nodes, inits = CASES[case]
    model = make(nodes, inits(rng), inputs, opset, static=case in STATIC_BATCH)
    g = conx.load(model, dtype=np.float64).eval()
    x = rng.standard_normal(next(iter(inputs.values())))
    if case == "unary_functions":
        x = np.abs(x) + 0.5  # keep Log, Sqrt and Reciprocal away from 0
    assert cnnkit.gradcheck(g, x, max_checks=150) < 1e-5


def test_batch_axis_is_tracked(rng):
    flexible = conx.load(make(*[CASES["channel_shuffle"][i] for i in (2,)], CASES["channel_shuffle"][3](rng),
                              CASES["channel_shuffle"][1], 13))
    assert flexible.batch_size is None and flexible.output_shape((6, 3, 3)) == (6, 3, 3)
    moved = conx.load(make(CASES["transpose_moves_batch"][2], {}, {"x": (2, 3, 4)}, 13, static=True))
    assert moved.batch_size == 2
    assert moved(np.zeros((2, 3, 4), np.float32)).shape == (4, 2, 3)
    with pytest.raises(ValueError, match="moves or merges the batch axis"):
        moved.output_shape((3, 4))
    with pytest.raises(ValueError, match=r"only at batch size 2 \(Transpose node .* moves or merges the batch axis\)"):
        moved(np.zeros((3, 3, 4), np.float32))


# ---- ONNX's integer inputs ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype, elem", [(np.uint8, TensorProto.UINT8), (np.int8, TensorProto.INT8)])
def test_integer_maxpool_and_clip_match_onnxruntime(dtype, elem, rng):
    nodes = [N("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
             N("Clip", ["p", "lo", "hi"], ["y"])]
    inits = {"lo": np.array(3, dtype), "hi": np.array(100, dtype)}
    model = make(nodes, inits, {"x": X}, 13, elem=elem)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max, X, endpoint=True).astype(dtype)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    y = conx.load(model)(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, ref)


# ---- several inputs -----------------------------------------------------------------------------

def test_multi_input_graph_matches_onnxruntime_and_trains(rng):
    nodes = [N("MatMul", ["a", "b"], ["m"]), N("Relu", ["m"], ["r"]), N("Concat", ["r", "c"], ["k"], axis=1),
             N("Mul", ["k", "k"], ["y"])]
    shapes = {"a": (2, 3, 4), "b": (2, 4, 5), "c": (2, 2, 5)}
    model = make(nodes, {}, shapes, 13)
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    g = conx.load(model)
    assert g.input_names == ["a", "b", "c"]
    np.testing.assert_allclose(g(*feeds.values()), ref, rtol=1e-5, atol=1e-6)
    # gradients of all three inputs against finite differences, in float64
    g = conx.load(model, dtype=np.float64)
    xs = [rng.standard_normal(s) for s in shapes.values()]
    dy = rng.standard_normal(g(*xs).shape)
    g(*xs)
    grads = g.backward(dy)
    for x, grad in zip(xs, grads):
        numeric = np.zeros_like(x)
        for i in range(x.size):
            old = x.flat[i]
            x.flat[i] = old + 1e-6
            plus = np.sum(g(*xs) * dy)
            x.flat[i] = old - 1e-6
            minus = np.sum(g(*xs) * dy)
            x.flat[i] = old
            numeric.flat[i] = (plus - minus) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_constant_with_the_batch_dimension_fixes_the_batch_size(rng):
    """A constant of shape (batch, ...) added to the input: fine at the declared batch size (as in
    onnxruntime), refused with a reason at any other."""
    model = make([N("Add", ["x", "c"], ["y"], name="add_c")], {"c": w(rng, 2, 3)}, {"x": (2, 3)}, 13, static=True)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    g = conx.load(model)
    np.testing.assert_allclose(g(x), ref, rtol=1e-6)
    assert g.batch_size == 2
    with pytest.raises(ValueError, match=r"only at batch size 2 \(Add node 'add_c'"):
        g(np.zeros((5, 3), np.float32))


def test_weights_rearranged_by_folded_nodes_stay_trainable(rng):
    """Caffe2/TF exports reshape, unsqueeze or transpose their weights in the graph: the folded
    result is still a weight (a Parameter that trains), and modules are named after it."""
    nodes = [N("Unsqueeze", ["bn_scale_0", "axes"], ["s"]), N("Mul", ["x", "s"], ["m"]),
             N("Transpose", ["dense/kernel:0"], ["k"], perm=[1, 0]), N("Flatten", ["m"], ["f"]),
             N("MatMul", ["f", "k"], ["y"])]
    model = make(nodes, {"bn_scale_0": w(rng, 3), "axes": ints(1, 2), "dense/kernel:0": w(rng, 4, 60)}, {"x": (2, 3, 5, 4)}, 13)
    g = conx.load(model)
    assert sorted(n for n, _ in g.named_parameters()) == ["bn_scale_0.weight", "dense.weight"]
    assert cnnkit.gradcheck(conx.load(model, dtype=np.float64), rng.standard_normal((2, 3, 5, 4))) < 1e-6


def test_a_registered_rule_replaces_the_builtin_one(rng):
    from cnnkit.nn.activation import Tanh
    from cnnkit.onnx import registry

    previous = registry.OPS["Relu"] if "Relu" in registry.OPS else None
    try:
        @conx.register_op("Relu")
        def relu_as_tanh(ctx, node, attrs):
            return Tanh(), [node.input[0]]

        g = conx.load(make([N("Relu", ["x"], ["y"])], {}, {"x": (2, 3)}, 13))
        x = rng.standard_normal((2, 3)).astype(np.float32)
        np.testing.assert_allclose(g(x), np.tanh(x), rtol=1e-6)
    finally:
        registry.OPS["Relu"] = previous
