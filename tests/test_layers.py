"""The package's shape: layers whose imports only run downwards, and code small enough to read
(docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vaerepro"
LAYERS = ["core", "runs", "analysis", "cli"]  # each may import the ones before it
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def layer_of(module: str) -> int | None:
    """The layer index of a dotted vaerepro module name (None: the package root)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def vaerepro_imports(path: Path) -> list[str]:
    """Every vaerepro module `path` imports, at any depth (imports inside functions too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; write it absolute")
            if node.module and node.module.startswith("vaerepro"):
                names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("vaerepro")]
    return names


def upward_edges(files: list[Path], root: Path) -> list[str]:
    edges = []
    for path in files:
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        own = layer_of(module)
        for name in vaerepro_imports(path):
            target = layer_of(name)
            if own is not None and target is not None and target > own:
                edges.append(f"{module} imports {name}")
    return edges


def test_no_import_runs_upwards():
    files = sorted(PACKAGE.rglob("*.py"))
    assert {p.relative_to(PACKAGE).parts[0] for p in files if len(p.parts) > 1} >= set(LAYERS)
    assert upward_edges(files, PACKAGE) == []


def test_an_upward_import_is_found(tmp_path):
    core = tmp_path / "vaerepro" / "core"
    core.mkdir(parents=True)
    (core / "model.py").write_text(
        "from vaerepro.runs.folder import load_model\n"
        "def f():\n    from vaerepro.analysis import plots\n"
    )
    (core / "config.py").write_text("from vaerepro.core.errors import UsageError\n")
    files = sorted((tmp_path / "vaerepro").rglob("*.py"))
    assert upward_edges(files, tmp_path / "vaerepro") == [
        "vaerepro.core.model imports vaerepro.runs.folder",
        "vaerepro.core.model imports vaerepro.runs.folder.load_model",
        "vaerepro.core.model imports vaerepro.analysis",
        "vaerepro.core.model imports vaerepro.analysis.plots",
    ]


def long_functions(path: Path) -> list[str]:
    return [
        f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_code_is_small_enough_to_read(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES, path
    assert long_functions(path) == []
