"""cnnkit.viz: every picture drawn headless (Agg) and checked for what it must show."""
from collections import OrderedDict

import numpy as np
import pytest
from PIL import Image

from cnnkit.nn import Linear, Sequential
from cnnkit.nn.activation import ReLU
from cnnkit.nn.containers import Residual
from cnnkit.nn.conv import Conv2d
from cnnkit.nn.flatten import Flatten
from cnnkit.nn.pooling import AvgPool2d, MaxPool2d
from cnnkit.viz._figure import grid_shape, tile_mosaic
from cnnkit.viz.activations import activation_panel, plot_activations, top_k
from cnnkit.viz.filters import filter_tiles, plot_filters
from cnnkit.viz.layers import capture_outputs, display_layers, resolve_layer
from cnnkit.viz.patches import crop_window, plot_patches, top_activations
from cnnkit.viz.receptive_field import ReceptiveField, receptive_field
from cnnkit.viz.saliency import input_gradient, occlusion, plot_saliency, saliency_map


def tiny_net(rng, in_channels=3, dtype=np.float32):
    """conv5 (pad 2) relu pool2 conv3 relu pool2 fc: 16x16 -> 16x16 -> 8x8 -> 6x6 -> 3x3 -> 10."""
    features = Sequential(
        Conv2d(in_channels, 8, 5, padding=2, generator=rng, dtype=dtype), ReLU(), MaxPool2d(2),
        Conv2d(8, 16, 3, generator=rng, dtype=dtype), ReLU(), MaxPool2d(2),
    )
    return Sequential(OrderedDict(features=features, flatten=Flatten(),
                                  classifier=Sequential(Linear(16 * 3 * 3, 10, generator=rng, dtype=dtype))))


def read_png(path):
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")), img.size


def assert_not_blank(pixels):
    # a picture with content has many distinct colours, not one background
    assert pixels.std() > 10
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


# -- grids and filters ------------------------------------------------------------------------
def test_tile_mosaic_places_every_tile_with_padding():
    tiles = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    mosaic = tile_mosaic(tiles, columns=3, pad=1)
    assert grid_shape(5, 3) == (2, 3)
    assert mosaic.shape == (2 * 3 - 1, 3 * 4 - 1)
    np.testing.assert_array_equal(mosaic[3:5, 4:7], tiles[4])
    assert np.isnan(mosaic[2]).all() and np.isnan(mosaic[:, 3]).all()
    assert np.isnan(mosaic[3:, 8:]).all()  # the sixth cell stays empty


def test_rgb_filters_scaled_per_filter(rng):
    weight = rng.standard_normal((12, 3, 5, 5))
    weight[3] *= 100  # one filter much larger: per-filter scaling still uses the full range
    tiles, columns, color = filter_tiles(weight)
    assert color and tiles.shape == (12, 5, 5, 3)
    assert np.allclose(tiles.reshape(12, -1).min(1), 0) and np.allclose(tiles.reshape(12, -1).max(1), 1)
    np.testing.assert_allclose(tiles[0, 1, 2], (weight[0, :, 1, 2] - weight[0].min()) / np.ptp(weight[0]))


def test_gray_filters_one_scale_zero_is_mid_gray(rng):
    weight = rng.standard_normal((4, 6, 3, 3))
    weight[0, 0, 0, 0] = 0.0
    tiles, columns, color = filter_tiles(weight, max_channels=5)
    assert not color and columns == 5 and tiles.shape == (4 * 5, 3, 3)
    assert tiles[0, 0, 0] == 0.5
    limit = np.percentile(np.abs(weight[:, :5]), 99)
    np.testing.assert_allclose(tiles[7], np.clip(0.5 + weight[1, 2] / (2 * limit), 0, 1))
    assert ((tiles == 0) | (tiles == 1)).sum() >= 1  # the largest 1% saturate


