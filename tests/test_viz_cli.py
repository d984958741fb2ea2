"""`cnnkit viz ...`: each picture command writes its file and prints the path (digitnet on the
bundled digits, so no download)."""
import argparse
import json

import pytest

from cnnkit import io, models
from cnnkit.cli import viz as viz_cli


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="cnnkit viz")
    viz_cli.add_arguments(parser)
    assert viz_cli.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out.split()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    model = models.create("digitnet")
    model.config = {**model.config, "dataset": "digits", "input_shape": [1, 8, 8], "classes": [str(i) for i in range(10)]}
    io.save(model, folder / "best.safetensors")
    rows = [{"epoch": e, "lr": 0.05, "train_loss": 1.0 / e, "train_top1": 0.5 + 0.1 * e, "val_loss": 1.1 / e,
             "val_top1": 0.5 + 0.09 * e} for e in (1, 2, 3)]
    (folder / "history.json").write_text(json.dumps(rows))
    return folder


def test_picture_commands_write_their_files(run_dir, capsys, tmp_path):
    ckpt = str(run_dir / "best.safetensors")
    outputs = {
        "filters": run(["filters", ckpt, "--layer", "conv2"], capsys),
        "patches": run(["patches", ckpt, "--layer", "2", "--channel", "1", "--limit", "60", "-k", "4"], capsys),
        "saliency": run(["saliency", ckpt, "test:5", "--target", "3"], capsys),
        "curves": run(["curves", str(run_dir)], capsys),
        "demo": run(["conv-demo", "--size", "3", "--channels", "1", "--filters", "1", "--out",
                     str(tmp_path / "d.html")], capsys),
    }
    assert outputs["filters"] == [str(run_dir / "viz" / "filters-2.png")]
    assert outputs["curves"] == [str(run_dir / "curves.png")]
    for paths in outputs.values():
        for path in paths:
            with open(path, "rb") as f:
                head = f.read(16)
            assert head.startswith(b"\x89PNG") or b"<" in head


def test_bad_arguments_are_clear(run_dir, capsys):
    ckpt = str(run_dir / "best.safetensors")
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        run(["filters", ckpt, "--layer", "nope"], capsys)
    with pytest.raises(ValueError, match="--steps must name steps between 0 and 17"):
        run(["conv-demo", "--steps", "18", "--out", "x.png"], capsys)
    with pytest.raises(ValueError, match="neither a class index nor one of the classes"):
        run(["saliency", ckpt, "test:0", "--target", "cat"], capsys)


def test_report_html_is_self_contained(run_dir, capsys):
    (run_dir / "diagnostics.json").write_text(json.dumps(
        [{"step": s, "epoch": 1, "layers": {"0": {"act_std": 1.0, "grad_norm": 0.1, "update_ratio": 1e-3}}}
         for s in (1, 10)]))
    [path] = run(["report", str(run_dir), "--examples", "1"], capsys)[-1:]
    page = open(path).read()
    assert path == str(run_dir / "report.html")
    for heading in ("Test results", "Settings", "Training curves", "Per-layer diagnostics", "Test set in detail",
                    "First-layer filters", "Activations"):
        assert f"<h2>{heading}</h2>" in page
    # curves, diagnostics, matrix, filters, one activation figure, and the misclassified test images
    assert page.count('<img src="data:image/png;base64,') == 5 and page.count('<img class="digit" src="data:') >= 1
    assert "<h3>test image 0: true class" in page and page.count("<h3>test image") == 1
    assert "http" not in page  # nothing to fetch: it opens offline
    assert "predates it" in page  # no results.json: the settings come from the checkpoint and history


def test_conv_demo_geometry_that_does_not_fit(capsys, tmp_path):
    out = run(["conv-demo", "--size", "7", "--pad", "0", "--stride", "3", "--out", str(tmp_path / "d.html")], capsys)
    assert "2.33 is not a whole number" in " ".join(out) and out[-1] == str(tmp_path / "d.html")
    assert "never seen" in (tmp_path / "d.html").read_text()
    out = run(["conv-demo", "--size", "7", "--pad", "0", "--stride", "3", "--out", str(tmp_path / "d.gif")], capsys)
    assert out[-1] == str(tmp_path / "d.png") and (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="--size must be between 1 and 16 for the demo, got 40"):
        run(["conv-demo", "--size", "40"], capsys)
    with pytest.raises(ValueError, match="--out must end in"):
        run(["conv-demo", "--out", str(tmp_path / "d.txt")], capsys)


def test_conv_demo_help_explains_every_option(capsys):
    from cnnkit.cli import main

    with pytest.raises(SystemExit):
        main(["viz", "conv-demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(5 - 3 + 2*1)/2 + 1 = 3" in text
    for option, default in (("--size", 5), ("--channels", 3), ("--filters", 2), ("--kernel", 3), ("--stride", 2),
                            ("--pad", 1), ("--seed", 0)):
        assert f"{option} {option[2:].upper()}" in text and f"(default {default})" in text
