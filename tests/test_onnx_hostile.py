"""ONNX files are untrusted input (issue 17): memory bombs are refused before anything is allocated,
external data is read once and only from the model's folder, contradictory or malformed nodes
give one-line errors naming the node and its op, and a huge LRN window costs nothing. Every hostile
file is generated here."""
import os
import time
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import cnnkit  # noqa: E402
import cnnkit.onnx as conx  # noqa: E402

F = TensorProto.FLOAT
N = helper.make_node
MiB = 1 << 20


def model(nodes, initializers=(), x_shape=(1, 3, 4, 4), opset=13, outputs=("y",)):
    graph = helper.make_graph(list(nodes), "hostile", [helper.make_tensor_value_info("x", F, list(x_shape))],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs], list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def peak_of(function):
    """Run ``function`` and return ``(exception or None, peak bytes allocated while it ran)``."""
    tracemalloc.start()
    try:
        function()
        error = None
    except Exception as exc:  # noqa: BLE001 - the caller inspects it
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


# ---- memory bombs: constants computed at import -------------------------------------------------

BOMBS = {
    # 8192 x 16384 float32 = 512 MiB from a file of a few hundred bytes
    "ConstantOfShape": [N("ConstantOfShape", ["shape"], ["big"], name="bomb",
                          value=numpy_helper.from_array(np.array([1.0], np.float32))),
                        N("Add", ["x", "big"], ["y"])],
    "Expand": [N("Expand", ["one", "shape"], ["big"], name="bomb"), N("Add", ["x", "big"], ["y"])],
    "Tile": [N("Tile", ["one2d", "reps"], ["big"], name="bomb"), N("Add", ["x", "big"], ["y"])],
    "Range": [N("Range", ["zero", "limit", "step"], ["big"], name="bomb"), N("Add", ["x", "big"], ["y"])],
    "broadcast Mul": [N("Mul", ["column", "row"], ["big"], name="bomb"), N("Add", ["x", "big"], ["y"])],
    "Gather": [N("Gather", ["row", "many"], ["big"], name="bomb"), N("Add", ["x", "big"], ["y"])],
}
BOMB_CONSTANTS = [const("shape", np.array([8192, 16384], np.int64)), const("one", np.ones(1, np.float32)),
                  const("one2d", np.ones((1, 1), np.float32)), const("reps", np.array([8192, 16384], np.int64)),
                  const("zero", np.array(0.0, np.float32)), const("limit", np.array(2.0 ** 28, np.float32)),
                  const("step", np.array(1.0, np.float32)), const("column", np.ones((16384, 1), np.float32)),
                  const("row", np.ones((1, 8192), np.float32)), const("many", np.zeros((8192, 16384 // 8192), np.int64))]


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_memory_bomb_is_refused_before_allocating(kind):
    m = model(BOMBS[kind], [c for c in BOMB_CONSTANTS if c.name in {i for n in BOMBS[kind] for i in n.input}],
              x_shape=(1, 1))
    error, peak = peak_of(lambda: conx.load(m))
    assert isinstance(error, ValueError), error
    message = str(error)
    assert "node 'bomb'" in message and "MiB" in message and "max_folded_bytes" in message
    assert peak < 40 * MiB, f"{peak / MiB:.0f} MiB allocated before refusing"


def test_constant_of_shape_bomb_file_is_tiny():
    m = model(BOMBS["ConstantOfShape"], [BOMB_CONSTANTS[0]], x_shape=(1, 1))
    assert len(m.SerializeToString()) < 400  # the 156-byte model, give or take names


def test_max_folded_bytes_lets_a_trusted_file_through():
    nodes = [N("ConstantOfShape", ["shape"], ["c"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
             N("Mul", ["x", "c"], ["y"])]
    m = model(nodes, [const("shape", np.array([1, 3, 64, 64], np.int64))], x_shape=(1, 3, 64, 64))
    with pytest.raises(ValueError, match="max_folded_bytes"):
        conx.load(m, max_folded_bytes=1000)
    x = np.ones((1, 3, 64, 64), np.float32)
    np.testing.assert_array_equal(conx.load(m, max_folded_bytes=1 << 20)(x), 0.5 * x)


def test_huge_activation_is_refused_at_import():
    nodes = [N("Pad", ["x", "pads"], ["y"], name="huge_pad")]
    m = model(nodes, [const("pads", np.array([0, 0, 30000, 30000, 0, 0, 30000, 30000], np.int64))])
    with pytest.raises(ValueError, match=r"huge_pad.*values per sample"):
        conx.load(m)


# ---- external data ------------------------------------------------------------------------------

def external_conv_model(folder, weight_dims, location="weights.bin", offset=0, length=None, kernel_shape=None):
    """A Conv whose weight lives in an external file (the file itself is the caller's business)."""
    weight = TensorProto(name="W", data_type=F, dims=list(weight_dims), data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", None if length is None else str(length))):
        if value is not None:
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    attrs = {} if kernel_shape is None else {"kernel_shape": kernel_shape}
    m = model([N("Conv", ["x", "W"], ["y"], name="conv", **attrs)], [weight], x_shape=("N", weight_dims[1], 8, 8))
    path = os.path.join(folder, "model.onnx")
    onnx.save(m, path)
    return path


def test_external_weights_load_and_match_onnxruntime(tmp_path, rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    (tmp_path / "weights.bin").write_bytes(b"junk" + w.tobytes())
    path = external_conv_model(str(tmp_path), w.shape, offset=4, length=w.nbytes)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(path).run(None, {"x": x})[0]
    np.testing.assert_allclose(conx.load(path)(x), ref, rtol=1e-5, atol=1e-5)


def test_external_data_larger_than_its_file_is_refused_before_reading(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 1000)
    path = external_conv_model(str(tmp_path), (1 << 14, 3, 96, 96))  # 1.7 GiB declared
    error, peak = peak_of(lambda: conx.load(path))
    assert isinstance(error, ValueError) and "'W'" in str(error) and "weights.bin" in str(error), error
    assert peak < 16 * MiB


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../outside.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4 * 27)
    path = external_conv_model(str(folder), (1, 3, 3, 3), location=location)
    with pytest.raises(ValueError, match="outside the model's folder|relative to the model's folder"):
        conx.load(path)


def test_two_gib_external_weight_is_not_read_when_the_node_is_refused(tmp_path):
    # A sparse 2 GiB file: the importer checks the Conv's kernel_shape against the declared weight
    # shape first, so the weight is never read (no copy at all, let alone three).
    dims = (1 << 17, 4, 32, 32)  # 2 GiB of float32
    with open(tmp_path / "weights.bin", "wb") as f:
        f.truncate(int(np.prod(dims)) * 4)
    path = external_conv_model(str(tmp_path), dims, kernel_shape=[5, 5])
    error, peak = peak_of(lambda: conx.load(path))
    assert isinstance(error, ValueError) and "kernel_shape" in str(error) and "node 'conv'" in str(error), error
    assert peak < 16 * MiB


def test_unused_initializers_are_never_read(tmp_path):
    m = model([N("Relu", ["x"], ["y"])])
    unused = TensorProto(name="unused", data_type=F, dims=[1 << 29], data_location=TensorProto.EXTERNAL)
    entry = unused.external_data.add()
    entry.key, entry.value = "location", "missing.bin"
    m.graph.initializer.append(unused)
    onnx.save(m, tmp_path / "m.onnx")
    error, peak = peak_of(lambda: conx.load(tmp_path / "m.onnx"))
    assert error is None and peak < 16 * MiB


def test_raw_data_shorter_than_its_dims_is_refused():
    w = TensorProto(name="W", data_type=F, dims=[64, 3, 3, 3], raw_data=b"\0" * 16)
    m = model([N("Conv", ["x", "W"], ["y"], name="conv")], [w])
    with pytest.raises(ValueError, match=r"'W'.*6912 bytes, raw_data has 16"):
        conx.load(m)


def test_a_file_that_is_not_onnx_names_the_file(tmp_path):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"\xff\xfe definitely not a protobuf" * 3)
    with pytest.raises(ValueError, match="garbage.onnx: not a readable ONNX model"):
        conx.load(path)


# ---- contradictions and malformed nodes ---------------------------------------------------------

def test_conv_kernel_shape_contradicting_its_weight_is_refused_like_onnxruntime(rng):
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    m = model([N("Conv", ["x", "W"], ["y"], name="conv5", kernel_shape=[5, 5])], [const("W", w)], x_shape=(1, 3, 8, 8))
    with pytest.raises(Exception):  # onnxruntime refuses it too
        ort.InferenceSession(m.SerializeToString()).run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(ValueError, match=r"Conv node 'conv5'.*kernel_shape \(5, 5\) contradicts.*\(3, 3\)"):
        conx.load(m)


FOLD_ERRORS = {
    "Gather index out of range": ([N("Gather", ["table", "index"], ["c"], name="bad")],
                                  [const("table", np.arange(3.0, dtype=np.float32)), const("index", np.array([7]))]),
    "Squeeze axis out of range": ([N("Squeeze", ["table", "axes"], ["c"], name="bad")],
                                  [const("table", np.arange(3.0, dtype=np.float32)), const("axes", np.array([5]))]),
    "Concat axis out of range": ([N("Concat", ["table", "table"], ["c"], name="bad", axis=3)],
                                 [const("table", np.arange(3.0, dtype=np.float32))]),
    "Transpose bad perm": ([N("Transpose", ["table"], ["c"], name="bad", perm=[0, 0])],
                           [const("table", np.ones((2, 2), np.float32))]),
    "Unsqueeze repeated axes": ([N("Unsqueeze", ["table", "axes"], ["c"], name="bad")],
                                [const("table", np.arange(3.0, dtype=np.float32)), const("axes", np.array([0, 0]))]),
    "Reshape impossible": ([N("Reshape", ["table", "shape"], ["c"], name="bad")],
                           [const("table", np.arange(3.0, dtype=np.float32)), const("shape", np.array([2, 2]))]),
    "Slice axis out of range": ([N("Slice", ["table", "s", "e", "axes"], ["c"], name="bad")],
                                [const("table", np.arange(3.0, dtype=np.float32)), const("s", np.array([0])),
                                 const("e", np.array([1])), const("axes", np.array([4]))]),
    "Range with zero step": ([N("Range", ["s", "e", "z"], ["c"], name="bad")],
                             [const("s", np.array(0)), const("e", np.array(3)), const("z", np.array(0))]),
}


@pytest.mark.parametrize("case", sorted(FOLD_ERRORS))
def test_constant_folding_errors_name_the_node_and_op(case):
    nodes, consts = FOLD_ERRORS[case]
    op = nodes[0].op_type
    m = model(nodes + [N("Identity", ["x"], ["y"])], consts, outputs=("y", "c"))
    with pytest.raises(ValueError, match=rf"^ONNX import, {op} node 'bad': ") as info:
        conx.load(m)
    assert "\n" not in str(info.value)


MALFORMED = {
    "MaxPool without kernel_shape": (N("MaxPool", ["x"], ["y"], name="bad"), "missing required attribute 'kernel_shape'"),
    "unknown auto_pad": (N("MaxPool", ["x"], ["y"], name="bad", kernel_shape=[2, 2], auto_pad="SIDEWAYS"),
                         "unknown auto_pad 'SIDEWAYS'"),
    "pads wrong length": (N("AveragePool", ["x"], ["y"], name="bad", kernel_shape=[2, 2], pads=[1, 1]),
                          "need 2 values per spatial axis"),
    "pads not smaller than the kernel": (N("MaxPool", ["x"], ["y"], name="bad", kernel_shape=[2, 2], pads=[2, 2, 2, 2]),
                                         "must be smaller than the kernel"),
    "LRN even size": (N("LRN", ["x"], ["y"], name="bad", size=4), "even size 4"),
    "Concat with constant": (N("Concat", ["x", "w"], ["y"], name="bad", axis=1), "Concat of computed tensors with constants"),
    "Softmax axis out of range": (N("Softmax", ["x"], ["y"], name="bad", axis=7), "axis 7 is out of range"),
    "Transpose bad perm": (N("Transpose", ["x"], ["y"], name="bad", perm=[0, 1, 1, 2]), "not a permutation"),
    "Reshape two -1": (N("Reshape", ["x", "twominus"], ["y"], name="bad"), "at most one -1"),
    "BatchNormalization training": (N("BatchNormalization", ["x", "s", "b", "s", "s"], ["y"], name="bad", training_mode=1),
                                    "training mode"),
    "unknown operator": (N("Einsum", ["x"], ["y"], name="bad", equation="ij->ji"), "'Einsum'.*is not supported"),
    "unknown domain": (N("Relu", ["x"], ["y"], name="bad", domain="com.example"), "domain 'com.example'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_nodes_give_one_line_errors_naming_node_and_op(case):
    node, expected = MALFORMED[case]
    consts = [const("w", np.ones((1, 3, 4, 4), np.float32)), const("twominus", np.array([-1, -1], np.int64)),
              const("s", np.ones(3, np.float32)), const("b", np.zeros(3, np.float32))]
    m = model([node], [c for c in consts if c.name in node.input])
    if node.domain:
        m.opset_import.append(helper.make_opsetid(node.domain, 1))
    with pytest.raises((ValueError, conx.UnsupportedOperatorError)) as info:
        conx.load(m)
    message = str(info.value)
    assert f"{node.op_type} node 'bad'" in message and "\n" not in message
    assert pytest.importorskip("re").search(expected, message), message


def test_cycle_is_refused_naming_its_nodes():
    nodes = [N("Relu", ["x"], ["a"], name="first"), N("Add", ["a", "c"], ["b"], name="second"),
             N("Relu", ["b"], ["c"], name="third"), N("Identity", ["b"], ["y"], name="out")]
    with pytest.raises(ValueError, match=r"cycle: .*Add node 'second'.*Relu node 'third'") as info:
        conx.load(model(nodes))
    assert "MaxPool" not in str(info.value)


def test_missing_tensor_is_named_without_guessing():
    nodes = [N("Relu", ["x"], ["a"]), N("Add", ["a", "nowhere"], ["y"], name="adder")]
    with pytest.raises(ValueError, match=r"Add node 'adder' reads tensor 'nowhere', which is not a graph input, an "
                                         r"initializer or the output of any node") as info:
        conx.load(model(nodes))
    assert "MaxPool indices" not in str(info.value)


def test_nodes_out_of_order_are_sorted(rng):
    nodes = [N("Relu", ["a"], ["y"]), N("Neg", ["x"], ["a"])]
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(conx.load(model(nodes))(x), np.maximum(-x, 0))


# ---- LRN with a huge window ---------------------------------------------------------------------

def test_lrn_with_a_huge_size_is_fast_and_matches_onnxruntime(rng):
    # onnxruntime itself cannot run size 10**9 (it asks for 36 GB); with C = 5 channels every
    # window of size >= 2C - 1 = 9 covers all channels, so size 9 with the same alpha/size is
    # the same function.
    x = rng.standard_normal((2, 5, 3, 3)).astype(np.float32)
    huge = model([N("LRN", ["x"], ["y"], size=10 ** 9 + 1, alpha=1e-4 * (10 ** 9 + 1), beta=0.75, bias=2.0)],
                 x_shape=(2, 5, 3, 3))
    nine = model([N("LRN", ["x"], ["y"], size=9, alpha=1e-4 * 9, beta=0.75, bias=2.0)], x_shape=(2, 5, 3, 3))
    ref = ort.InferenceSession(nine.SerializeToString()).run(None, {"x": x})[0]
    g = conx.load(huge)
    start = time.perf_counter()
    y = g(x)
    g.backward(np.ones_like(y))
    assert time.perf_counter() - start < 1.0
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_local_response_norm_window_visits_at_most_c_minus_1_offsets(rng):
    x = rng.standard_normal((2, 4, 3, 3))
    huge = cnnkit.nn.LocalResponseNorm(10 ** 9 + 1, alpha=1e-3 * (10 ** 9 + 1), k=2.0)
    small = cnnkit.nn.LocalResponseNorm(7, alpha=1e-3 * 7, k=2.0)  # 2C - 1: already covers every channel
    start = time.perf_counter()
    np.testing.assert_allclose(huge(x), small(x), rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    np.testing.assert_allclose(huge.backward(dy), small.backward(dy), rtol=1e-12)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("node", [N("MatMul", ["x", "W"], ["y"]), N("Gemm", ["x", "W"], ["y"]),
                                  N("Gemm", ["x", "W"], ["y"], transB=1)], ids=["MatMul", "Gemm", "Gemm-transB"])
def test_a_dense_weight_is_held_at_most_twice_while_importing(tmp_path, node):
    # the file's bytes and the array read from them; the layer's (transposed) weight is written into
    # the layer's own array and its placeholder init draws nothing weight-sized
    w = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)  # 4 MiB
    onnx.save(model([node], [numpy_helper.from_array(w, "W")], x_shape=(1, 1024)), tmp_path / "m.onnx")
    error, peak = peak_of(lambda: conx.load(tmp_path / "m.onnx"))
    assert error is None and peak < 2.5 * w.nbytes, f"{peak / MiB:.1f} MiB"
    graph = conx.load(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((2, 1024)).astype(np.float32)
    expected = x @ (w.T if node.attribute else w)
    np.testing.assert_allclose(graph(x), expected, rtol=1e-4, atol=1e-4)