def test_plot_filters_png(tmp_path, rng):
    model = tiny_net(rng)
    path = tmp_path / "filters.png"
    fig = plot_filters(model, path=path)
    pixels, size = read_png(path)
    w, h = fig.get_size_inches() * fig.dpi
    assert size == (round(w), round(h))
    assert_not_blank(pixels)
    assert "8 filters 3x5x5" in fig._suptitle.get_text()
    fig = plot_filters(model, "conv2", path=tmp_path / "conv2.svg")
    assert (tmp_path / "conv2.svg").read_text().startswith("<?xml")
    assert "16 filters 8x3x3" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="not a convolution"):
        plot_filters(model, "features.1")
    with pytest.raises(ValueError, match="unknown layer 'nope'.*features.0 \\(Conv2d\\)"):
        plot_filters(model, "nope")


# -- layers and activations --------------------------------------------------------------------
def test_capture_outputs_restores_forward_and_can_stop_early(rng):
    model = tiny_net(rng)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    outputs, logits = capture_outputs(model, x, ["features.2", "classifier.0"])
    assert outputs["features.2"].shape == (2, 8, 8, 8)
    np.testing.assert_array_equal(outputs["classifier.0"], logits)
    assert all("forward" not in vars(m) for m in model.modules())
    early, none = capture_outputs(model, x, ["features.0"], stop_early=True)
    assert none is None and early["features.0"].shape == (2, 8, 16, 16)
    assert resolve_layer(model, "conv2")[0] == "features.3"


def test_display_layers_opens_containers_within_budget(rng):
    model = tiny_net(rng)
    assert display_layers(model) == [f"features.{i}" for i in range(6)] + ["flatten", "classifier.0"]
    assert display_layers(model, max_layers=4) == ["features", "flatten", "classifier"]


def test_activation_panel_tiles():
    volume = np.arange(20 * 4 * 5, dtype=float).reshape(20, 4, 5)
    mosaic, tiles = activation_panel(volume, max_slices=16)
    assert tiles == 16 and mosaic.shape == (4, 16 * 6 - 1)
    np.testing.assert_array_equal(mosaic[:, 6:11], volume[1])
    strip, one = activation_panel(np.arange(10.0))
    assert one == 1 and strip.shape == (1, 10)
    pooled, one = activation_panel(np.arange(70.0).reshape(70, 1, 1))  # after global pooling
    assert one == 1 and pooled.shape == (2, 64) and np.isnan(pooled[1, 6:]).all()
    order, probs = top_k(np.array([0.0, 3.0, 1.0, 2.0]), 2)
    assert list(order) == [1, 3] and probs[0] > probs[1]


def test_plot_activations_png(tmp_path, rng):
    model = tiny_net(rng)
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    layers = ["features.1", "features.3", "classifier.0"]
    fig = plot_activations(model, x, classes=[f"class{i}" for i in range(10)], layers=layers, path=tmp_path / "act.png")
    pixels, size = read_png(tmp_path / "act.png")
    assert_not_blank(pixels)
    # input + top-5 panel, then one panel per layer: 8 slices, 16 slices, a strip of 10 scores
    assert len(fig.axes) == 2 + 3
    assert fig.axes[2].images[0].get_array().shape == (16, 8 * 17 - 1)
    assert fig.axes[3].images[0].get_array().shape == (6, 16 * 7 - 1)
    assert fig.axes[4].images[0].get_array().shape == (1, 10)
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert len(labels) == 5 and all(label.startswith("class") for label in labels)
    # the class-score strip names its classes; gaps between tiles are not white (white = a layer's maximum)
    assert [t.get_text() for t in fig.axes[4].get_xticklabels()] == [f"class{i}" for i in range(10)]
    assert "class scores" in fig.axes[4].get_title(loc="left")
    from matplotlib.colors import to_rgba

    for ax in fig.axes[2:]:
        bad = ax.images[0].get_cmap().get_bad()
        assert tuple(bad) != to_rgba("white") and bad[3] == 1.0
    assert model.training  # the mode is restored


