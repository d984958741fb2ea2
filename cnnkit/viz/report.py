"""``report.html``: one static page that answers "how did my run go?", opened in any browser.

In reading order: the test figures first (accuracy, loss, top-5 where it applies, best epoch,
wall time, images/s), which checkpoint they come from, the settings of the run, the training
curves (every step's loss, epoch averages, validation, learning rate), the per-layer diagnostics
with what they say in words, then the test set in detail (confusion matrix, per-class accuracy,
precision and recall, the most confused pairs with misclassified images), the first layer's
filters and the activation maps of a few test images.

Every test-set figure comes from ONE evaluation of the checkpoint on the whole test split (the one
``cnnkit train`` prints and writes to ``results.json``; ``cnnkit report`` repeats it with the same
batches and checks it against ``results.json``). Images are embedded as PNG data, the page loads
nothing else, so it works offline and survives a moved folder. Everything read from the run folder
is escaped: the files are data, not markup.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ._figure import figure_png_bytes, png_data_uri

EVAL_BATCH_SIZE = 500  # cnnkit train's test batches: the same batches give bit-identical numbers
CHECKPOINT_STEMS = ("best", "last")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".npz")
MAX_CLASS_ROWS = 50  # more classes than this: the table lists the worst ones
CONFUSED_PAIRS = 5
EXAMPLES_PER_PAIR = 4


def model_input(images, dataset_name, dtype=np.float32):
    """uint8 ``(N, C, H, W)`` images -> the model's input: [0, 1] then the dataset's
    normalisation (as ``cnnkit train`` does)."""
    from ..data.transforms import DATASET_STATS, Normalize

    x = np.asarray(images).astype(dtype) / 255.0
    if dataset_name in DATASET_STATS:
        x = Normalize.for_dataset(dataset_name)(x, None)
    return x


def evaluate_on(model, dataset, dataset_name, limit: int | None = None, batch_size: int = EVAL_BATCH_SIZE):
    """One pass of ``model`` over (the first ``limit`` images of) ``dataset``, fed exactly as
    ``cnnkit train`` feeds its test set. Returns a :class:`cnnkit.train.results.Evaluation`."""
    from ..data import DataLoader
    from ..data.transforms import DATASET_STATS, Normalize
    from ..train.results import evaluate_model

    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive number of images, got {limit}")
        dataset = dataset.subset(np.arange(min(limit, len(dataset))))
    transform = Normalize.for_dataset(dataset_name) if dataset_name in DATASET_STATS else None
    loader = DataLoader(dataset, batch_size, transform=transform, dtype=model.dtype)
    return evaluate_model(model, loader, len(dataset.classes))


def confusion_on(model, dataset, dataset_name, limit: int | None = None, batch_size: int = EVAL_BATCH_SIZE):
    """Confusion matrix of ``model`` on ``dataset`` (all of it unless ``limit`` is given)."""
    return evaluate_on(model, dataset, dataset_name, limit, batch_size).confusion()


def find_checkpoint(run_dir, checkpoint: str | None = None) -> Path | None:
    """The checkpoint a report shows: ``checkpoint`` (``best``, ``last`` or a file name in the run
    folder), else ``best``, else ``last`` (with the suffix ``cnnkit train`` wrote); None if none."""
    run_dir = Path(run_dir)
    if checkpoint is None:
        stems = CHECKPOINT_STEMS
    elif checkpoint in CHECKPOINT_STEMS:
        stems = (checkpoint,)
    else:
        path = Path(checkpoint) if Path(checkpoint).is_absolute() else run_dir / checkpoint
        if not path.is_file():
            raise ValueError(f"checkpoint {checkpoint!r} is not a file in {run_dir} (use best, last or a file name)")
        return path
    found = [run_dir / f"{stem}{suffix}" for stem in stems for suffix in CHECKPOINT_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if checkpoint is not None and not found:
        raise ValueError(f"no {checkpoint} checkpoint in {run_dir} "
                         f"(looked for {checkpoint}{'/'.join(CHECKPOINT_SUFFIXES)})")
    return found[0] if found else None


def write_report(run_dir, data_dir=None, checkpoint: str | None = None, examples: int = 2, evaluation=None,
                 log=None) -> Path:
    """Write ``run_dir/report.html`` for a run of ``cnnkit train`` and return its path.

    Args:
        run_dir: the run folder (``history.json``, ``steps.csv``, ``results.json``, checkpoints).
        data_dir: where the test data is (default: the folder ``results.json`` names, else
            ``$CNNKIT_DATA`` / ``~/.cache/cnnkit``). Nothing is downloaded.
        checkpoint: ``best`` (default, else ``last``), ``last`` or a file name in ``run_dir``.
        examples: test images whose activation maps are shown.
        evaluation: the evaluation of that checkpoint on the whole test set, when the caller
            already has it (``cnnkit train``); otherwise it is computed here.
        log: called with a line of progress (e.g. ``print``) before slow steps.

    Parts without their inputs are left out with a note (no history, no checkpoint, the test data
    not found), so a report can be written for any run folder; a folder that holds none of a
    run's files raises ``ValueError``.
    """
    from .. import io
    from ..train.results import read_results
    from .curves import read_history, read_steps

    if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
        raise ValueError(f"examples must be a whole number >= 0, got {examples!r}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    log = log or (lambda message: None)
    notes: list[str] = []
    results = _attempt(lambda: read_results(run_dir), notes, "results.json")
    history = _attempt(lambda: read_history(run_dir), notes, "training curves") if _has_history(run_dir) else None
    steps = _attempt(lambda: read_steps(run_dir), notes, "per-step loss") or []
    records = _attempt(lambda: json.loads((run_dir / "diagnostics.json").read_text()), notes, "diagnostics") \
        if (run_dir / "diagnostics.json").exists() else None
    ckpt_path = find_checkpoint(run_dir, checkpoint)
    if results is None and history is None and ckpt_path is None:
        raise ValueError(f"{run_dir} is not a run folder of `cnnkit train`: it holds no results.json, history.json "
                         "or checkpoint")
    loaded = None
    if ckpt_path is not None:
        log(f"loading {ckpt_path}")
        loaded = io.load_checkpoint(ckpt_path)
    else:
        notes.append(f"no checkpoint in {run_dir}: no confusion matrix, filters or activations")
    model = loaded.model if loaded else None
    config = (getattr(model, "config", None) or {}) if model is not None else {}
    state = loaded.training_state if loaded and isinstance(loaded.training_state, dict) else {}
    settings = (results or {}).get("settings") or {}
    dataset_name = config.get("dataset") or settings.get("dataset")

    test_set = None
    if model is not None and dataset_name:
        test_set = _load_test_set(dataset_name, data_dir, settings, notes)
    if evaluation is None and test_set is not None:
        log(f"evaluating {ckpt_path.name} on the {len(test_set)} test images of {dataset_name}")
        if settings.get("tta"):  # the run's test figures average each image with its mirror image
            from ..train.tta import FlipAveraged

            evaluation = evaluate_on(FlipAveraged(model), test_set, dataset_name)
        else:
            evaluation = evaluate_on(model, test_set, dataset_name)
        log(f"test accuracy {evaluation.top1:.2%} ({evaluation.correct} of {len(evaluation)} images), "
            f"loss {evaluation.loss:.4f}")
    if evaluation is not None and test_set is not None and len(evaluation) != len(test_set):
        raise ValueError(f"the evaluation covers {len(evaluation)} images but the test set has {len(test_set)}: "
                         "a report shows the whole test set")
    classes = list(test_set.classes) if test_set is not None else list(config.get("classes") or [])
    if results is not None and evaluation is not None:
        _compare(results, evaluation, ckpt_path, notes)

    run = _Run(run_dir, results, history, steps, records, ckpt_path, state, model, config, dataset_name,
               test_set, evaluation, classes, loaded.metadata if loaded else {})
    log("drawing the figures")
    sections = [_headline(run), _settings_section(run), _curves_section(run), _diagnostics_section(run),
                _test_section(run), _filters_section(run), _activations_section(run, examples)]
    sections = [part for part in sections if part]
    body = [_header(run, sections), *[f'<p class="note">{html.escape(n)}</p>' for n in notes], *sections,
            _files_footer(run)]
    path = run_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_page(_title(run), "\n".join(part for part in body if part)))
    tmp.replace(path)
    return path


# -- reading the run folder -----------------------------------------------------------------------
class _Run:
    """What the sections need, gathered once."""

    def __init__(self, run_dir, results, history, steps, records, ckpt_path, state, model, config, dataset_name,
                 test_set, evaluation, classes, metadata):
        self.run_dir, self.results, self.history, self.steps, self.records = run_dir, results, history, steps, records
        self.ckpt_path, self.state, self.model, self.config = ckpt_path, state, model, config
        self.dataset_name, self.test_set, self.evaluation, self.classes = dataset_name, test_set, evaluation, classes
        self.metadata = metadata or {}
        self.settings = (results or {}).get("settings") or {}
        epoch = state.get("epoch") if state else None
        self.ckpt_epoch = int(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None
        self.epochs = len(history) if history else _number((results or {}).get("epochs"))
        self.is_best = ckpt_path is not None and ckpt_path.stem == "best"
        self.model_name = config.get("name") or self.settings.get("model") or (type(model).__name__ if model else None)


def _has_history(run_dir: Path) -> bool:
    return (run_dir / "history.json").exists() or (run_dir / "history.csv").exists()


def _attempt(read, notes, what):
    """``read()``, or None with a note when the file is unreadable (a report never fails on it)."""
    try:
        return read()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.append(f"no {what}: {exc}")
        return None


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _load_test_set(dataset_name, data_dir, settings, notes):
    from .. import data

    recorded = settings.get("data_dir")
    if data_dir is None and isinstance(recorded, str) and Path(recorded).is_dir():
        data_dir = recorded  # where the run found its data
    try:
        return data.load(dataset_name, "test", root=data_dir, download=False)
    except (OSError, ValueError, KeyError) as exc:
        notes.append(f"test data not found ({exc}); pass the data folder (--data-dir) to see the test-set figures")
        return None


def _compare(results, evaluation, ckpt_path, notes):
    recorded, images = _number(results.get("test_top1")), _number(results.get("test_images"))
    if recorded is None:
        return
    if recorded != evaluation.top1 or (images is not None and images != len(evaluation)):
        notes.append(f"results.json (written at the end of training) says {recorded:.2%} on "
                     f"{images if images is not None else '?'} test images, but this evaluation of {ckpt_path.name} "
                     f"gives {evaluation.top1:.2%} on {len(evaluation)}: the checkpoint or the test data changed since "
                     "training. This page shows the new evaluation throughout.")


# -- sections -------------------------------------------------------------------------------------
def _title(run) -> str:
    if run.model_name and run.dataset_name:
        return f"{run.model_name} on {run.dataset_name}"
    return run.model_name or "cnnkit run"


SECTION_LINKS = {"results": "Test results", "settings": "Settings", "curves": "Training curves",
                 "diagnostics": "Diagnostics", "test-set": "Test set in detail", "filters": "Filters",
                 "activations": "Activations"}


def _header(run, sections) -> str:
    finished = run.results.get("finished") if run.results else None
    facts = [f"cnnkit run report, folder <code>{_e(run.run_dir.name)}</code>"]
    if isinstance(finished, str):
        facts.append(f"training finished {_e(finished.replace('T', ' '))}")
    present = [a for a in SECTION_LINKS if any(part.startswith(f'<section id="{a}">') for part in sections)]
    nav = " · ".join(f'<a href="#{anchor}">{SECTION_LINKS[anchor]}</a>' for anchor in present)
    return f"<h1>{_e(_title(run))}</h1>\n<p class=\"sub\">{', '.join(facts)}</p>\n<nav>{nav}</nav>"


def _headline(run) -> str:
    results, ev = run.results or {}, run.evaluation
    cards = []
    if ev is not None:
        accuracy, loss, top5, images, correct = ev.top1, ev.loss, ev.top5, len(ev), ev.correct
    else:
        accuracy, loss, top5 = (_number(results.get(k)) for k in ("test_top1", "test_loss", "test_top5"))
        images, correct = _number(results.get("test_images")), _number(results.get("test_correct"))
    if accuracy is not None:
        detail = f"{correct:,} of {images:,} test images" if images is not None and correct is not None else ""
        cards.append(_card("test accuracy", f'<span id="test-accuracy" data-value="{accuracy!r}">{accuracy:.2%}</span>',
                           detail, big=True))
    else:
        cards.append(_card("test accuracy", "not measured", "no results.json and no test data"))
    if loss is not None:
        cards.append(_card("test loss", f'<span id="test-loss">{loss:.4f}</span>', "mean cross-entropy"))
    if top5 is not None:
        cards.append(_card("top-5 accuracy", f'<span id="test-top5">{top5:.2%}</span>',
                           "true class among the 5 highest"))
    best_epoch = run.ckpt_epoch if run.is_best else _number(results.get("best_epoch"))
    if best_epoch is not None:
        of = f" of {run.epochs}" if run.epochs else ""
        metric = _number(run.state.get("best_metric")) if run.is_best else None
        cards.append(_card("best epoch", f'<span id="best-epoch">{best_epoch}</span>{of}',
                           f"validation accuracy {metric:.2%}" if metric is not None else ""))
    wall, rate = _number(results.get("wall_time_s")), _number(results.get("images_per_s"))
    if wall is not None:
        cards.append(_card("training time", _duration(wall), f"{rate:,.0f} training images/s" if rate else ""))
    parts = ['<section id="results"><h2>Test results</h2>', '<div class="cards">', *cards, "</div>"]
    parts.append(f"<p>{_provenance(run)}</p>")
    if run.settings.get("val_split") == 0:
        parts.append('<p class="note">Validation used the test set (--val-split 0), so the best epoch was chosen by '
                     "its test accuracy: the test accuracy above is optimistic.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def _provenance(run) -> str:
    """Which weights every test figure comes from, in one sentence."""
    if run.ckpt_path is None:
        return "The figures above come from results.json; the run folder holds no checkpoint."
    name = f"<code>{_e(run.ckpt_path.name)}</code>"
    epoch = f"the weights after epoch {run.ckpt_epoch}" if run.ckpt_epoch is not None else "its weights"
    if run.is_best:
        why = "the epoch with the best validation accuracy"
        metric = _number(run.state.get("best_metric"))
        why += f" ({metric:.2%})" if metric is not None else ""
        epoch += f" of {run.epochs}, {why}" if run.epochs else f", {why}"
    what = "All test figures on this page (accuracy, confusion matrix, per-class table, confused pairs) and the " \
           "filters and activation maps come from"
    scope = f" one evaluation on all {len(run.evaluation):,} test images" if run.evaluation is not None else ""
    return f"{what} {name}: {epoch};{scope}." if scope else f"{what} {name}: {epoch}."


def _settings_section(run) -> str:
    s, rows = run.settings, []
    params = _number(s.get("parameters"))
    if params is None and run.model is not None:
        params = int(sum(p.size for p in run.model.parameters()))
    if run.model_name:
        rows.append(("model", f"{run.model_name}" + (f" ({params:,} parameters)" if params is not None else "")))
    images = s.get("images") if isinstance(s.get("images"), dict) else {}
    if run.dataset_name:
        splits = (("train", "training"), ("val", "validation"), ("test", "test"))
        counts = ", ".join(f"{images[k]:,} {label}" for k, label in splits if _number(images.get(k)) is not None)
        rows.append(("dataset", run.dataset_name + (f" ({counts} images)" if counts else "")))
    if s:
        if s.get("recipe") not in (None, "default"):
            rows.append(("recipe", f"{s['recipe']} (--recipe)"))
        rows.append(("data folder", s.get("data_dir")))
        rows.append(("epochs", s.get("epochs")))
        rows.append(("batch size", s.get("batch_size")))
        rows.append(("optimizer", _optimizer_text(s)))
        rows.append(("learning rate", _lr_text(s)))
        flips = "horizontal flips on alternating epochs" if s.get("flip") == "alternate" else "horizontal flips"
        rows.append(("augmentation", f"random crops and {flips}" if s.get("augment") else "none"))
        if _number(s.get("label_smoothing")):
            rows.append(("label smoothing", f"{s['label_smoothing']:g}"))
        if _number(s.get("ema")):
            rows.append(("weights evaluated", f"exponential moving average, decay {s['ema']:g}"))
        if s.get("tta"):
            rows.append(("test-time augmentation", "each image averaged with its mirror image"))
        split = _number(s.get("val_split"))
        rows.append(("validation", f"{split:.0%} of the training images held out" if split
                     else "the test set (--val-split 0)" if split == 0 else None))
        rows.append(("seed", s.get("seed")))
        if s.get("limit"):
            rows.append(("training images used", f"the first {s['limit']:,} (--limit)"))
        for key, label in (("init", "initial weights"), ("freeze", "frozen"), ("resume", "resumed from")):
            if s.get(key):
                rows.append((label, ", ".join(map(str, s[key])) if isinstance(s[key], list) else s[key]))
        rows.append(("cnnkit version", s.get("cnnkit_version")))
        why = f" ({s['backend_reason']})" if s.get("backend_reason") else ""
        rows.append(("backend", f"{s['backend']}{why}" if s.get("backend") else None))
    else:
        rows += _recovered_settings(run)
    body = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows if v is not None and v != "")
    note = "" if s else ('<p class="note">This run has no results.json (it predates it): the settings below are '
                         "what the checkpoint and the history record.</p>")
    return f'<section id="settings"><h2>Settings</h2>{note}<table class="settings">{body}</table></section>'


def _optimizer_text(s) -> str | None:
    name = s.get("optimizer")
    if not name:
        return None
    text = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}.get(name, name)
    extras = []
    if _number(s.get("momentum")):
        extras.append(f"{'Nesterov ' if s.get('nesterov') else ''}momentum {s['momentum']:g}")
    if _number(s.get("weight_decay")) is not None:
        exempt = " (not on biases and BatchNorm)" if s["weight_decay"] else ""
        extras.append(f"weight decay {s['weight_decay']:g}{exempt}")
    return text + (", " + ", ".join(extras) if extras else "")


def _lr_text(s) -> str | None:
    lr = _number(s.get("lr"))
    if lr is None:
        return None
    schedule = {"none": "constant", "step": "divided by 10 every third of the run", "cosine": "cosine decay to 0",
                "onecycle": "one-cycle (up, then down)", "plateau": "divided by 10 when validation accuracy stalls"}
    text = f"{lr:g}, {schedule.get(s.get('schedule'), s.get('schedule') or 'constant')}"
    if _number(s.get("warmup_epochs")):
        text += f", after {s['warmup_epochs']} linear warmup epoch{'s' if s['warmup_epochs'] != 1 else ''}"
    return text


def _recovered_settings(run) -> list[tuple[str, object]]:
    """What a run without results.json still tells: its history and its checkpoint's optimizer."""
    rows = []
    if run.history:
        rows.append(("epochs", len(run.history)))
        first_lr = run.history[0].get("lr")
        if _number(first_lr) is not None:
            rows.append(("learning rate", f"{first_lr:g} in the first epoch"))
    optimizer = run.state.get("optimizer")
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if isinstance(groups, list) and groups and isinstance(groups[0], dict):
        extras = [f"{key.replace('_', ' ')} {groups[0][key]:g}" for key in ("momentum", "weight_decay")
                  if _number(groups[0].get(key)) is not None]
        if extras:
            rows.append(("optimizer", ", ".join(extras)))
    rows.append(("cnnkit version", run.metadata.get("cnnkit_version")))
    rows.append(("batch size, seed, augmentation, data folder, backend", "not recorded"))
    return rows


