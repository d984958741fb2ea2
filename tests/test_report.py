"""results.json and report.html of a real (tiny) training run: one evaluation on the whole test set,
the numbers the CLI prints are the page's, the settings are shown, `cnnkit report` rebuilds the
page for runs without one."""
import json
import re

import numpy as np
import pytest

import cnnkit
from cnnkit.cli import main
from cnnkit.train.results import (Evaluation, active_backend, evaluate_model, read_results, results_dict,
                                  write_results)
from cnnkit.viz.report import confusion_on, evaluate_on, write_report


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The bundled digits, 2 epochs (seconds), diagnostics every 10 steps, report written by train."""
    out = tmp_path_factory.mktemp("report-run")
    assert main(["train", "--epochs", "2", "--out", str(out), "--no-progress", "--diagnostics", "10"]) == 0
    return out


def headline(page: str) -> float:
    return float(re.search(r'id="test-accuracy" data-value="([^"]+)"', page).group(1))


def test_results_json_holds_the_test_figures_and_settings(run_dir, capsys):
    results = read_results(run_dir)
    test_set = cnnkit.data.load("digits", "test")
    assert results["test_images"] == len(test_set) == 359
    assert results["test_correct"] == round(results["test_top1"] * 359)
    assert "test_top5" not in results  # 10 classes: top-5 does not apply
    best = cnnkit.io.load_checkpoint(run_dir / "best.safetensors")
    assert results["checkpoint"] == "best.safetensors" and results["best_epoch"] == best.training_state["epoch"]
    assert results["epochs"] == 2 and results["wall_time_s"] > 0 and results["images_per_s"] > 0
    settings = results["settings"]
    assert settings["model"] == "digitnet" and settings["parameters"] == sum(p.size for p in best.model.parameters())
    assert (settings["optimizer"], settings["lr"], settings["schedule"], settings["batch_size"]) == ("sgd", 0.05, "cosine", 32)
    assert settings["images"] == {"train": 1294, "val": 144, "test": 359}
    assert settings["augment"] is False and settings["seed"] == 0 and settings["backend"] == active_backend()[0]
    assert settings["cnnkit_version"] == cnnkit.__version__
    # one evaluation of the whole test set, the same as an independent pass over it
    again = evaluate_on(best.model, test_set, "digits")
    assert again.top1 == results["test_top1"] and again.loss == pytest.approx(results["test_loss"], rel=1e-12)
    assert confusion_on(best.model, test_set, "digits").sum() == 359  # no 2,000-image limit any more


def test_report_headline_equals_results_and_the_matrix(run_dir):
    page = (run_dir / "report.html").read_text()
    results = read_results(run_dir)
    assert headline(page) == results["test_top1"]
    assert f">{results['test_top1']:.2%}</span>" in page
    assert f"accuracy {results['test_top1']:.2%} on 359 test images" not in page  # the matrix is a figure...
    assert "one evaluation on all 359 test images" in page  # ...and the page says where every number comes from
    epoch = results["best_epoch"]
    assert f"<code>best.safetensors</code>: the weights after epoch {epoch} of 2" in page
    assert "<title>digitnet on digits - cnnkit report</title>" in page and "cnnkit run run" not in page
    for row in ("model</th><td>digitnet (38,282 parameters)", "optimizer</th><td>SGD, momentum 0.9, weight decay 0.0005",
                "learning rate</th><td>0.05, cosine decay to 0", "batch size</th><td>32", "augmentation</th><td>none",
                "seed</th><td>0", "data folder</th><td>bundled with scikit-learn", f"backend</th><td>{active_backend()[0]}",
                f"cnnkit version</th><td>{cnnkit.__version__}"):
        assert row in page
    # per-class table: one row per digit, accuracy (recall) and precision; confused pairs with images
    table = page.split('<table class="classes">')[1].split("</table>")[0]
    assert table.count("<tr>") == 11
    assert "Most confused pairs" in page and 'class="digit"' in page
    assert "What stands out" in page or "Nothing stands out" in page  # the diagnostics in words
    assert "1 epochs" not in page and "0.9" + "861" not in page
    assert "http" not in page


def test_per_class_figures_match_the_evaluation(run_dir):
    page = (run_dir / "report.html").read_text()
    best = cnnkit.io.load(run_dir / "best.safetensors")
    evaluation = evaluate_on(best, cnnkit.data.load("digits", "test"), "digits")
    cm = evaluation.confusion()
    rows = re.findall(r"<tr><td>(\d)</td><td>(\d+)</td><td>(\d+)</td><td>([\d.]+)%</td><td>([\d.]+|–)%?</td>",
                      page.split('<table class="classes">')[1])
    assert len(rows) == 10
    for name, images, correct, recall, precision in rows:
        i = int(name)
        assert int(images) == cm[i].sum() and int(correct) == cm[i, i]
        assert float(recall) == pytest.approx(100 * cm[i, i] / cm[i].sum(), abs=0.05)
        if precision != "–":
            assert float(precision) == pytest.approx(100 * cm[i, i] / cm[:, i].sum(), abs=0.05)
    off = cm - np.diag(np.diag(cm))
    if off.any():
        true, pred = np.unravel_index(np.argmax(off), off.shape)
        assert f"<b>{true}</b> taken for <b>{pred}</b>: {off[true, pred]} image" in page


def test_steps_csv_records_every_step(run_dir):
    from cnnkit.viz.curves import read_steps

    steps = read_steps(run_dir)
    per_epoch = int(np.ceil(1294 / 32))
    assert [s[0] for s in steps] == list(range(1, 2 * per_epoch + 1))
    assert {s[1] for s in steps} == {1, 2} and all(np.isfinite(s[2]) for s in steps)
    assert steps[0][3] == 0.05  # the rate used by the step


def test_cnnkit_report_rebuilds_a_no_report_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--limit", "400", "--out", str(out), "--no-progress", "--no-report"]) == 0
    assert not (out / "report.html").exists()
    printed = capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.strip().endswith(f"report: {out / 'report.html'}")
    page = (out / "report.html").read_text()
    results = read_results(out)
    assert headline(page) == results["test_top1"]  # the same evaluation, repeated bit for bit
    assert f"test accuracy {results['test_top1']:.2%}" in printed and f"test accuracy {results['test_top1']:.2%}" in text
    assert "results.json (written at the end of training) says" not in page
    assert "training images used</th><td>the first 400 (--limit)" in page
    assert "best epoch" in page and ">1</span> of 1" in page  # "1 of 1", never "1 epochs"
    # a results.json that no longer matches the checkpoint is pointed out, the page shows the new evaluation
    results["test_top1"] = 0.5
    (out / "results.json").write_text(json.dumps(results))
    assert main(["report", str(out), "--examples", "0"]) == 0
    page = (out / "report.html").read_text()
    assert "results.json (written at the end of training) says 50.00%" in page and headline(page) != 0.5


def test_report_for_an_old_run_and_bad_folders(tmp_path, run_dir):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("history.json", "best.safetensors"):
        (old / name).write_bytes((run_dir / name).read_bytes())
    page = write_report(old, examples=0).read_text()
    assert "predates it" in page and "Activations" not in page
    assert headline(page) == read_results(run_dir)["test_top1"]
    with pytest.raises(FileNotFoundError, match="no run directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a run folder of `cnnkit train`"):
        write_report(tmp_path / "empty")
    with pytest.raises(ValueError, match="checkpoint 'nope.safetensors' is not a file"):
        write_report(old, checkpoint="nope.safetensors")
    with pytest.raises(ValueError, match="no last checkpoint"):
        write_report(old, checkpoint="last")
    with pytest.raises(ValueError, match="examples must be a whole number >= 0, got -1"):
        write_report(old, examples=-1)
    assert main(["report", str(tmp_path / "empty")]) == 1


def test_report_files_are_data_not_markup(tmp_path, run_dir):
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "best.safetensors").write_bytes((run_dir / "best.safetensors").read_bytes())
    results = read_results(run_dir)
    results["settings"]["seed"] = "<script>alert(1)</script>"
    results["finished"] = "<img src=x onerror=alert(1)>"
    (hostile / "results.json").write_text(json.dumps(results))
    (hostile / "history.json").write_text("[not json")
    page = write_report(hostile, examples=0).read_text()
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert "no training curves" in page  # the broken history is a note, not a crash
    (hostile / "history.json").write_text("[1, 2]")
    assert "must hold one object of figures per epoch" in write_report(hostile, examples=0).read_text()
    (hostile / "results.json").write_text(json.dumps({"format": "something else"}))
    assert "no results.json: " in write_report(hostile, examples=0).read_text()


def test_evaluation_and_results_file(tmp_path):
    from cnnkit.data import DataLoader
    from cnnkit.data.dataset import Dataset
    from cnnkit.optim import SGD
    from cnnkit.train import Trainer

    rng = np.random.default_rng(0)
    model = cnnkit.nn.Sequential(cnnkit.nn.Flatten(), cnnkit.nn.Linear(12, 12))
    images = rng.integers(0, 256, (37, 1, 3, 4), dtype=np.uint8)
    data = Dataset(images, rng.integers(0, 12, 37), [f"c{i}" for i in range(12)], "toy")
    loader = DataLoader(data, 10)
    evaluation = evaluate_model(model, loader)
    expected = Trainer(model, SGD(model.parameters(), lr=0.1), out=None).evaluate(loader, topk=(1, 5))
    assert evaluation.num_classes == 12 and len(evaluation) == 37
    assert evaluation.top1 == expected["top1"] and evaluation.top5 == expected["top5"]
    assert evaluation.loss == pytest.approx(expected["loss"], rel=1e-12)
    assert evaluation.confusion().sum() == 37
    assert np.all((evaluation.confidence > 0) & (evaluation.confidence <= 1))
    ten = Evaluation(evaluation.labels % 10, evaluation.predictions % 10, evaluation.confidence, evaluation.in_top5,
                     evaluation.loss, 10)
    assert ten.top5 is None  # top-5 of 10 classes is not reported
    path = write_results(tmp_path, results_dict(evaluation, checkpoint="best.safetensors", best_epoch=3, epochs=4,
                                                wall_time_s=float("nan"), images_per_s=None, settings={"seed": 1}))
    back = read_results(tmp_path)
    assert back["test_top5"] == evaluation.top5 and back["wall_time_s"] is None and back["best_epoch"] == 3
    assert path.read_text().endswith("\n")
    path.write_text("{")
    with pytest.raises(ValueError, match="results.json is not valid JSON"):
        read_results(tmp_path)
    path.write_text(json.dumps({"format": "cnnkit-results", "test_top1": "high"}))
    with pytest.raises(ValueError, match="test_top1 must be a number, got 'high'"):
        read_results(tmp_path)


def test_backend_is_read_defensively(monkeypatch):
    import cnnkit.backend as backend

    monkeypatch.delattr(backend, "active_backend", raising=False)
    assert active_backend() == ("numpy", None)
    monkeypatch.setattr(backend, "active_backend", lambda: "onednn", raising=False)
    assert active_backend() == ("onednn", None)
    monkeypatch.setattr(backend, "active_backend", lambda: ("numpy", "onednn: not installed"), raising=False)
    assert active_backend() == ("numpy", "onednn: not installed")

    def broken():
        raise RuntimeError("no library")

    monkeypatch.setattr(backend, "active_backend", broken, raising=False)
    assert active_backend() == ("numpy", None)


def test_steps_survive_a_resume(tmp_path):
    from cnnkit.data import DataLoader
    from cnnkit.optim import SGD
    from cnnkit.train import Checkpoint, HistoryWriter, Trainer
    from cnnkit.viz.curves import read_steps

    train = cnnkit.data.load("digits", "train").subset(np.arange(96))

    def trainer():
        model = cnnkit.models.create("digitnet")
        loader = DataLoader(train, 32, shuffle=True, seed=0)
        callbacks = [HistoryWriter(tmp_path), Checkpoint(tmp_path)]
        return Trainer(model, SGD(model.parameters(), lr=0.05), callbacks=callbacks, out=None), loader

    first, loader = trainer()
    first.fit(loader, epochs=1)
    before = read_steps(tmp_path)
    assert [s[:2] for s in before] == [(1, 1), (2, 1), (3, 1)]
    second, loader = trainer()
    second.resume(tmp_path / "last.safetensors", loader)
    second.fit(loader, epochs=2)
    steps = read_steps(tmp_path)
    assert [s[:2] for s in steps] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert steps[:3] == before  # the first epoch's steps are kept, not rewritten or lost


def test_a_model_that_answers_one_class_is_called_out(tmp_path, run_dir):
    folder = tmp_path / "collapsed"
    folder.mkdir()
    (folder / "best.safetensors").write_bytes((run_dir / "best.safetensors").read_bytes())
    labels = cnnkit.data.load("digits", "test").labels
    stuck = Evaluation(labels, np.full_like(labels, 3), np.ones(labels.size), labels < 5, 2.3, 10)
    page = write_report(folder, examples=0, evaluation=stuck).read_text()
    assert "The model answers 3 for 100% of the test images, which are 10% 3: it has collapsed" in page
    assert headline(page) == stuck.top1 and "Nothing stands out" not in page
