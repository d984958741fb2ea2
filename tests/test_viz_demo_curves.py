"""cnnkit.viz: the convolution demo (numbers equal Conv2d's), training curves, confusion matrix."""
import json

import numpy as np
import pytest
from PIL import Image

from cnnkit.nn.conv import Conv2d
from cnnkit.viz.conv_demo import ConvDemo, conv_demo_frames, conv_demo_gif, conv_demo_html, make_demo, plot_conv_demo
from cnnkit.viz.curves import plot_confusion, plot_diagnostics, plot_history, read_history


def conv2d_output(demo: ConvDemo):
    k, c, kh, kw = demo.weight.shape
    conv = Conv2d(c, k, (kh, kw), stride=demo.stride, padding=demo.padding, dtype=np.float64)
    conv.weight.data[:] = demo.weight
    conv.bias.data[:] = demo.bias
    return conv(demo.x[None])[0]


def test_conv_demo_numbers_equal_conv2d():
    demo = make_demo()  # the notes' demo: 5x5x3, pad 1, two 3x3 filters, stride 2
    assert demo.x.shape == (3, 5, 5) and demo.weight.shape == (2, 3, 3, 3) and (demo.out_h, demo.out_w) == (3, 3)
    np.testing.assert_allclose(demo.output(), conv2d_output(demo), atol=1e-12)
    s = demo.step(4)  # filter 0, centre output
    window = demo.padded[:, 2:5, 2:5]
    assert (s["filter"], s["row"], s["col"], s["top"], s["left"]) == (0, 1, 1, 2, 2)
    assert s["per_channel"] == [float(np.sum(window[c] * demo.weight[0, c])) for c in range(3)]
    assert s["value"] == sum(s["per_channel"]) + demo.bias[0]
    assert demo.equation(4).endswith(f"= {int(s['value'])}")
    # another geometry: rectangular input and kernel, no padding
    odd = ConvDemo(np.arange(2 * 4 * 7.0).reshape(2, 4, 7) % 3, np.ones((1, 2, 2, 3)), np.array([0.5]), stride=2, padding=0)
    np.testing.assert_allclose(odd.output(), conv2d_output(odd))
    # geometry that drops input is refused, with the formula (the notes' 7x7, 3x3, stride 3)
    with pytest.raises(ValueError, match="not an integer"):
        ConvDemo(np.zeros((1, 7, 7)), np.zeros((1, 1, 3, 3)), np.zeros(1), stride=3, padding=0)


def test_conv_demo_figure_gif_html(tmp_path):
    tiny = ConvDemo(np.arange(9.0).reshape(1, 3, 3), np.ones((1, 1, 3, 3)), np.zeros(1), stride=2, padding=1)
    fig = plot_conv_demo(tiny, steps=(0, 1), path=tmp_path / "demo.png")
    texts = [t.get_text() for t in fig.texts]
    assert any(tiny.equation(0) in t for t in texts) and any(tiny.equation(1) in t for t in texts)
    # output (0, 1): padded rows 0-2, columns 2-4 hold 1 + 2 + 4 + 5 (the rest is padding)
    assert tiny.equation(1).endswith("= (12) + 0 = 12")
    with Image.open(tmp_path / "demo.png") as img:
        assert np.asarray(img.convert("L")).std() > 10
    frames = conv_demo_frames(tiny, dpi=30)
    assert len(frames) == tiny.num_steps == 4
    assert not np.array_equal(frames[0], frames[1])  # the window moves
    path = conv_demo_gif(tmp_path / "demo.gif", tiny, dpi=30)
    with Image.open(path) as gif:
        assert gif.n_frames == 4
    page = conv_demo_html(tmp_path / "demo.html", tiny).read_text()
    assert "<script>" in page and "http" not in page.split("<script>")[1]  # self-contained
    data = json.loads(page.split("const D = ")[1].split(";\n")[0])
    assert [s["value"] for s in data["steps"]] == tiny.output().ravel().tolist()


def history_rows(epochs=4):
    return [{"epoch": e, "lr": 0.1 * 0.5 ** e, "train_loss": 2 / e, "train_top1": 1 - 0.5 / e,
             "val_loss": 2.2 / e, "val_top1": 1 - 0.6 / e, "images_per_s": 1000.0} for e in range(1, epochs + 1)]


def test_history_curves_from_run_dir(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps(history_rows()))
    rows = read_history(tmp_path)
    assert len(rows) == 4
    fig = plot_history(tmp_path, path=tmp_path / "curves.png")
    loss, acc, lr = fig.axes
    assert [line.get_label() for line in loss.get_lines()] == ["train", "val"]
    np.testing.assert_allclose(loss.get_lines()[1].get_ydata(), [2.2 / e for e in range(1, 5)])
    np.testing.assert_allclose(lr.get_lines()[0].get_ydata(), [0.1 * 0.5 ** e for e in range(1, 5)])
    import csv  # the CSV form reads the same

    with open(tmp_path / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history_rows()[0]))
        writer.writeheader()
        writer.writerows(history_rows())
    assert read_history(tmp_path / "history.csv")[2]["val_top1"] == history_rows()[2]["val_top1"]


def test_confusion_matrix_figure(tmp_path):
    cm = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 7]])
    fig = plot_confusion(cm, ["cat", "dog", "ship"], path=tmp_path / "cm.png")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), cm / cm.sum(1, keepdims=True))
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in cm.ravel())
    assert "accuracy 80.00% on 20 images" in fig._suptitle.get_text()


def test_diagnostics_figure(tmp_path):
    records = [{"step": s, "epoch": 1, "layers": {
        "conv": {"act_std": 1.0 / s, "grad_norm": 0.1, "update_ratio": 1e-3 * s},
        "relu": {"act_std": 0.5, "dead": 0.1 * s}}} for s in (1, 2, 3)]
    fig = plot_diagnostics(records, path=tmp_path / "d.png")
    std_ax, dead_ax, grad_ax, ratio_ax = fig.axes
    assert len(std_ax.get_lines()) == 2 and len(dead_ax.get_lines()) == 1
    assert any(np.allclose(line.get_ydata(), 1e-3) for line in ratio_ax.get_lines())  # the rule-of-thumb line
