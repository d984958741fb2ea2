"""Imported graphs export back: ONNX file -> ``cnnkit.onnx.load`` -> ``cnnkit.onnx.export`` -> a
file whose onnxruntime output equals the original file's, for the nine light models that ship
inside the ``onnx`` package (shrunk as ``test_onnx_light_models.py`` shrinks them), every operator
case of the import tests and the PyTorch exports they use (fixed-batch ones included).

The exported file uses the operators the original did (each layer the importer adds exports the
operator it was read from), at the original's opset when that is later than 13.
"""
import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

import cnnkit.onnx as conx  # noqa: E402

# The import tests hold the model builders this file runs through export (imported here, not
# copied: one definition of each case).
try:
    import test_onnx_import  # its operator cases need no torch, its PyTorch models do
except pytest.skip.Exception:
    test_onnx_import = None
from test_onnx_import_ops import CASES as OP_CASES  # noqa: E402
from test_onnx_import_ops import STATIC_BATCH  # noqa: E402
from test_onnx_import_ops import make as make_op_case  # noqa: E402
from test_onnx_light_models import CONFIGS, prepare  # noqa: E402


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test workers own the cores
    return ort.InferenceSession(model.SerializeToString(), options)


def export_back(model, input_shape=None, **kw):
    """``model`` (a ModelProto) imported by cnnkit and exported again, as a ModelProto."""
    g = conx.load(model, input_shape).eval()
    return g, conx.export(g, None, g.input_shape, **kw)


def assert_same_outputs(ys, refs, rtol=1e-4, what=""):
    assert len(ys) == len(refs), what
    for y, ref in zip(ys, refs):
        assert y.dtype == ref.dtype and y.shape == ref.shape, (what, y.dtype, ref.dtype, y.shape, ref.shape)
        if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
            np.testing.assert_array_equal(y, ref, err_msg=what)
            continue
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref), err_msg=what)  # sqrt of negatives
        y, ref = y[~np.isnan(ref)], ref[~np.isnan(ref)]
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-6)
        assert np.abs(y - ref).max(initial=0) <= rtol * scale, f"{what}: {np.abs(y - ref).max() / scale:.2e} relative"


def op_types(model) -> set:
    return {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_light_model_exports_back(name):
    rng = np.random.default_rng(0)
    model, input_name = prepare(name, rng)
    size = CONFIGS[name]["size"]
    x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    original = session(model)
    per_sample = [original.run(None, {input_name: x[i:i + 1]}) for i in range(2)]  # the file is batch 1
    refs = [np.concatenate([r[k] for r in per_sample]) for k in range(len(per_sample[0]))]
    g, exported = export_back(model)
    assert exported.opset_import[0].version == 13  # the files are opset 9: the default, 13
    # the operators the file was made of (its weights' ConstantOfShape and the Unsqueeze of
    # densenet's scales are folded away; Sum of two tensors exports as Add; squeezenet's opset-9
    # Softmax of a 4-D tensor, which flattens it, imports as a Softmax between two Reshapes)
    assert op_types(exported) <= op_types(model) | {"Add", "Reshape"}, op_types(exported) - op_types(model)
    assert_same_outputs(session(exported).run(None, {"input": x}), refs, what=name)


def _op_case(table, case, rng):
    """(model, feeds) of an import test's operator case."""
    if table is OP_CASES:
        opset, inputs, nodes, inits = OP_CASES[case]
        last = nodes[-1].output
        outputs = tuple(last) if case.startswith(("maxpool_indices", "maxpool_storage")) else ("y",)
        model = make_op_case(nodes, inits(rng), inputs, opset, outputs, static=case in STATIC_BATCH)
        feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in inputs.items()}
    else:
        opset, x_shape, nodes, inits = IMPORT_CASES[case]
        model = test_onnx_import.make(nodes, inits(rng), x_shape, opset)
        feeds = {"x": rng.standard_normal(x_shape).astype(np.float32)}
    return model, feeds