def _curves_section(run) -> str:
    from .curves import plot_history

    if not run.history:
        return ""
    fig = plot_history(run.history, steps=run.steps, best_epoch=run.ckpt_epoch if run.is_best else None)
    caption = ("Light line: the loss of every training mini-batch; dots: the training average of each epoch and the "
               "validation set at the end of it." if run.steps else
               "Dots: the training average of each epoch and the validation set at the end of it (this run has no "
               "per-step record).")
    return _figure_section("curves", "Training curves", fig, caption)


def _diagnostics_section(run) -> str:
    from .curves import diagnostics_findings, plot_diagnostics

    if not run.records:
        return ""
    types = {name: type(m).__name__ for name, m in run.model.named_modules() if name} if run.model else None
    try:
        fig = plot_diagnostics(run.records, layer_types=types)
        findings = diagnostics_findings(run.records, layer_types=types)
    except (ValueError, TypeError, KeyError) as exc:
        return f'<section id="diagnostics"><h2>Per-layer diagnostics</h2><p class="note">{_e(exc)}</p></section>'
    caption = ("Activation spread, dead ReLUs, gradient norms and update/weight ratios, measured every few steps "
               "(one marker per measurement). The notes' rule of thumb: an update/weight ratio near 1e-3.")
    if findings:
        words = ('<p><b>What stands out</b> (median of the last epoch\'s measurements):</p><ul class="findings">'
                 + "".join(f"<li>{_e(f)}</li>" for f in findings) + "</ul>")
    else:
        words = ('<p class="ok">Nothing stands out: every layer\'s update/weight ratio is within 10x of 1e-3, fewer '
                 "than half of any ReLU's units are dead and no activations vanish or explode.</p>")
    return _figure_section("diagnostics", "Per-layer diagnostics", fig, caption, after=words)