# -- receptive fields and patches --------------------------------------------------------------
def test_receptive_field_arithmetic(rng):
    model = tiny_net(rng)
    # conv5 pad 2: 5 px, start -2; pool2: 6 px, jump 2; conv3: 6 + 2*2 = 10; pool2: 12, jump 4
    assert receptive_field(model, "features.0") == ReceptiveField((5, 5), (1, 1), (-2, -2))
    assert receptive_field(model, "features.2") == ReceptiveField((6, 6), (2, 2), (-2, -2))
    assert receptive_field(model, "features.4") == ReceptiveField((10, 10), (2, 2), (-2, -2))
    assert receptive_field(model, "features.5") == ReceptiveField((12, 12), (4, 4), (-2, -2))
    assert receptive_field(model, "classifier.0").whole_input
    rf = receptive_field(model, "features.3")
    assert rf.window(2, 3) == (2, 12, 4, 14)
    assert rf.window(0, 0, input_hw=(16, 16)) == (0, 8, 0, 8)  # clipped to the image


def _gradient_support(model, layer, x, row, col, channel=0):
    """Bounding box of the input pixels with a nonzero d unit / d input (empirical receptive field)."""
    truncated = Sequential(*[m for _, m in list(model.named_children())][: layer + 1])
    y = truncated(x)
    dy = np.zeros_like(y)
    dy[0, channel, row, col] = 1
    support = np.abs(truncated.backward(dy)).sum(axis=(0, 1)) > 0
    rows, cols = np.nonzero(support)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_receptive_field_matches_gradient_support(rng):
    # stride, padding, dilation, rectangular kernel, average pooling (every tap gets gradient)
    model = Sequential(
        Conv2d(1, 2, (3, 5), stride=(1, 2), padding=(1, 2), dtype=np.float64, generator=rng),
        AvgPool2d(2),
        Conv2d(2, 2, 3, dilation=2, padding=1, dtype=np.float64, generator=rng),
    )
    x = rng.standard_normal((1, 1, 24, 40))
    rf = receptive_field(model, "2")
    # rows: 3 -> pool 3 + 1 = 4 (jump 2) -> dilated 3x3 spans 5: 4 + 4*2 = 12
    # cols: 5 (jump 2) -> pool 5 + 2 = 7 (jump 4) -> 7 + 4*4 = 23
    assert rf.size == (12, 23) and rf.jump == (2, 4)
    for row, col in [(3, 3), (4, 5)]:  # interior units: the window is exactly what they see
        assert _gradient_support(model, 2, x, row, col) == rf.window(row, col, input_hw=(24, 40))
    # at the border the window reaches into the padding; what the unit sees lies inside it
    top, bottom, left, right = _gradient_support(model, 2, x, 0, 0)
    w_top, w_bottom, w_left, w_right = rf.window(0, 0)
    assert w_top < 0 and w_top <= top and bottom <= w_bottom and w_left <= left and right <= w_right


def test_receptive_field_of_residual_block_is_union(rng):
    body = Sequential(Conv2d(2, 2, 3, padding=1, generator=rng), ReLU(), Conv2d(2, 2, 3, padding=1, generator=rng))
    model = Sequential(Conv2d(1, 2, 3, stride=2, padding=1, generator=rng), Residual(body),
                       Residual(Conv2d(2, 2, 1, generator=rng)))
    assert receptive_field(model, "1") == ReceptiveField((11, 11), (2, 2), (-5, -5))
    assert receptive_field(model, "1.body.0") == ReceptiveField((7, 7), (2, 2), (-3, -3))
    assert receptive_field(model, "2") == receptive_field(model, "1")


def test_top_activations_and_crops(rng):
    model = tiny_net(rng)
    images = rng.integers(0, 256, size=(20, 3, 16, 16)).astype(np.uint8)
    found = top_activations(model, images, "features.3", channel=5, k=4, batch_size=7)
    x = images.astype(np.float32) / 255
    y = model.features[:4](x)[:, 5]
    best = y.reshape(20, -1).max(1)
    assert [a.index for a in found] == list(np.argsort(-best)[:4])
    rf = receptive_field(model, "features.3")
    for a in found:
        assert a.value == pytest.approx(best[a.index], rel=1e-6)
        assert y[a.index, a.row, a.col] == pytest.approx(a.value, rel=1e-6)
        assert a.window == rf.window(a.row, a.col)
        assert crop_window(images[a.index], a.window).shape == (3, 10, 10)
    patch = crop_window(images[0], (-2, 8, 10, 20), fill=7)
    assert (patch[:, :2] == 7).all() and (patch[:, :, 6:] == 7).all()
    np.testing.assert_array_equal(patch[:, 2:, :6], images[0][:, :8, 10:16])


