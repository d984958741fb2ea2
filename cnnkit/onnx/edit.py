"""Small edits that make an imported classifier ready to fine-tune.

Deployed classifiers often end in a ``Softmax`` (the Model Zoo's do); training wants the logits
before it, since ``CrossEntropyLoss`` applies its own log-softmax. :func:`strip_softmax` cuts it
off, so that ``cnnkit.finetune.replace_head`` and the trainer see logits::

    g = cnnkit.onnx.load("model.onnx")
    cnnkit.onnx.strip_softmax(g)
    cnnkit.finetune.replace_head(g, num_classes=10, freeze_body=True)
"""
from __future__ import annotations

from ..nn.activation import LogSoftmax, Softmax
from ..nn.graph import Graph


def strip_softmax(graph: Graph) -> bool:
    """Make the graph output the logits: an output produced by a ``Softmax``/``LogSoftmax`` node
    becomes that node's input, and nodes no output needs any more are removed. Returns whether
    a softmax was removed."""
    if not isinstance(graph, Graph):
        raise TypeError(f"strip_softmax expects a cnnkit Graph (from cnnkit.onnx.load), got {type(graph).__name__}")
    outputs = graph._outputs()
    changed = False
    for i, tensor in enumerate(outputs):
        index = graph._producers.get(tensor)
        if index is None:
            continue
        node = graph.nodes[index]
        if isinstance(getattr(graph, node.name), (Softmax, LogSoftmax)) and not node.outputs:
            outputs[i] = node.inputs[0]
            changed = True
    if changed:
        graph.set_outputs(outputs)
        graph.remove_unused_nodes()
    return changed
