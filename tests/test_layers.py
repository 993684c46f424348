"""The package's shape, as docs/development.md draws it: layers that import only downward, no import circles, short
modules, and the two files that ship alone inside deploy.zip importing nothing of otxlite."""

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otxlite
from otxlite.core.errors import ArgumentError
from otxlite.core.thresholds import confidence_threshold, kept
from otxlite.export import deploy_runner

PACKAGE = Path(otxlite.__file__).parent
# lower layers first; engine and serve stand side by side and do not import each other
LAYERS = {"core": 0, "data": 1, "models": 2, "inference": 3, "engine": 4, "serve": 4, "export": 5, "api": 6,
          "cli": 7, "__main__": 8}
STANDALONE = ("export/deploy_runner.py", "serve/app.py")


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def otxlite_imports(path):
    """The otxlite modules path imports, at the top or inside functions (the package root's names left out)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("otxlite."):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("otxlite.")}
    return found & modules


GRAPH = {module_name(path): otxlite_imports(path) for path in PACKAGE.rglob("*.py")}


def layer(module):
    return LAYERS[module.split(".")[1]]


def test_layers_import_only_downward():
    upward = [f"{a} -> {b}" for a, targets in GRAPH.items() if a != "otxlite" for b in targets
              if layer(b) > layer(a) or (layer(b) == layer(a) and a.split(".")[1] != b.split(".")[1])]
    assert not upward, upward


def test_no_import_circles():
    visiting, done = [], set()

    def visit(module):
        if module in visiting:
            raise AssertionError(" -> ".join(visiting[visiting.index(module):] + [module]))
        if module in done:
            return
        visiting.append(module)
        for target in GRAPH.get(module, ()):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in GRAPH:
        visit(module)


def test_modules_stay_short_and_the_top_level_small():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
    assert len(list(PACKAGE.glob("*.py"))) <= 10


@pytest.mark.parametrize("name", STANDALONE)
def test_the_files_shipped_in_deploy_zip_stand_alone(name):
    path = PACKAGE / name
    assert path.read_text().startswith('"""Standalone'), "its first line must say it stands alone"
    assert not otxlite_imports(path) and "import otxlite" not in path.read_text()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), max_size=20), st.one_of(st.none(), st.floats(0, 1)), st.floats(0, 1))
def test_the_deploy_runner_keeps_the_threshold_rule_of_otxlite(scores, given_threshold, tuned):
    """The standalone runner's copy of the rule: the given threshold or the tuned one, and scores above it kept."""
    threshold = confidence_threshold(given_threshold, tuned)
    assert deploy_runner.confidence_threshold(given_threshold, tuned) == threshold
    scores = np.asarray(scores, np.float32)
    assert deploy_runner.kept(scores, threshold).tolist() == kept(scores, threshold).tolist()
    assert kept(scores, threshold).tolist() == [i for i, s in enumerate(scores.tolist()) if s > threshold]


def test_a_threshold_out_of_range_is_refused_by_both():
    with pytest.raises(ArgumentError, match="between 0 and 1"):
        confidence_threshold(1.5, 0.3)
    with pytest.raises(SystemExit, match="between 0 and 1"):
        deploy_runner.confidence_threshold(-0.1, 0.3)
