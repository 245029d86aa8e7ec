"""The test suite's own shape: each test file stands alone.

A test file that imports another runs that file's module-level code and fixtures in a
second place, and ties the two together so neither can be moved or deleted alone.
What test files share lives in helper modules: builders.py (campaigns and data),
conftest.py (fixtures, the test SMTP server), processes.py (the CLI in a child process),
preview_folders.py (reading a preview on disk).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module name) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name.split(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            # "from . import test_x" or "from .test_x import y"
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found.extend((node.lineno, name.split(".")[0]) for name in names)
    return found


def imports_of_test_files(folder: Path) -> list[str]:
    """Every place under ``folder`` where a Python file imports a test_*.py module."""
    test_modules = {path.stem for path in folder.glob("test_*.py")}
    return [
        f"{path.name}:{line}: imports {module}"
        for path in sorted(folder.glob("*.py"))
        for line, module in imported_modules(path)
        if module in test_modules
    ]


def test_no_test_file_imports_another() -> None:
    assert imports_of_test_files(TESTS) == []


def test_the_check_sees_each_form_of_import(tmp_path: Path) -> None:
    (tmp_path / "test_a.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "test_b.py").write_text(
        "import os\nfrom test_a import x\nimport test_a as a\nfrom . import test_a\n",
        encoding="utf-8",
    )
    (tmp_path / "helpers.py").write_text("from test_a import x\n", encoding="utf-8")

    assert imports_of_test_files(tmp_path) == [
        "helpers.py:1: imports test_a",
        "test_b.py:2: imports test_a",
        "test_b.py:3: imports test_a",
        "test_b.py:4: imports test_a",
    ]
