"""The nine CNNs that ship inside the ``onnx`` package (``onnx/backend/test/data/light``: Caffe2
Model Zoo exports at a fixed batch of 1) import and match onnxruntime on random weights and
inputs, at batch 1 and at batch 4.

The files hold no weights: each weight is a ``ConstantOfShape`` of its shape. The test replaces
those by random (He-scaled) initializers, so that the comparison means something, and compares
the logits (the input of the final softmax) to 1e-4 of their largest magnitude. onnxruntime runs
the batch-1 file once per sample: the batch-4 result must equal the four batch-1 results.

To stay fast, models whose graph allows it run at a smaller image size: densenet121 and
squeezenet (global pooling) at 64x64; resnet50 and inception_v2 at 64x64 with their final 7x7
average pooling set to the 2x2 map it then sees; alexnet, zfnet512 and vgg19 at 99/96/32 with the
``Reshape`` target and the classifier's input size set to the smaller feature map and the hidden
fully connected layers narrowed to 256. inception_v1 (its final average pooling has the asymmetric
pads and ``count_include_pad=0`` this import exists for) and shufflenet (its channel-shuffle
reshapes name the spatial sizes) run at 224x224 as published.
"""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import helper, numpy_helper  # noqa: E402

import cnnkit.onnx as conx  # noqa: E402

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")

FC_256 = {"fc6_b_0__SHAPE": [256], "fc7_w_0__SHAPE": [256, 256], "fc7_b_0__SHAPE": [256], "fc8_w_0__SHAPE": [1000, 256]}
CONFIGS = {
    "bvlc_alexnet": dict(size=99, shapes={"OC2_DUMMY_1": [1, 1024], "fc6_w_0__SHAPE": [256, 1024], **FC_256}),
    "zfnet512": dict(size=96, shapes={"OC2_DUMMY_1": [1, 2048], "gpu_0/fc6_w_0__SHAPE": [256, 2048],
                                      "gpu_0/fc6_b_0__SHAPE": [256], "gpu_0/fc7_w_0__SHAPE": [1024, 256]}),
    "vgg19": dict(size=32, shapes={"OC2_DUMMY_1": [1, 512], "fc6_w_0__SHAPE": [256, 512], **FC_256}),
    "resnet50": dict(size=64, attributes={"n172": {"kernel_shape": [2, 2]}}),
    "inception_v2": dict(size=64, attributes={"n505": {"kernel_shape": [2, 2]}}),
    "densenet121": dict(size=64),
    "squeezenet": dict(size=64),
    "inception_v1": dict(size=224),
    "shufflenet": dict(size=224),
}


def _consumers(graph):
    table = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            table.setdefault(name, []).append((node, i))
    return table


def _random_value(shape, uses, consumers, rng):
    """He-normal for convolution and dense weights, (0.5, 1.5) for scales and variances, small
    normal values for biases and means."""
    node, index = uses[0] if uses else (None, None)
    op = node.op_type if node is not None else None
    if op in ("Conv", "Gemm") and index == 1:
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    if op == "BatchNormalization" and index in (1, 4):
        return rng.uniform(0.5, 1.5, shape)
    if op == "Unsqueeze":  # densenet/inception_v2 scale BN outputs with Unsqueeze -> Mul / Add
        uses = consumers.get(node.output[0], [])
        op = uses[0][0].op_type if uses else None
    if op == "Mul":
        return rng.uniform(0.5, 1.5, shape)
    return rng.normal(0.0, 0.1, shape)


def prepare(name, rng):
    """The light model with random weights, at the configured size, with its logits as an output."""
    config = CONFIGS[name]
    model = onnx.load(os.path.join(LIGHT, f"light_{name}.onnx"))
    graph = model.graph
    for tensor in graph.initializer:  # the Reshape targets and weight shapes of the smaller size
        if tensor.name in config.get("shapes", {}):
            tensor.CopyFrom(numpy_helper.from_array(np.array(config["shapes"][tensor.name], np.int64), tensor.name))
    for node in graph.node:
        for attribute, value in config.get("attributes", {}).get(node.name, {}).items():
            for a in node.attribute:
                if a.name == attribute:
                    a.CopyFrom(helper.make_attribute(attribute, value))
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = _consumers(graph)
    kept, weights = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape":
            kept.append(node)
            continue
        shape = tuple(int(s) for s in shapes[node.input[0]])
        value = _random_value(shape, consumers.get(node.output[0], []), consumers, rng)
        weights.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(weights)
    used = {n for node in graph.node for n in node.input}
    for collection in (graph.initializer, graph.input):
        for item in [i for i in collection if i.name not in used]:
            collection.remove(item)
    data = next(i for i in graph.input if i.name not in {t.name for t in graph.initializer})
    for axis in (2, 3):
        data.type.tensor_type.shape.dim[axis].dim_value = config["size"]
    last = next(n for n in graph.node if n.output[0] == graph.output[0].name)
    if last.op_type == "Softmax":  # compare the logits, not saturated probabilities
        graph.output.append(helper.make_tensor_value_info(last.input[0], onnx.TensorProto.FLOAT, None))
    for output in graph.output:  # the declared (1, 1000) no longer holds at other sizes
        output.type.tensor_type.ClearField("shape")
    return model, data.name


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_light_model_matches_onnxruntime_at_batch_1_and_4(name):
    rng = np.random.default_rng(0)
    model, input_name = prepare(name, rng)
    size = CONFIGS[name]["size"]
    x = rng.standard_normal((4, 3, size, size)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test workers own the cores
    session = ort.InferenceSession(model.SerializeToString(), options)
    refs = [session.run(None, {input_name: x[i:i + 1]}) for i in range(4)]
    ref = [np.concatenate([r[k] for r in refs]) for k in range(len(refs[0]))]

    g = conx.load(model).eval()
    assert g.batch_size is None, "a fixed-batch export must run at any batch size"
    for batch in (1, 4):
        ys = g(x[:batch])
        ys = ys if isinstance(ys, tuple) else (ys,)
        assert len(ys) == len(ref)
        for y, r in zip(ys, ref):
            r = r[:batch]
            assert y.shape == r.shape
            scale = np.abs(r).max()
            assert np.abs(y - r).max() <= 1e-4 * scale, f"{name} batch {batch}: {np.abs(y - r).max() / scale:.2e}"
