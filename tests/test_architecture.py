"""The package's shape: a one-way flow from data to deployment (no module imports one above
it, even inside a function), files of a readable size, no pickle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "headstart"

# Bottom to top. A module may import only modules of lower floors.
FLOORS = [
    ["errors", "defaults", "_threads", "_charts", "_logistic", "_taps"],
    ["_fs"],
    ["decode", "bundle", "_hub", "_weights"],
    ["walk"],
    ["data"],
    ["backbones"],
    ["runtime"],
    ["features"],
    ["health"],
    ["summary"],
    ["_head"],
    ["_mlp", "_normalise"],
    ["heads"],
    ["calibration", "domain"],
    ["_training"],
    ["finetune"],
    ["scratch"],
    ["stages"],
    ["persist"],
    ["model"],
    ["evaluate", "export", "serve", "advise", "review", "stream"],
    ["cluster", "_project"],
    ["report"],
    ["studio", "_studio_worker"],
    ["_console"],
    ["cli"],
    ["__main__"],
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative imports, anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import defaults
                found.update(a.name for a in node.names if a.name in FLOOR)
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.startswith("headstart."):
            found.add(node.module.split(".")[1])
    return found


def test_every_module_has_a_floor():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(FLOOR), f"place these in FLOORS: {modules ^ set(FLOOR)}"


@pytest.mark.parametrize("name", sorted(FLOOR))
def test_imports_only_flow_downwards(name):
    up = {m: FLOORS[FLOOR[m]] for m in _imports(PACKAGE / f"{name}.py")
          if m in FLOOR and FLOOR[m] >= FLOOR[name]}
    assert not up, f"{name} imports modules on its floor or above: {sorted(up)}"


def test_files_stay_readable():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 480, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_no_pickle_anywhere():
    for p in PACKAGE.glob("*.py"):
        tree = ast.parse(p.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
        assert "pickle" not in names and "joblib" not in names, p.name
