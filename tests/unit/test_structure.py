"""The package's shape, checked: one top-level name, imports that run one way, short functions.

Layers (ARCHITECTURE.md): ui -> search <- ingest <- train; evaluation measures search; data is
the catalog generator; the top package (cli, demo) ties them together. A module may import its
own layer and the layers listed for it, nothing above.
"""

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
# Folder -> the shelfsight subpackages its modules may import (besides their own).
ALLOWED = {
    "search": set(),
    "ingest": {"search"},
    "data": {"search"},
    "evaluation": {"search"},
    "ui": {"search"},
    "train": {"search", "ingest", "data"},
}
LAYERS = set(ALLOWED)
MAX_FUNCTION_LINES = 60


def _modules(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).rglob("*.py"))


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, including imports inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _upward_imports(root: Path, folder: str) -> list[str]:
    """Imports in ``root/folder`` of a layer above it, or of a bare folder name."""
    wrong = []
    for path in _modules(root, folder):
        for line, module in _imported(path):
            parts = module.split(".")
            where = f"{path.relative_to(root)}:{line} imports {module}"
            if parts[0] in LAYERS or parts[0] == "tests":
                wrong.append(f"{where} (a bare folder name; import shelfsight.{module})")
            elif parts[0] == "shelfsight":
                target = parts[1] if len(parts) > 1 else ""
                if target != folder and target not in ALLOWED[folder]:
                    wrong.append(f"{where}: {folder} sits below {target or 'the top package'}")
    return wrong


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_layers_import_one_way(folder):
    wrong = _upward_imports(ROOT, folder)
    assert not wrong, "\n".join(wrong)


def test_layer_check_catches_upward_and_bare_imports(tmp_path):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "engine.py").write_text(
        "from shelfsight.search import fusion\n"
        "def f():\n    from shelfsight.ingest.pipeline import ingest_catalog\n"
        "import ui.app\nimport shelfsight.cli\n"
    )
    wrong = _upward_imports(tmp_path, "search")
    assert sorted(w.split(" imports ")[1].split()[0].rstrip(":") for w in wrong) == [
        "shelfsight.cli",
        "shelfsight.ingest.pipeline",
        "ui.app",
    ]


def test_wheel_installs_one_top_level_name():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = config["packages"]
    assert packages and all(p == "shelfsight" or p.startswith("shelfsight.") for p in packages)
    mapped = config["package-dir"]
    for folder in ALLOWED:
        assert mapped[f"shelfsight.{folder}"] == folder
        assert f"shelfsight.{folder}" in packages
    for sub in (ROOT / "search").iterdir():
        if (sub / "__init__.py").is_file():
            assert f"shelfsight.search.{sub.name}" in packages, f"search/{sub.name} is missing from the wheel"


@pytest.mark.parametrize("folder", [*sorted(ALLOWED), "shelfsight"])
def test_functions_fit_on_a_screen(folder):
    long = []
    for path in _modules(ROOT, folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() is {lines} lines")
    assert not long, "\n".join(long)


def test_commands_and_the_engine_start_without_torch():
    """Importing torch costs most of a second: the CLI and the search engine import it only once
    a model is wanted (``Embedder.model``), so `--help`, `stats` and the like start at once."""
    import subprocess
    import sys

    probe = "import sys, shelfsight.cli, shelfsight.search.engine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
