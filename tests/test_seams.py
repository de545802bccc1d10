"""The seams of the features stage: no import circle between its modules, one file hasher, the data source."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent


def _imports_of(module: Path, package: str) -> set[str]:
    """Sibling modules of `package` that a module imports anywhere (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_import_circle_between_features_modules():
    modules = {p.stem: p for p in (PACKAGE / "features").glob("*.py")}
    graph = {name: _imports_of(path, "features") & set(modules) for name, path in modules.items()}

    def reaches(start, target, seen=()):
        return any(n == target or (n not in seen and reaches(n, target, (*seen, n))) for n in graph[start])

    circles = sorted(name for name in graph if reaches(name, name))
    assert circles == [], f"modules in an import circle: {circles}"