def _test_section(run) -> str:
    from ..train.metrics import per_class_accuracy
    from .curves import plot_confusion

    ev = run.evaluation
    if ev is None or run.test_set is None:
        return ""
    cm = ev.confusion()
    names = [str(c) for c in run.classes]
    fig = plot_confusion(cm, names, title=f"confusion matrix of {run.ckpt_path.name}: accuracy {ev.top1:.2%} on "
                                          f"{len(ev):,} test images")
    parts = []
    predicted_share = cm.sum(axis=0) / max(len(ev), 1)
    top = int(np.argmax(predicted_share))
    true_share = cm[top].sum() / max(len(ev), 1)
    if predicted_share[top] > 0.5 and predicted_share[top] > 2 * true_share:
        parts.append(f'<p class="note">The model answers {_e(names[top])} for {predicted_share[top]:.0%} of the test '
                     f"images, which are {true_share:.0%} {_e(names[top])}: it has collapsed onto one class. Train "
                     "longer, or lower the learning rate.</p>")
    recall = per_class_accuracy(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = cm.sum(axis=0)
        precision = np.where(predicted > 0, np.diag(cm) / np.maximum(predicted, 1), np.nan)
    off = cm - np.diag(np.diag(cm))
    order = np.arange(len(names))
    shown = "every class"
    if len(names) > MAX_CLASS_ROWS:
        order = np.argsort(np.nan_to_num(recall, nan=2.0), kind="stable")[:MAX_CLASS_ROWS]
        shown = f"the {MAX_CLASS_ROWS} classes with the lowest accuracy of {len(names)}"
    rows = []
    for i in order:
        mistaken = int(np.argmax(off[i])) if off[i].any() else None
        confused = f"{_e(names[mistaken])} ({int(off[i, mistaken])})" if mistaken is not None else "–"
        rows.append(f"<tr><td>{_e(names[i])}</td><td>{int(cm[i].sum()):,}</td><td>{int(cm[i, i]):,}</td>"
                    f"<td>{_pct(recall[i])}</td><td>{_pct(precision[i])}</td><td>{confused}</td></tr>")
    parts.append(f"<h3>Per class ({shown})</h3>"
                 "<p class=\"caption\">Accuracy of a class = recall: the share of its test images predicted as it. "
                 "Precision: the share of the images predicted as the class that really are it.</p>"
                 '<table class="classes"><tr><th>class</th><th>test images</th><th>correct</th>'
                 "<th>accuracy (recall)</th><th>precision</th><th>most often mistaken for</th></tr>"
                 + "".join(rows) + "</table>")
    parts.append(_confused_pairs(run, cm, names))
    return _figure_section("test-set", "Test set in detail", fig,
                           "Rows: the true class; columns: the predicted class. Each cell counts test images; its "
                           "colour is the fraction of the true class (the row).", after="\n".join(parts))


def _confused_pairs(run, cm, names) -> str:
    ev = run.evaluation
    off = cm - np.diag(np.diag(cm))
    flat = np.argsort(-off, axis=None, kind="stable")[:CONFUSED_PAIRS]
    pairs = [divmod(int(f), cm.shape[0]) for f in flat if off.flat[f] > 0]
    if not pairs:
        return "<h3>Most confused pairs</h3><p>No test image is misclassified.</p>"
    blocks = []
    for true, pred in pairs:
        index = np.flatnonzero((ev.labels == true) & (ev.predictions == pred))
        index = index[np.argsort(-ev.confidence[index], kind="stable")][:EXAMPLES_PER_PAIR]
        images = "".join(
            f'<figure><img class="digit" src="{png_data_uri(_image_png(run.test_set.images[i]))}" '
            f'alt="test image {i}: true {_e(names[true])}, predicted {_e(names[pred])}">'
            f"<figcaption>#{i}, {ev.confidence[i]:.0%}</figcaption></figure>" for i in index)
        share = off[true, pred] / max(cm[true].sum(), 1)
        blocks.append(f'<div class="pair"><p><b>{_e(names[true])}</b> taken for <b>{_e(names[pred])}</b>: '
                      f"{int(off[true, pred])} image{'s' if off[true, pred] != 1 else ''} ({share:.1%} of the "
                      f"{_e(names[true])} test images)</p>{images}</div>")
    return ("<h3>Most confused pairs</h3><p class=\"caption\">The largest off-diagonal cells of the matrix, each with "
            "the misclassified test images the model was most sure of (#test index, confidence in the wrong class). "
            "<code>cnnkit viz activations CKPT test:INDEX</code> shows one of them layer by layer.</p>"
            + "".join(blocks))


def _filters_section(run) -> str:
    from .filters import plot_filters
    from .layers import conv_layers

    if run.model is None or not conv_layers(run.model):
        return ""
    return _figure_section("filters", "First-layer filters", plot_filters(run.model),
                           f"The learned filters of the first convolution in {run.ckpt_path.name}"
                           + (f" (epoch {run.ckpt_epoch})." if run.ckpt_epoch is not None else "."))


def _activations_section(run, examples) -> str:
    from .activations import plot_activations

    if run.model is None or run.test_set is None or examples == 0:
        return ""
    ev, ds = run.evaluation, run.test_set
    chosen = list(range(min(examples, len(ds))))
    wrong = np.flatnonzero(ev.predictions != ev.labels) if ev is not None else np.array([], dtype=int)
    if len(chosen) >= 2 and wrong.size and not set(chosen) & set(wrong.tolist()):
        chosen[-1] = int(wrong[0])  # one misclassified image among the examples: the more instructive case
    parts = ['<section id="activations"><h2>Activations</h2><p class="caption">Each layer\'s output for one test '
             f"image, depth slice by depth slice, computed with {_e(run.ckpt_path.name)}.</p>"]
    names = [str(c) for c in ds.classes]
    for index in chosen:
        image = ds.images[index]
        x = model_input(image[None], run.dataset_name, run.model.dtype)
        true = names[ds.labels[index]]
        verdict = ""
        if ev is not None:
            pred = names[ev.predictions[index]]
            wrong = " — misclassified" if pred != true else ""
            verdict = f", predicted {pred} ({ev.confidence[index]:.1%}){wrong}"
        heading = f"test image {index}: true class {true}{verdict}"
        fig = plot_activations(run.model, x, image=image, classes=names, title=heading)
        parts.append(f"<h3>{_e(heading)}</h3>" + _img(fig, heading))
    parts.append("</section>")
    return "\n".join(parts)


def _files_footer(run) -> str:
    names = ["results.json", "history.csv", "history.json", "steps.csv", "diagnostics.json", "best.safetensors",
             "last.safetensors"]
    present = [n for n in names if (run.run_dir / n).exists()]
    links = " · ".join(f'<a href="{_e(n)}">{_e(n)}</a>' for n in present)
    return f'<footer>Files of this run (same folder): {links}. Rebuild this page with ' \
           f"<code>cnnkit report {_e(run.run_dir.name)}</code>.</footer>" if present else ""


# -- HTML helpers ---------------------------------------------------------------------------------
def _e(value) -> str:
    return html.escape(str(value))


def _pct(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.1%}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _card(label, value_html, detail="", big=False) -> str:
    return (f'<div class="card{" big" if big else ""}"><div class="label">{_e(label)}</div>'
            f'<div class="value">{value_html}</div><div class="detail">{_e(detail)}</div></div>')


def _img(fig, alt) -> str:
    return f'<img src="{png_data_uri(figure_png_bytes(fig))}" alt="{_e(alt)}">'


def _figure_section(anchor, heading, fig, caption="", after="") -> str:
    return (f'<section id="{anchor}"><h2>{_e(heading)}</h2>'
            + (f'<p class="caption">{_e(caption)}</p>' if caption else "") + _img(fig, heading) + after + "</section>")


def _image_png(image) -> bytes:
    """A raw uint8 ``(C, H, W)`` test image as PNG bytes (gray or RGB)."""
    import io as bytes_io

    from PIL import Image

    array = np.asarray(image)
    array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = bytes_io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array.astype(np.uint8))).save(buffer, format="PNG")
    return buffer.getvalue()


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1250px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:0.1em} h2{margin-top:1.6em;border-bottom:1px solid #ddd} .sub{color:#555;margin-top:0}
nav a{margin:0 0.2em} img{max-width:100%;border:1px solid #ddd} code{background:#f3f3f3;padding:0 0.2em}
.note{color:#a33} .caption{color:#555} .ok{color:#2a7a2a}
.cards{display:flex;flex-wrap:wrap;gap:0.8em;margin:0.8em 0}
.card{border:1px solid #ccd;border-radius:6px;padding:0.5em 1em;min-width:9em;background:#f8f9fc}
.card .label{font-size:0.85em;color:#555} .card .value{font-size:1.5em;font-weight:600}
.card.big .value{font-size:2.2em;color:#1f5a9a} .card .detail{font-size:0.8em;color:#666}
table{border-collapse:collapse;margin:0.5em 0} th,td{border:1px solid #ddd;padding:0.25em 0.7em;text-align:left}
table.classes td{text-align:right} table.classes td:first-child{text-align:left} th{background:#f3f3f3}
table.settings th{width:13em}
.pair{margin:0.6em 0 1em} .pair p{margin:0.2em 0} figure{display:inline-block;margin:0 0.6em 0 0;text-align:center}
img.digit{width:72px;height:72px;image-rendering:pixelated;border:1px solid #999}
figcaption{font-size:0.75em;color:#555} footer{margin-top:2em;color:#666;font-size:0.9em}
"""


def _page(title, body) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            f"<title>{_e(title)} - cnnkit report</title>\n<style>{_STYLE}</style></head><body>\n"
            + body + "\n</body></html>\n")
