"""Every example in a docstring runs and shows what it says (doctest over the whole package)."""

import doctest
import importlib
import pkgutil

import hpa_batch


def test_docstring_examples_run():
    tested = 0
    for info in pkgutil.walk_packages(hpa_batch.__path__, "hpa_batch."):
        module = importlib.import_module(info.name)
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, info.name
        tested += result.attempted
    assert tested >= 5  # the examples exist (ngff.level_shapes, segment)


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end != -1 else None]


def test_the_architecture_module_table_lists_exactly_the_package_modules():
    """docs/ARCHITECTURE.md's module table names every module of the package and nothing else (a
    stage folder's ``__init__`` holds only its docstring; ``synth/`` is described as one part)."""
    import re

    table = _section((REPO / "docs" / "ARCHITECTURE.md").read_text(), "## Modules")
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    package = REPO / "hpa_batch"
    modules = {p.relative_to(package).with_suffix("").as_posix() for p in package.rglob("*.py")}
    folders = {"cells", "convert", "core", "models", "results"}
    expected = {m for m in modules if not m.startswith("synth/") and m not in {f"{f}/__init__" for f in folders}}
    assert listed == expected | {"synth/"}, (sorted(expected - listed), sorted(listed - expected - {"synth/"}))


def test_tables_md_lists_exactly_the_cells_table_columns():
    """docs/TABLES.md's per-shard cells table (brace patterns expanded) is CELLS_SCHEMA, column for column."""
    import itertools
    import re

    from hpa_batch.cells.measure import CELLS_SCHEMA

    section = _section((REPO / "docs" / "TABLES.md").read_text(), "## `results/cells/{shard}.parquet`")
    documented = set()
    for cell in re.findall(r"^\| ([^|]+?) \| [a-z0-9]+ \|", section, re.MULTILINE):
        if cell == "column":  # the header row
            continue
        for name in cell.replace("\\_", "_").split(", "):
            parts = re.split(r"\{([^}]*)\}", name)
            choices = [p.split(",") if k % 2 else [p] for k, p in enumerate(parts)]
            documented |= {"".join(c) for c in itertools.product(*choices)}
    assert documented == set(CELLS_SCHEMA.names), (
        sorted(set(CELLS_SCHEMA.names) - documented),
        sorted(documented - set(CELLS_SCHEMA.names)),
    )
