"""The layout's rules hold: import contracts, light stage imports, module size."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
MAX_MODULE_LINES = 600


def _loaded_modules(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.slow
def test_importing_the_head_stage_loads_no_features_module_and_no_keras():
    loaded = _loaded_modules("import pipeline.heads")
    assert "pipeline.heads" in loaded
    assert not {m for m in loaded if m.startswith(("pipeline.features", "pipeline.runs"))}
    assert not {m for m in loaded if m.split(".")[0] in ("keras", "tensorflow", "jax", "torch")}


def test_importing_the_store_loads_neither_stage():
    loaded = _loaded_modules("import pipeline.store")
    assert not {m for m in loaded if m.startswith(("pipeline.features", "pipeline.heads", "pipeline.runs"))}
    assert not {m for m in loaded if m.split(".")[0] in ("keras", "tensorflow", "sklearn")}


def test_the_import_contracts_hold():
    result = subprocess.run([LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, violation",
    [
        ("store/lookup.py", "from ..features import decode"),
        ("features/decode.py", "from ..heads import metrics"),
        ("heads/metrics.py", "from ..features import discovery"),
        ("heads/apply.py", "from ..runs import layout"),
        ("runs/layout.py", "from .. import cli"),
    ],
    ids=["store->features", "features->heads", "heads->features", "heads->runs", "runs->cli"],
)
def test_a_deliberate_violation_breaks_the_contracts(tmp_path, module, violation):
    """The contracts are not vacuous: a scratch copy with one forbidden import fails them."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / "pipeline" / module
    target.write_text(target.read_text() + f"\n{violation}  # deliberate\n")
    result = subprocess.run(
        [LINT_IMPORTS], cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout + result.stderr


def test_no_module_is_longer_than_the_limit():
    lengths = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / "pipeline").rglob("*.py")}
    assert {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_one_place_tells_a_keras_head_from_the_others():
    """Code asks `is_keras_head` (or the registry row's `uses_keras`), never `isinstance(..., DenseClassifier)` itself."""
    import re

    asked = re.compile(r"isinstance\([^()]*DenseClassifier\)")
    found = {p.relative_to(ROOT) for p in (ROOT / "pipeline").rglob("*.py") if asked.search(p.read_text())}
    assert found == {Path("pipeline/heads/dense.py")}


def test_test_modules_share_helpers_through_helper_modules_never_each_other():
    """A test module imported by another runs its fixtures and tests' imports twice, and ties the two together."""
    import ast

    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0].startswith("test_")]
    assert offenders == []


def test_only_the_keras_module_reaches_tensorflow_and_only_on_its_backend():
    """The pipeline runs on JAX and PyTorch too: TensorFlow is reached through `_keras.import_tensorflow` alone."""
    import re

    direct = re.compile(r"^\s*(import tensorflow|from tensorflow)", re.MULTILINE)
    found = {p.relative_to(ROOT) for p in (ROOT / "pipeline").rglob("*.py") if direct.search(p.read_text())}
    assert found == set()
    code = ("from pipeline._keras import import_tensorflow\n"
            "from pipeline.errors import ConfigError\n"
            "try:\n    import_tensorflow('A SavedModel')\nexcept ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "KERAS_BACKEND": "jax"}, cwd=ROOT, check=True)
    assert "A SavedModel needs TensorFlow, but Keras runs on 'jax'. Run it with KERAS_BACKEND=tensorflow." in out.stdout
