"""``cnnkit.summary`` and ``cnnkit.profile`` on imported ONNX graphs: nodes with several inputs
(Add, Concat, Sub, MatMul...) and several outputs (Split, MaxPool with indices), the parameter
and multiply-add counts of the nine light models against counts read off the ONNX files, and
the training-memory estimate against ``tracemalloc`` on graphs made of the importer's layers."""
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper, shape_inference  # noqa: E402

import cnnkit  # noqa: E402
import cnnkit.onnx as conx  # noqa: E402
from cnnkit.functional.workspace import clear_scratch  # noqa: E402
from cnnkit.nn.loss import CrossEntropyLoss  # noqa: E402
from cnnkit.optim import SGD  # noqa: E402
from cnnkit.profile import profile  # noqa: E402
from test_onnx_light_models import CONFIGS, prepare  # noqa: E402

N = helper.make_node


def _model(nodes, inits, size, opset, name="t"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])
    graph = helper.make_graph(nodes, name, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _he(rng, *shape):
    return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[1:]))).astype(np.float32)


def shuffle_block(rng, size=32, c=16):
    """PRelu, a constant scale, HardSwish, a channel shuffle (Reshape/Transpose/Reshape), Split
    into a convolution and a Clip, Concat, InstanceNormalization, MaxPool and AveragePool with
    TF-style asymmetric pads, reflection Pad, Sub of two tensors, a ReduceMean head, Gemm."""
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        N("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]), N("PRelu", ["c1", "slope"], ["p"]),
        N("Mul", ["p", "scale"], ["m"]), N("HardSwish", ["m"], ["h"]),
        N("Reshape", ["h", "s1"], ["r1"]), N("Transpose", ["r1"], ["t"], perm=[0, 2, 1, 3, 4]),
        N("Reshape", ["t", "s2"], ["sh"]), N("Split", ["sh", "halves"], ["a", "b"], axis=1),
        N("Conv", ["a", "W2"], ["a2"], pads=[1, 1, 1, 1]), N("Clip", ["b", "lo", "hi"], ["b2"]),
        N("Concat", ["a2", "b2"], ["cat"], axis=1), N("InstanceNormalization", ["cat", "in_s", "in_b"], ["inorm"]),
        N("MaxPool", ["inorm"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        N("Pad", ["mp", "pads"], ["pd"], mode="reflect"),
        N("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        N("Sigmoid", ["ap"], ["sg"]), N("Sub", ["ap", "sg"], ["d"]),
        N("ReduceMean", ["d"], ["rm"], axes=[2, 3], keepdims=0), N("Gemm", ["rm", "Wf", "bf"], ["y"], transB=1),
    ]
    inits = {"W1": _he(rng, c, 3, 3, 3), "slope": (rng.random((c, 1, 1)) * 0.3).astype(np.float32),
             "scale": (rng.random((1, c, 1, 1)) + 0.5).astype(np.float32), "s1": i64(0, 2, c // 2, size, size),
             "s2": i64(0, c, size, size), "halves": i64(c // 2, c // 2), "W2": _he(rng, c // 2, c // 2, 3, 3),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32), "in_s": np.ones(c, np.float32),
             "in_b": np.zeros(c, np.float32), "pads": i64(0, 0, 1, 1, 0, 0, 1, 1), "Wf": _he(rng, 10, c),
             "bf": np.zeros(10, np.float32)}
    return _model(nodes, inits, size, 14, "shuffle_block")


def arithmetic_block(rng, size=32, c=16):
    """Elu, AddConstant, Div and MatMul of two tensors, a Max with a constant, LpPool with pads,
    Slice, GlobalMaxPool, Expand, Pow, ReduceMax, Tile, Mean, Transpose, Where, Flatten, Gemm."""
    h = size // 2
    i64 = lambda *v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        N("Conv", ["x", "W1"], ["c"], pads=[1, 1, 1, 1]), N("Elu", ["c"], ["e"], alpha=0.5),
        N("Sigmoid", ["e"], ["s"]), N("Add", ["s", "one"], ["s1"]), N("Div", ["e", "s1"], ["dv"]),
        N("Max", ["dv", "zero"], ["mx"]),
        N("LpPool", ["mx"], ["lp"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1], p=2),
        N("Slice", ["lp", "start", "end", "axis"], ["sl"]), N("GlobalMaxPool", ["sl"], ["gm"]),
        N("Expand", ["gm", "shape"], ["ex"]), N("Mul", ["sl", "ex"], ["mm"]), N("Pow", ["mm", "two"], ["pw"]),
        N("ReduceMax", ["pw"], ["rmax"], axes=[3], keepdims=1), N("Tile", ["rmax", "reps"], ["tl"]),
        N("Mean", ["pw", "tl"], ["mean"]), N("Transpose", ["mean"], ["tr"], perm=[0, 1, 3, 2]),
        N("MatMul", ["mean", "tr"], ["mt"]), N("Where", ["cond", "mt", "zero"], ["wh"]),
        N("Flatten", ["wh"], ["fl"]), N("Gemm", ["fl", "Wf", "bf"], ["y"], transB=1),
    ]
    inits = {"W1": _he(rng, c, 3, 3, 3), "one": np.array(1, np.float32), "zero": np.array(0, np.float32),
             "start": i64(0), "end": i64(c // 2), "axis": i64(1), "shape": i64(1, c // 2, h, h),
             "two": np.array(2, np.float32), "reps": i64(1, 1, 1, h), "cond": rng.random((1, c // 2, 1, h)) > 0.3,
             "Wf": _he(rng, 10, c // 2 * h * h), "bf": np.zeros(10, np.float32)}
    return _model(nodes, inits, size, 13, "arithmetic_block")


# ---- the light models: parameters and multiply-adds as the files count them ----------------------

def _counts_from_file(model):
    """Parameters (float initializers but BatchNorm's running statistics) and multiply-adds of
    the Conv and Gemm nodes, from ONNX's own shape inference (one sample)."""
    model.ir_version = max(model.ir_version, 4)  # IR 3 types only initializers listed as inputs
    del model.graph.value_info[:]
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    shapes.update({k: list(v.shape) for k, v in weights.items()})
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":  # (C_out, OH, OW) outputs, each C_in/groups * KH * KW products
            macs += int(np.prod(shapes[node.output[0]][1:])) * int(np.prod(shapes[node.input[1]][1:]))
        elif node.op_type == "Gemm":  # one row per sample: every weight is used once
            macs += int(np.prod(shapes[node.input[1]]))
    statistics = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}
    params = sum(v.size for k, v in weights.items() if np.issubdtype(v.dtype, np.floating) and k not in statistics)
    return params, macs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_light_model_summary_counts_what_the_file_holds(name):
    model, _ = prepare(name, np.random.default_rng(0))
    g = conx.load(model)
    size = CONFIGS[name]["size"]
    s = cnnkit.summary(g, (3, size, size), batch_size=2)
    params, macs = _counts_from_file(model)
    assert s.total_params == sum(p.size for p in g.parameters()) == params
    assert s.total_macs == macs
    assert s.rows[0]["macs"] == macs and s.training["total"] > s.training["params"]
    merges = [r for r in s.rows if r["type"] in ("Add", "Cat")]  # nodes with several inputs
    if name not in ("bvlc_alexnet", "zfnet512", "vgg19"):  # chains without branches
        assert merges and all(len(r["input_shape"]) > 1 and isinstance(r["input_shape"][0], tuple) for r in merges)


# ---- several inputs and outputs in the rows --------------------------------------------------------

def test_rows_of_nodes_with_several_inputs_and_outputs():
    g = conx.load(shuffle_block(np.random.default_rng(0)))
    s = cnnkit.summary(g, (3, 32, 32), batch_size=4)
    row = {r["type"]: r for r in s.rows}
    assert row["Split"]["output_shape"] == ((8, 32, 32), (8, 32, 32)) and row["Split"]["activations"] == 2 * 8 * 32 * 32
    assert row["Cat"]["input_shape"] == ((8, 32, 32), (8, 32, 32)) and row["Cat"]["output_shape"] == (16, 32, 32)
    assert row["Sub"]["input_shape"] == ((16, 9, 9), (16, 9, 9))
    assert s.total_macs == 16 * 32 * 32 * 27 + 8 * 32 * 32 * 72 + 16 * 10  # the convolutions and the Gemm
    assert "8x32x32, 8x32x32" in str(s)
    assert '"output_shape": [[8, 32, 32], [8, 32, 32]]' in s.to_json()


def test_maxpool_indices_and_dropout_mask_outputs():
    """A node whose two outputs both leave the graph: the model's output shape is a pair."""
    nodes = [N("MaxPool", ["x"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Dropout", ["p", "ratio"], ["y", "mask"])]
    model = _model(nodes, {"ratio": np.array(0.3, np.float32)}, 6, 13)
    del model.graph.output[:]
    model.graph.output.extend([helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
    s = cnnkit.summary(conx.load(model), (3, 6, 6))
    assert s.output_shape == ((3, 3, 3), (3, 3, 3))
    assert [r["output_shape"] for r in s.rows[1:]] == [((3, 3, 3), (3, 3, 3))] * 2


# ---- training memory against tracemalloc --------------------------------------------------------------

def _measured_peak(model, shape, batch) -> int:
    """tracemalloc's peak during one training step (the second: the momentum buffers exist)."""
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)
    lossf = CrossEntropyLoss()
    rng = np.random.default_rng(0)

    def step():
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        opt.zero_grad()
        lossf(model(x), rng.integers(0, 10, batch))
        model.backward(lossf.backward(), input_grad=False)
        opt.step()

    step()
    tracemalloc.reset_peak()
    step()
    return tracemalloc.get_traced_memory()[1]


@pytest.mark.parametrize("build", [shuffle_block, arithmetic_block])
def test_training_memory_estimate_of_an_imported_graph_matches_tracemalloc(build):
    shape, batch = (3, 32, 32), 16
    clear_scratch()  # kernels' shared work buffers left by earlier tests would hide this model's
    tracemalloc.start()  # before the model, so parameters and optimizer state are in the peak
    try:
        g = conx.load(build(np.random.default_rng(0)))
        measured = _measured_peak(g, shape, batch)
    finally:
        tracemalloc.stop()
    estimate = cnnkit.summary(g, shape, batch_size=batch, optimizer="momentum").training["total"]
    assert abs(estimate - measured) / measured < 0.25, (estimate, measured)


# ---- profile -----------------------------------------------------------------------------------------

def test_profile_times_imported_layers_and_counts_a_matmul_of_two_tensors():
    g = conx.load(arithmetic_block(np.random.default_rng(0), size=16, c=8))
    p = profile(g, (3, 16, 16), batch_size=2, repeat=1, warmup=0, sgemm_gflops=1.0)
    layers = {r.type: r for r in p.layers}
    assert {"MatMul", "Div", "OnnxLpPool", "Where", "Extremum"} <= set(layers)
    matmul = layers["MatMul"]
    assert matmul.output_shape == (2, 4, 8, 8)
    assert matmul.forward_flops == 2 * 2 * (4 * 8 * 8) * 8  # batch 2, 256 outputs of 8-long dot products
    split = conx.load(shuffle_block(np.random.default_rng(0), size=8, c=4))
    rows = {r.type: r for r in profile(split, (3, 8, 8), batch_size=2, repeat=1, warmup=0, sgemm_gflops=1.0).layers}
    assert rows["Split"].output_shape == (2, 2, 8, 8)  # the first of its two outputs
