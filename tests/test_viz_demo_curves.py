"""cnnkit.viz: the convolution demo (numbers equal Conv2d's), training curves, confusion matrix."""
import json

import numpy as np
import pytest
from PIL import Image

from cnnkit.nn.conv import Conv2d
from cnnkit.viz.conv_demo import ConvDemo, conv_demo_frames, conv_demo_gif, conv_demo_html, make_demo, plot_conv_demo
from cnnkit.viz.curves import (diagnostics_findings, plot_confusion, plot_diagnostics, plot_history, read_history,
                               read_steps)


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
    assert [line.get_label() for line in loss.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(loss.get_lines()[1].get_ydata(), [2.2 / e for e in range(1, 5)])
    # no steps.csv: the rate of each epoch holds from its start to its end
    np.testing.assert_allclose(lr.get_lines()[0].get_ydata()[:4], [0.1 * 0.5 ** e for e in range(1, 5)])
    np.testing.assert_allclose(lr.get_lines()[0].get_xdata()[:4], [0, 1, 2, 3])
    import csv  # the CSV form reads the same

    with open(tmp_path / "history.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history_rows()[0]))
        writer.writeheader()
        writer.writerows(history_rows())
    assert read_history(tmp_path / "history.csv")[2]["val_top1"] == history_rows()[2]["val_top1"]


def test_curves_axes_for_short_runs_and_per_step_loss(tmp_path):
    one = history_rows(1)
    fig = plot_history(one)
    for ax in fig.axes:  # one epoch: an axis from 0 to 1 with whole-epoch ticks, not 0.96..1.04
        lo, hi = ax.get_xlim()
        assert lo < 0 <= 1 < hi < 1.2
        assert all(float(t).is_integer() for t in ax.get_xticks() if lo <= t <= hi)
    acc_lo, acc_hi = fig.axes[1].get_ylim()
    assert acc_hi - acc_lo >= 0.0999 and acc_lo <= one[0]["val_top1"] <= acc_hi <= 1.005
    assert "(1 epoch;" in fig._suptitle.get_text() and "1 epochs" not in fig._suptitle.get_text()
    assert f"validation accuracy {one[0]['val_top1']:.2%}" in fig._suptitle.get_text()  # a percentage, not 0.4
    fig = plot_history(history_rows(3))
    ticks = [t for t in fig.axes[0].get_xticks() if 0 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no 1.5/2.5
    # every step's loss from steps.csv, placed inside its epoch; the best epoch starred
    steps = [(s, 1 + (s - 1) // 4, 3.0 - 0.1 * s, 0.1) for s in range(1, 13)]
    (tmp_path / "history.json").write_text(json.dumps(history_rows(3)))
    (tmp_path / "steps.csv").write_text("step,epoch,loss,lr\n" + "".join(f"{s},{e},{l},{r}\n" for s, e, l, r in steps))
    assert read_steps(tmp_path) == steps
    fig = plot_history(tmp_path, best_epoch=2)
    loss, acc, lr = fig.axes
    each = [line for line in loss.get_lines() if line.get_label() == "train (each step)"][0]
    np.testing.assert_allclose(each.get_xdata(), np.arange(1, 13) / 4)
    np.testing.assert_allclose(each.get_ydata(), [s[2] for s in steps])
    star = [line for line in acc.get_lines() if line.get_label() == "best checkpoint (epoch 2)"][0]
    assert star.get_xdata()[0] == 2 and star.get_ydata()[0] == history_rows(3)[1]["val_top1"]
    assert len(lr.get_lines()[0].get_xdata()) == 12


def test_confusion_matrix_figure(tmp_path):
    cm = np.array([[5, 1, 0], [0, 4, 2], [1, 0, 7]])
    fig = plot_confusion(cm, ["cat", "dog", "ship"], path=tmp_path / "cm.png")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), cm / cm.sum(1, keepdims=True))
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in cm.ravel())
    assert "accuracy 80.00% on 20 images" in fig._suptitle.get_text()
    assert fig.axes[1].get_ylabel() == "fraction of the true class (row)"  # the colour bar says what it shows


def test_diagnostics_figure(tmp_path):
    records = [{"step": s, "epoch": 1, "layers": {
        "conv": {"act_std": 1.0 / s, "grad_norm": 0.1, "update_ratio": 1e-3 * s},
        "relu": {"act_std": 0.5, "dead": 0.1 * s}}} for s in (1, 2, 3)]
    fig = plot_diagnostics(records, path=tmp_path / "d.png")
    std_ax, dead_ax, grad_ax, ratio_ax = fig.axes
    assert len(std_ax.get_lines()) == 2 and len(dead_ax.get_lines()) == 1
    assert any(np.allclose(line.get_ydata(), 1e-3) for line in ratio_ax.get_lines())  # the rule-of-thumb line
    assert all(line.get_marker() == "o" for ax in (std_ax, dead_ax, grad_ax) for line in ax.get_lines())


def diag_records(ratios, dead=0.1, epochs=(1, 2)):
    """Two layers over two epochs; ``ratios[epoch]`` is conv's update/weight ratio in that epoch."""
    return [{"step": 10 * i + 1, "epoch": e, "layers": {
        "conv": {"act_std": 1.0, "grad_norm": 0.1, "update_ratio": ratios[e]},
        "relu": {"act_std": 0.5, "dead": dead}}} for i, e in enumerate(e for e in epochs for _ in range(3))]


def test_diagnostics_findings_in_words():
    assert diagnostics_findings(diag_records({1: 2e-3, 2: 1e-3})) == []
    [high] = diagnostics_findings(diag_records({1: 1e-3, 2: 3e-2}), layer_types={"conv": "Conv2d"})
    assert high.startswith("layer conv (Conv2d): update/weight ratio 3.0e-02, 30x the ~1e-3 guide")
    [low] = diagnostics_findings(diag_records({1: 1e-3, 2: 2e-5}))
    assert "50x below the ~1e-3 guide" in low
    [frozen] = diagnostics_findings(diag_records({1: 0.0, 2: 0.0}))
    assert "did not change" in frozen
    [settled] = diagnostics_findings(diag_records({1: 4e-2, 2: 2e-3}))
    assert settled.startswith("Earlier in training") and "40x" in settled and "settled" in settled
    dead = diagnostics_findings(diag_records({1: 1e-3, 2: 1e-3}, dead=0.8))
    assert dead == ["layer relu: 80% of its units output zero for every image of a batch (dead ReLUs get no gradient); "
                    "a lower learning rate or another initialisation may help."]
    with pytest.raises(ValueError, match="must be a list"):
        diagnostics_findings([{"layers": 3}])


def test_conv_demo_geometry_products_and_notation():
    demo = make_demo()
    assert demo.geometry() == ("input 5x5x3, pad 1, 2 filters 3x3x3, stride 2: output size (W - F + 2P)/S + 1 = "
                               "(5 - 3 + 2*1)/2 + 1 = 3, so the output is 3x3x2")
    for index in (0, 4, 13):
        s = demo.step(index)
        products = demo.products(index)
        assert products.shape == (3, 3, 3)  # the 27 products of one window
        np.testing.assert_allclose(products.sum(axis=(1, 2)), s["per_channel"])
        assert products.sum() + s["bias"] == s["value"]
    # one notation: out[row, column, filter], the window as x[rows, columns, :] of the padded input
    assert demo.equation(13).startswith("out[1, 1, 1] = x[2:5, 2:5, :] . w1 + b1 = (")
    assert demo.window_slice(2) == "x[0:3, 4:7, :]"


def test_geometry_that_does_not_fit_is_explained(tmp_path):
    from cnnkit.viz.conv_demo import geometry_problem, misfit_html, plot_misfit

    assert geometry_problem(5, 3, 2, 1) is None and geometry_problem(7, 3, 2, 0) is None
    assert geometry_problem(6, 1, 2, 0) is None  # a 1x1 filter with stride 2 skips on purpose
    text = geometry_problem(7, 3, 3, 0)  # the notes' example
    assert "(7 - 3 + 2*0)/3 + 1 = 2.33 is not a whole number" in text
    assert "start at columns 0, 3" in text and "So column 6 of the input" in text
    assert "padding 1: (7 - 3 + 2*1)/3 + 1 = 3" in text and "stride 2: (7 - 3 + 2*0)/2 + 1 = 3" in text
    assert "does not fit in the 4x4 input padded to 6x6" in geometry_problem(4, 7, 1, 1)
    with pytest.raises(ValueError, match="stride must be a whole number >= 1, got 0"):
        geometry_problem(7, 3, 0, 0)
    page = misfit_html(tmp_path / "m.html", 7, 3, 3, 0).read_text()
    assert page.count('class="unseen"') == 13 and page.count('class="seen"') == 36  # row 6 and column 6
    fig = plot_misfit(7, 3, 3, 0, path=tmp_path / "m.png")
    assert "does not fit" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="fit: draw the demo instead"):
        plot_misfit(5, 3, 2, 1)