def test_plot_patches_png(tmp_path, rng):
    model = tiny_net(rng, in_channels=1)
    images = rng.integers(0, 256, size=(12, 1, 16, 16)).astype(np.uint8)
    fig = plot_patches(model, images, "conv2", 0, k=5, labels=np.arange(12) % 10, path=tmp_path / "p.png")
    assert len(fig.axes) == 2 * 5
    assert fig.axes[0].images[0].get_array().shape == (10, 10)  # the receptive field
    assert_not_blank(read_png(tmp_path / "p.png")[0])


# -- saliency -----------------------------------------------------------------------------------
def test_saliency_equals_finite_differences(rng):
    model = Sequential(Conv2d(2, 3, 3, padding=1, dtype=np.float64, generator=rng), ReLU(), MaxPool2d(2),
                       Flatten(), Linear(3 * 3 * 3, 4, dtype=np.float64, generator=rng))
    x = rng.standard_normal((1, 2, 6, 6))
    for p in model.parameters():
        p.grad = np.full_like(p.data, 7.0)
    gradient, target, logits = input_gradient(model, x, target=2)
    assert all((p.grad == 7.0).all() for p in model.parameters())  # parameter gradients untouched
    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (model(plus)[0, 2] - model(minus)[0, 2]) / (2 * eps)
    np.testing.assert_allclose(gradient, numeric[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(saliency_map(gradient), np.abs(numeric[0]).max(axis=0), rtol=1e-6, atol=1e-9)


def test_occlusion_finds_the_evidence():
    # a "model" whose class 1 score is the mean of the top-left 4x4 corner: hiding it hurts class 1
    model = Sequential(AvgPool2d(4), Flatten(), Linear(4, 2, dtype=np.float64))
    model[2].weight.data[:] = [[0, 0, 0, 0], [20, 0, 0, 0]]
    model[2].bias.data[:] = 0
    x = np.ones((1, 1, 8, 8))
    drop, target, p = occlusion(model, x, size=4, stride=2)
    assert target == 1 and p > 0.99 and drop.shape == (8, 8)
    # hiding the whole corner makes both scores 0: p(class 1) falls from ~1 to 0.5
    assert drop[:2, :2].min() > 0.45 and np.abs(drop[6:, 6:]).max() < 1e-9


def test_plot_saliency_png(tmp_path, rng):
    model = tiny_net(rng)
    x = rng.standard_normal((3, 16, 16)).astype(np.float32)
    fig = plot_saliency(model, x, classes=[f"c{i}" for i in range(10)], path=tmp_path / "s.png")
    assert len(fig.axes) == 5  # three panels and two colour bars
    assert fig.axes[1].images[0].get_array().shape == (16, 16)
    assert_not_blank(read_png(tmp_path / "s.png")[0])


def test_receptive_field_through_zoo_residual_blocks():
    pytest.importorskip("cnnkit.models.cifar_resnet", reason="the model zoo is not merged yet")
    from cnnkit import models

    model = models.create("resnet20").double().eval()
    # stem 3x3 (3 px), block 1.0 adds two 3x3 (7 px); the stride-2 block sees 21 px, jump 2
    assert receptive_field(model, "layer1.0") == ReceptiveField((7, 7), (1, 1), (-3, -3))
    rf = receptive_field(model, "layer2.0")
    assert rf == ReceptiveField((21, 21), (2, 2), (-10, -10))
    assert receptive_field(model, "layer2.0.relu") == rf
    # empirically: changing an input row changes unit (8, 8) of layer2.0 only inside rows 6..26
    top, bottom, _, _ = rf.window(8, 8)
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32))
    base = capture_outputs(model, x, ["layer2.0"], stop_early=True)[0]["layer2.0"][0, :, 8, 8]
    for row, inside in ((top - 1, False), (top, True), (bottom - 1, True), (bottom, False)):
        shifted = x.copy()
        shifted[0, :, row] += 1.0
        unit = capture_outputs(model, shifted, ["layer2.0"], stop_early=True)[0]["layer2.0"][0, :, 8, 8]
        assert (np.abs(unit - base).max() > 1e-12) == inside, row
