"""The package's shape: imports only go down the layers of pyproject.toml's import-linter contract,
and every cnnkit layer declares what the tools need to know about it (no silent defaults)."""
import importlib
import pkgutil
from pathlib import Path

import pytest

import cnnkit
from cnnkit.nn.containers import Concat, Residual, Sequential
from cnnkit.nn.graph import Graph
from cnnkit.nn.loss import _Loss
from cnnkit.nn.module import Module
from cnnkit.nn.parallel import DistributedDataParallel
from cnnkit.train.tta import FlipAveraged

ROOT = Path(__file__).resolve().parents[1]


def test_imports_only_go_down_the_layers():
    pytest.importorskip("importlinter")
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0  # prints the broken imports


def test_no_import_cycles():
    """No two modules import each other, directly or around a loop (lazy imports count too)."""
    grimp = pytest.importorskip("grimp")  # import-linter's import graph
    graph = grimp.build_graph("cnnkit")
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):  # Tarjan's strongly connected components, iteratively
        work = [(module, iter(sorted(graph.find_modules_directly_imported_by(module))))]
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other: {cycles}"


def _all_cnnkit_classes():
    for info in pkgutil.walk_packages(cnnkit.__path__, "cnnkit."):
        if info.name.startswith(("cnnkit.cli", "cnnkit.__main__")):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue

    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    return {cls for cls in walk(Module) if cls.__module__.startswith("cnnkit.")}


# Containers, and the wrappers that run a model they hold (their rules are the held model's layers')
CONTAINERS = (Sequential, Residual, Concat, Graph, DistributedDataParallel, FlipAveraged)


def _leaf_layers():
    return sorted((cls for cls in _all_cnnkit_classes()
                   if not issubclass(cls, CONTAINERS + (_Loss,)) and not cls.__name__.startswith("_")
                   and cls.__name__ != "MultiInputModule"), key=lambda c: c.__qualname__)


def _declares(cls, name: str) -> bool:
    """Whether ``name`` is defined by the class or a base below ``Module``."""
    return any(name in vars(base) for base in cls.__mro__ if base is not Module and issubclass(base, Module))


def test_every_leaf_layer_declares_its_rules():
    from cnnkit.onnx.export_registry import EXPORTERS

    layers = _leaf_layers()
    assert len(layers) >= 50  # the walk found the package's layers, the ONNX importer's included
    missing = []
    for cls in layers:
        for rule in ("macs", "step_memory"):
            if not _declares(cls, rule):
                missing.append(f"{cls.__qualname__}.{rule}")
        if not _declares(cls, "onnx_export") and cls not in EXPORTERS:
            missing.append(f"{cls.__qualname__}.onnx_export")
    assert not missing, f"layers without their summary/profile/ONNX rules: {missing}"
