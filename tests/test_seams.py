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


def test_one_file_hasher():
    """Only store/content.py streams a file into SHA-256; everything else calls its `file_sha256`."""
    streaming = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "hashlib.sha256()" in p.read_text()
    )
    assert streaming == ["store/content.py"]
    from pipeline.features import applications, discovery, hub
    from pipeline.heads import persist
    from pipeline.store.content import file_sha256

    assert discovery.file_sha256 is file_sha256
    assert applications.file_sha256 is file_sha256 and hub.file_sha256 is file_sha256 and persist.file_sha256 is file_sha256


def test_folder_and_manifest_sources_list_open_and_hash(tmp_path):
    from pipeline.features.discovery import index_directory
    from pipeline.features.sources import open_source

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.jpg").write_bytes(b"not really a jpeg")
    (tmp_path / "list.csv").write_text("path,label\ncat/a.jpg,kitten\n")

    folder = open_source(tmp_path)
    assert folder.kind.name == "folder" and folder.name == str(tmp_path.resolve())
    assert folder.list() == index_directory(tmp_path)
    manifest = open_source(tmp_path / "list.csv")
    assert manifest.kind.name == "manifest" and manifest.list().class_names == ("kitten",)
    for source in (folder, manifest):
        with source.open("cat/a.jpg") as f:
            assert f.read() == b"not really a jpeg"
        assert source.sha256("cat/a.jpg") == hashlib.sha256(b"not really a jpeg").hexdigest()
        assert source.stat("cat/a.jpg")[0] == len(b"not really a jpeg")
