"""The three packages import only downward: engines <- calibrate <- pipeline.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import that
runs upward is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# what each layer may import from the project (itself included)
ALLOWED = {"engines": {"engines"}, "calibrate": {"engines", "calibrate"},
           "pipeline": {"engines", "calibrate", "pipeline"}}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of a project package in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in ALLOWED]
    return out


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_run_downward(layer: str) -> None:
    files = sorted((REPO / layer).rglob("*.py"))
    assert files, f"no modules under {layer}/"
    upward = [f"{f.relative_to(REPO)}:{line} imports {pkg}" for f in files
              for line, pkg in project_imports(f) if pkg not in ALLOWED[layer]]
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                   "    from pipeline.config import AppConfig\n"
                   "def f():\n    import calibrate.ground\n")
    assert project_imports(mod) == [(3, "pipeline"), (5, "calibrate")]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_docstring_says_what_it_holds_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((REPO / package / "__init__.py").read_text())) or ""
    assert "import" in doc, f"{package}/__init__.py docstring must say what it may import"