IMPORT_CASES = test_onnx_import.CASES if test_onnx_import is not None else {}
# Graphs whose file leaves the batch symbolic but which merge it (a reduction over every axis, an
# Unsqueeze at axis 0) or fix it (a constant with the batch dimension): they run at the batch they
# were built for, and have no per-sample shape to export with.
BATCH_BOUND = {"reduce_ops_opset18_axes_input", "squeeze_unsqueeze_flatten", "embedding_gather_of_a_table"}
ALL_CASES = [("ops", c) for c in sorted(set(OP_CASES) - STATIC_BATCH - BATCH_BOUND)] + \
    [("import", c) for c in sorted(IMPORT_CASES)]


@pytest.mark.parametrize("table, case", ALL_CASES)
def test_operator_case_exports_back(table, case, rng):
    model, feeds = _op_case(OP_CASES if table == "ops" else IMPORT_CASES, case, rng)
    refs = session(model).run(None, feeds)
    g, exported = export_back(model)
    opset = model.opset_import[0].version
    assert exported.opset_import[0].version == max(13, opset)
    assert_same_outputs(session(exported).run(None, {"input": next(iter(feeds.values()))}), refs, rtol=1e-5,
                        what=case)


@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("table, case", ALL_CASES)
def test_operator_case_exports_back_at_older_opsets(opset, table, case, rng):
    """The attribute forms of older opsets (Squeeze/Reduce axes, Clip bounds, Pad, Split, Slice),
    or a refusal that names the opset an operator needs."""
    model, feeds = _op_case(OP_CASES if table == "ops" else IMPORT_CASES, case, rng)
    g = conx.load(model).eval()
    try:
        exported = conx.export(g, None, g.input_shape, opset=opset)
    except NotImplementedError as exc:
        needed = re.search(r"needs opset >= (\d+)", str(exc))
        assert needed and int(needed.group(1)) > opset, str(exc)
        return
    assert_same_outputs(session(exported).run(None, {"input": next(iter(feeds.values()))}),
                        session(model).run(None, feeds), rtol=1e-5, what=f"{case} at opset {opset}")


@pytest.mark.parametrize("case", sorted(STATIC_BATCH | BATCH_BOUND))
def test_graphs_bound_to_their_batch_size_are_refused_with_the_reason(case, rng):
    model, _ = _op_case(OP_CASES, case, rng)
    g = conx.load(model)
    if case in STATIC_BATCH:  # the importer knows: the file declares the batch size
        with pytest.raises(NotImplementedError, match=r"runs only at batch size \d+ .*move or merge the batch axis"):
            conx.export(g, None, g.input_shape)
    else:
        with pytest.raises(ValueError, match=r"moves or merges the batch axis|works only at the batch size it was"):
            conx.export(g, None, g.input_shape)


