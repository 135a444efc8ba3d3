"""The package's shape: subpackages that show the flow from data to deployment, each importing
only the layers below it (even inside a function), no import cycles, short functions, no
pickle anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "headstart"

# Bottom to top. A module may import modules of lower layers and of its own package.
LAYERS = ["", "io", "backbone", "heads", "fit", "insight", "deploy", "studio", "cli", "api"]
# Top-level modules above everything: the public facade and the documented short paths.
API = {"__init__", "__main__", "serve", "review"}
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = {"Classifier": 250}
MAX_METHOD_LINES = {("Classifier", "fit"): 45}


def _name(path: Path) -> str:
    """``io.files`` for ``src/headstart/io/files.py``; ``io`` for its ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    if module in API:
        return LAYERS.index("api")
    return LAYERS.index(module.split(".")[0] if "." in module or module in LAYERS else "")


def _resolve(module: str, node: ast.ImportFrom) -> set[str]:
    """The package modules one ``from ... import ...`` names."""
    if node.level == 0:
        if not (node.module or "").startswith("headstart"):
            return set()
        base = node.module.split(".")[1:]
    else:
        here = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        if module in ("__init__",):
            here = []
        base = here[:len(here) - (node.level - 1)] + (node.module.split(".") if node.module else [])
    found = set()
    for alias in node.names:
        full = ".".join(base + [alias.name])
        found.add(full if full in MODULES else ".".join(base))
    return {m for m in found if m in MODULES}


def _imports(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom):
            found |= _resolve(module, node)
        elif isinstance(node, ast.Import):
            found |= {".".join(a.name.split(".")[1:]) for a in node.names
                      if a.name.startswith("headstart.")} & set(MODULES)
    return found - {module}


def test_every_module_sits_in_a_layer():
    top = {m for m in MODULES if "." not in m and m not in LAYERS}
    assert top <= API | {"errors", "defaults", "_threads", "registry"}, sorted(top)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_flow_downwards(module):
    mine = _layer(module)
    up = sorted(m for m in _imports(module)
                if _layer(m) > mine or (_layer(m) == mine and mine == 0 and m in LAYERS))
    assert not up, f"{module} (layer {LAYERS[mine] or 'root'}) imports from above: {up}"


def test_no_import_cycles():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(n):] + [n])
                            if n in path else n)
            if n not in state:
                visit(n, path + [n])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def _long_definitions() -> list[str]:
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            size = cls.end_lineno - cls.lineno + 1
            if size > MAX_CLASS_LINES.get(cls.name, 10 ** 6):
                found.append(f"{module}.{cls.name}: {size} lines")
            for fn in cls.body:
                limit = MAX_METHOD_LINES.get((cls.name, getattr(fn, "name", "")))
                if limit and fn.end_lineno - fn.lineno + 1 > limit:
                    found.append(f"{module}.{cls.name}.{fn.name}: {fn.end_lineno - fn.lineno + 1}")
        for fn in [n for n in ast.walk(tree)
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            size = fn.end_lineno - fn.lineno + 1
            if size > MAX_FUNCTION_LINES:
                found.append(f"{module}.{fn.name}: {size} lines")
    return found


def test_functions_stay_short():
    assert not _long_definitions(), _long_definitions()


def test_no_pickle_anywhere():
    for p in MODULES.values():
        tree = ast.parse(p.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                 for a in n.names}
        assert "pickle" not in names and "joblib" not in names, p.name


def test_documented_import_paths_work():
    import headstart
    import headstart.review
    import headstart.serve

    assert callable(headstart.serve.create_app) and callable(headstart.review.review)
    assert headstart.LinearHead.kind == "linear" and headstart.defaults.HEAD == "auto"
    for name in headstart.__all__:
        assert getattr(headstart, name) is not None, name
