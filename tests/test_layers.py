"""The floors of the package (docs/ARCHITECTURE.md, "Floors"): every import, function-local and
type-only ones too, points to the same floor or one below, and no modules import each other in a circle.

core < spec / layout / config < convert < cells < models < results < synth < integrity < repair < cli
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpa_batch"

FLOORS: list[tuple[str, ...]] = [
    ("__init__", "core"),
    ("spec", "layout", "config"),
    ("convert",),
    ("cells",),
    ("models",),
    ("results",),
    ("synth",),  # the test-data generator: draws cells with every stage's helpers
    ("integrity",),
    ("repair",),
    ("cli",),
]
FLOOR = {part: k for k, parts in enumerate(FLOORS) for part in parts}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> Iterator[str]:
    """Every module of the package ``path`` imports, wherever the import statement stands."""
    package = root.name
    here = module_name(path, root).split(".")
    is_init = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == package)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here if is_init else here[:-1]
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] == package:
                yield from (_submodule(name, a.name, root) for a in node.names)


def _submodule(module: str, name: str, root: Path) -> str:
    """``from module import name``: the submodule ``module.name`` when it is one, else ``module``."""
    folder = root.parent.joinpath(*module.split("."))
    return f"{module}.{name}" if (folder / f"{name}.py").is_file() or (folder / name).is_dir() else module


def floor_of(module: str) -> int:
    parts = module.split(".")
    return FLOOR[parts[1] if len(parts) > 1 else "__init__"]


def graph(root: Path) -> dict[str, set[str]]:
    return {module_name(p, root): set(imports(p, root)) - {module_name(p, root)} for p in sorted(root.rglob("*.py"))}


def upward(root: Path) -> list[str]:
    """Imports that point to a higher floor, as ``module -> imported``."""
    return [f"{m} -> {d}" for m, deps in graph(root).items() for d in sorted(deps) if floor_of(d) > floor_of(m)]


def circles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other in a circle (strongly connected, Tarjan)."""
    g = graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_every_top_level_part_has_a_floor():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__pycache__", "schemas"}
    assert parts <= set(FLOOR), f"give {sorted(parts - set(FLOOR))} a floor in tests/test_layers.py"


def test_no_import_points_up_a_floor():
    assert upward(PACKAGE) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(PACKAGE) == []


def test_core_errors_imports_nothing_of_the_package():
    assert set(imports(PACKAGE / "core" / "errors.py", PACKAGE)) == set()


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A copy of the package's core and results floors with an upward import planted in core."""
    root = tmp_path / "hpa_batch"
    for part in ("core", "results"):
        (root / part).mkdir(parents=True)
        (root / part / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "core" / "a.py").write_text("def f():\n    from hpa_batch.results.b import g\n    return g\n")
    (root / "results" / "b.py").write_text("from ..core.a import f\n\ndef g():\n    return f\n")
    return root


def test_the_checks_catch_a_planted_upward_import_and_circle(planted: Path):
    assert upward(planted) == ["hpa_batch.core.a -> hpa_batch.results.b"]
    assert circles(planted) == [["hpa_batch.core.a", "hpa_batch.results.b"]]
