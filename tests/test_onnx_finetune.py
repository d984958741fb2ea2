"""Fine-tuning an imported ONNX classifier: ``strip_softmax`` + ``finetune.replace_head`` on the
imported graph, then training on a cnnkit dataset (issue 14), with a PyTorch export at a fixed
batch size and through the example script."""
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

import cnnkit  # noqa: E402
import cnnkit.onnx as conx  # noqa: E402
from cnnkit import finetune  # noqa: E402
from cnnkit.data import DataLoader, load  # noqa: E402
from cnnkit.optim import SGD  # noqa: E402
from cnnkit.train import Trainer  # noqa: E402


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU6(),
                                            torch.nn.MaxPool2d(2))
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = self.features(x)
        return torch.softmax(self.fc(x.view(x.size(0), -1)), dim=1)


def test_replace_head_on_an_imported_graph_and_train(rng):
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(Classifier().eval(), torch.zeros(1, 1, 8, 8), buf, dynamo=False, opset_version=13)
    g = conx.load(onnx.load_from_string(buf.getvalue()))
    assert g.batch_size is None and g.input_shape == (1, 8, 8)
    assert conx.strip_softmax(g) and not conx.strip_softmax(g)
    assert finetune.find_head(g) == "fc"
    finetune.replace_head(g, 3, freeze_body=True, generator=np.random.default_rng(0))
    assert g.output_shape((1, 8, 8)) == (3,)
    assert [n for n, p in g.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    data = load("digits", "train")
    keep = np.flatnonzero(data.labels < 3)
    subset = type(data)(data.images[keep], data.labels[keep], data.classes[:3], "digits")
    frozen = g.features_0.weight.data.copy() if hasattr(g, "features_0") else None
    trainer = Trainer(g, SGD(finetune.trainable_parameters(g), lr=0.1, momentum=0.9), progress=False, out=None)
    trainer.fit(DataLoader(subset, 32, shuffle=True, seed=0), None, 3)
    losses = [h["train_loss"] for h in trainer.history]
    assert losses[-1] < losses[0] * 0.8
    if frozen is not None:
        np.testing.assert_array_equal(g.features_0.weight.data, frozen)
    with cnnkit.no_grad():
        accuracy = np.mean([(g.eval()(x).argmax(1) == y).mean() for x, y in DataLoader(subset, 500)])
    assert accuracy > 0.6  # three classes: chance is 1/3


def test_finetune_onnx_example_runs_end_to_end(capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "finetune_onnx.py"
    spec = importlib.util.spec_from_file_location("finetune_onnx", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "final softmax removed" in out and "batch size any" in out
    before, after = (float(v) for v in out.split("test accuracy ")[-1].split(" after")[0].replace("%", "").split(" before -> "))
    assert after > before + 20