def test_integer_graph_exports_back(rng):
    """ONNX's integer MaxPool and Clip: the constants take the input's type."""
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]),
             helper.make_node("Clip", ["p", "lo", "hi"], ["y"])]
    model = make_op_case(nodes, {"lo": np.array(3, np.uint8), "hi": np.array(100, np.uint8)}, {"x": (2, 3, 5, 4)}, 13,
                         elem=TensorProto.UINT8)
    x = rng.integers(0, 255, (2, 3, 5, 4), endpoint=True).astype(np.uint8)
    g = conx.load(model)
    exported = conx.export(g, None, (3, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(session(exported).run(None, {"input": x})[0], session(model).run(None, {"x": x})[0])


def test_export_below_the_opset_an_operator_needs_names_it(rng):
    model, _ = _op_case(OP_CASES, "pad_reflect_edge_wrap", rng)
    with pytest.raises(NotImplementedError, match=r"Pad .* in mode 'wrap' needs opset >= 19"):
        conx.export(conx.load(model), None, (3, 5, 4), opset=13)
    model, _ = _op_case(OP_CASES, "averagepool_dilated_ceil", rng)
    with pytest.raises(NotImplementedError, match=r"AveragePool .* with dilations \(2, 1\) needs opset >= 19"):
        conx.export(conx.load(model), None, (3, 9, 8), opset=18)


def test_file_written_and_named_outputs(tmp_path, rng):
    """Several graph outputs are ``output``, ``output_1``...; the file passes onnx.checker."""
    model, feeds = _op_case(OP_CASES, "maxpool_indices_and_dropout_mask", rng)
    g = conx.load(model)
    conx.export(g, tmp_path / "back.onnx", (3, 5, 4))
    back = onnx.load(str(tmp_path / "back.onnx"))
    onnx.checker.check_model(back, full_check=True)
    assert [o.name for o in back.graph.output] == ["output", "output_1"]
    assert [o.type.tensor_type.elem_type for o in back.graph.output] == [TensorProto.FLOAT, TensorProto.BOOL]


# ---- models exported from PyTorch (the import tests' builders) ------------------------------------

def _torch_models():
    torch = pytest.importorskip("torch")
    return torch, test_onnx_import


@pytest.mark.parametrize("name", ["resnet-pattern", "inception-pattern", "caffe-alexnet-pattern", "vgg-pattern"])
def test_torch_exported_model_exports_back(name, rng):
    torch, t = _torch_models()
    build, shape, opset = {"resnet-pattern": (t.TinyResNet, (2, 3, 32, 32), 13),
                           "inception-pattern": (t.TinyInception, (2, 3, 9, 9), 11),
                           "caffe-alexnet-pattern": (t.caffe_alexnet_like, (1, 3, 67, 67), 9),
                           "vgg-pattern": (t.vgg_like, (2, 3, 16, 16), 17)}[name]
    torch.manual_seed(0)
    model = build().eval()
    t._randomize_bn(model)
    x = rng.standard_normal(shape).astype(np.float32)
    proto = t.torch_export(model, x, opset, do_constant_folding=False)
    _, exported = export_back(proto)
    assert_same_outputs(session(exported).run(None, {"input": x}), session(proto).run(None, {"x": x}), what=name)


@pytest.mark.parametrize("opset, export_batch, fold", [(13, 1, True), (13, 1, False), (14, 1, True), (17, 2, True)])
def test_fixed_batch_pytorch_export_exports_back(opset, export_batch, fold, rng):
    """Hardswish, ReLU6 (Clip), a channel shuffle by view/transpose, a mean head, x.view(x.size(0), -1)
    at a batch size written into the file: the export runs at any batch size."""
    import io

    torch, t = _torch_models()
    torch.manual_seed(0)
    model = t.MobileStyle().eval()
    t._randomize_bn(model)
    buf = io.BytesIO()
    x_export = torch.from_numpy(rng.standard_normal((export_batch, 3, 16, 16)).astype(np.float32))
    torch.onnx.export(model, x_export, buf, dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"],
                      do_constant_folding=fold)
    proto = onnx.load_from_string(buf.getvalue())
    _, exported = export_back(proto)
    assert exported.opset_import[0].version == max(13, opset)
    assert {"Transpose", "ReduceMean", "Clip"} <= op_types(exported)
    assert_same_outputs(session(exported).run(None, {"input": x_export.numpy()}),
                        session(proto).run(None, {"x": x_export.numpy()}), what="at the export batch")
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert_same_outputs(session(exported).run(None, {"input": x}), [expected], what="at batch 3")


def test_keras_style_model_exports_back(rng):
    """NHWC input transposed to NCHW, ReduceMean + Squeeze, MatMul + Add (one Linear)."""
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]), n("Conv", ["t", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             n("Relu", ["c"], ["r"]), n("ReduceMean", ["r"], ["m"], axes=[2, 3], keepdims=1),
             n("Squeeze", ["m", "axes"], ["s"]), n("MatMul", ["s", "K"], ["k"]), n("Add", ["k", "bias"], ["y"])]
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "B": rng.standard_normal(4).astype(np.float32),
             "axes": np.array([2, 3], np.int64), "K": rng.standard_normal((4, 6)).astype(np.float32),
             "bias": rng.standard_normal(6).astype(np.float32)}
    model = make_op_case(nodes, inits, {"x": (1, 5, 5, 3)}, 13)
    x = rng.standard_normal((3, 5, 5, 3)).astype(np.float32)
    _, exported = export_back(model)
    assert_same_outputs(session(exported).run(None, {"input": x}), session(model).run(None, {"x": x}))
