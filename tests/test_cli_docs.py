"""What the documentation and the packaging promise is true (issue 17, item 13), and the CLI-shaped
architecture items of issue 11 (argparse only under cnnkit/cli, a public registry accessor,
isinstance instead of class names)."""
import argparse
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest

import cnnkit
from cnnkit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _help_texts(parser):
    yield parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _help_texts(sub)


def test_no_help_text_names_the_refused_ckpt_suffix():
    texts = list(_help_texts(build_parser()))
    assert len(texts) > 15  # every command and viz picture
    assert not [t.splitlines()[0] for t in texts if ".ckpt" in t]


def test_every_cnnkit_name_in_the_readme_exists():
    names = set(re.findall(r"`(cnnkit(?:\.[A-Za-z_]\w*)+)", README))
    assert "cnnkit.train.diagnostics.Diagnostics" in names and "cnnkit.profile.profile" in names
    for dotted in sorted(names):
        parts = dotted.split(".")
        obj, module_parts = None, len(parts)
        while module_parts:
            try:
                obj = importlib.import_module(".".join(parts[:module_parts]))
                break
            except ImportError:
                module_parts -= 1
        for attribute in parts[module_parts:]:
            assert hasattr(obj, attribute), f"README names {dotted}, but {attribute!r} does not exist"
            obj = getattr(obj, attribute)
    assert "cnnkit.train.Diagnostics" not in README and "`cnnkit.profile`;" not in README


def test_readme_says_how_to_import_viz_and_train_and_import_cnnkit_stays_light():
    assert "`import cnnkit.viz`" in README and "`import cnnkit.train`" in README
    code = "import sys, cnnkit; print('matplotlib' in sys.modules, 'cnnkit.viz' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_readme_documents_the_shared_data_variable_and_the_onnx_install():
    assert "CNNKIT_SHARED_DATA" in README
    assert "cnnkit[onnx]" not in README and "pip install onnx onnxruntime" in README


def test_license_is_mit_and_matches_the_package_metadata():
    import tomllib

    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) the cnnkit authors" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"


def test_editable_install_is_a_plain_path_entry():
    """The cause of setuptools' 10-line 'Editable installation' warning on the first run: a flat
    layout without package-dir gets an import-hook editable install, which warns."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"": "."}


def _dev_module():
    spec = importlib.util.spec_from_file_location("cnnkit_dev_script", ROOT / "dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dev_py_runs_cnnkit_from_the_users_folder(monkeypatch):
    dev = _dev_module()
    calls = []
    monkeypatch.setattr(dev, "ensure_env", lambda extras: None)
    monkeypatch.setattr(dev.subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw)) or 0)
    assert dev.main(["train", "--data-dir", "data"]) == 0
    command, options = calls[-1]
    assert command[-3:] == ["train", "--data-dir", "data"] and options.get("cwd") is None
    assert dev.main(["test", "-k", "x"]) == 0
    assert calls[-1][1]["cwd"] == dev.ROOT  # the suite itself runs in the checkout


# -- issue 11, the CLI-shaped items -----------------------------------------------------------------------
def test_argparse_code_lives_only_under_cli():
    for path in (ROOT / "cnnkit").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "cnnkit").parts:
            continue
        source = path.read_text()
        assert "add_argument(" not in source and "argparse" not in source, path
    from cnnkit.cli import finetune as cli_finetune

    assert callable(cli_finetune.add_finetune_arguments)
    assert not hasattr(cnnkit.finetune, "add_finetune_arguments")


def test_the_cli_uses_the_registry_accessor_not_its_private_dict():
    from cnnkit.models.registry import constructor

    assert constructor("lenet5") is cnnkit.models.lenet5
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        constructor("nope")
    for path in (ROOT / "cnnkit" / "cli").glob("*.py"):
        assert "_MODELS" not in path.read_text(), path


def test_profile_algorithm_reaches_conv2d_subclasses(monkeypatch, capsys):
    from cnnkit import nn
    from cnnkit.models import registry

    class MyConv(nn.Conv2d):
        pass

    def tiny(num_classes=10, seed=None):
        return nn.Sequential(MyConv(1, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, num_classes))

    monkeypatch.setitem(registry._MODELS, "_cli_tiny", tiny)
    seen = []
    monkeypatch.setattr("cnnkit.profile.profile", lambda model, *a, **k: seen.append(model) or "profiled")
    assert main(["profile", "_cli_tiny", "--input", "1x8x8", "--algorithm", "im2col"]) == 0
    assert seen[0][0].algorithm == "im2col"
    assert "type(m).__name__" not in inspect.getsource(importlib.import_module("cnnkit.cli.profile"))
