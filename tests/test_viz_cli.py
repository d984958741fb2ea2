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
    [path] = run(["report", str(run_dir), "--examples", "1"], capsys)
    page = open(path).read()
    assert path == str(run_dir / "report.html")
    for heading in ("Training curves", "Per-layer diagnostics", "Confusion matrix", "First-layer filters",
                    "Activations: test image 0"):
        assert f"<h2>{heading}" in page
    assert page.count('<img src="data:image/png;base64,') == 5
    assert "http" not in page  # nothing to fetch: it opens offline
