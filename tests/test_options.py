"""Options declared once (`pipeline.config.options`): every flag, hint, Make variable and check comes from them."""

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import terminal
from pipeline.cli.options import COMMAND_OPTIONS
from pipeline.config import CurveConfig, ExtractConfig, FinetuneConfig, TrainConfig, key_fields, options_of
from pipeline.config.options import integer, number, one_of
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"features": ExtractConfig, "train-head": TrainConfig, "curve": CurveConfig, "finetune": FinetuneConfig}
REQUIRED = {ExtractConfig: {"data": "photos"}}
# Makefile variables that set no option: the toolchain, the pass-through, the benchmarks.
NOT_OPTIONS = {"PYTHON", "ARGS", "BENCH_ARGS", "BENCH_GPU_ARGS"}


def _declared(check_type):
    return [
        pytest.param(cls, name, opt.check, id=f"{cls.__name__}.{name}")
        for cls in CONFIGS.values()
        for name, opt in options_of(cls).items()
        if isinstance(opt.check, check_type)
    ]


@pytest.mark.parametrize("cls, name, check", _declared(integer))
def test_every_integer_option_refuses_bools_values_below_its_minimum_and_above_its_limit(cls, name, check):
    for value in (True, check.min - 1, "3", *([check.max + 1] if check.max else [])):
        with pytest.raises(ConfigError, match=rf"`{name}` must be .*Received: {name}=") as info:
            cls(**REQUIRED.get(cls, {}), **{name: value})
        assert info.value.field == name
    assert getattr(cls(**REQUIRED.get(cls, {}), **{name: check.min}), name) == check.min


@pytest.mark.parametrize("cls, name, check", _declared(number))
def test_every_number_option_refuses_bools_nan_and_values_out_of_its_range(cls, name, check):
    outside = [v for v in (check.low - 1, check.high + 1, check.low if check.open_low else None) if v is not None]
    for value in (True, float("nan"), float("inf"), "0.5", *outside):
        with pytest.raises(ConfigError, match=rf"`{name}` must be a number {re.escape(check.bounds())}") as info:
            cls(**REQUIRED.get(cls, {}), **{name: value})
        assert info.value.field == name


@pytest.mark.parametrize("cls, name, check", _declared(one_of))
def test_every_choice_option_lists_its_choices(cls, name, check):
    with pytest.raises(ConfigError, match=f"`{name}` must be one of {re.escape(repr(check.choices[0]))}, ") as info:
        cls(**REQUIRED.get(cls, {}), **{name: "no-such-choice"})
    assert info.value.field == name


@pytest.mark.parametrize("command", CONFIGS)
def test_each_declared_flag_sets_its_field_and_only_it(command):
    """Each generated flag parses into its field; the unset ones stay None, so a config file's values stand."""
    from pipeline.cli import _build_parser

    parser = _build_parser()
    positional = ["photos"] if command == "features" else ["somewhere"]
    options = {name: opt for name, opt in options_of(CONFIGS[command]).items() if not opt.argument}
    for name, opt in options.items():
        args = parser.parse_args([command, *positional, opt.flag, *([] if opt.switch else [_valid_text(opt)])])
        assert getattr(args, name) not in (None, []), name
        assert [other for other in options if other != name and getattr(args, other) is not None] == [], name


def _valid_text(opt) -> str:
    return opt.check.choices[-1] if isinstance(opt.check, one_of) else "1"


@pytest.mark.parametrize(
    "command, field, hint",
    [
        ("features", "batch_size", " [set with --batch-size; make features: BATCH=...]"),
        ("features", "storage_dtype", ' [set with --storage-dtype; make features: ARGS="--storage-dtype ..."]'),
        ("train-head", "features", " [set with FEATURES (the feature set argument); make train-head: FEATURES=...]"),
        ("train-head", "augmented", " [set with --augmented; make train-head: AUGMENTED=1]"),
        ("curve", "fraction", " [set with --fractions; make curve: FRACTIONS=...]"),
        ("finetune", "early_stopping_patience", ' [set with --patience; make finetune: ARGS="--patience ..."]'),
        ("predict", "data", " [set with DATA (the labelled folder argument); make predict: DATA=...]"),
        ("export", "overwrite", ' [set with --force; make export: ARGS="--force"]'),
        ("cache", "out", " [set with --output]"),
        ("evaluate", "pooling", " [extract again with --pooling; make features: POOLING=...]"),
    ],
)
def test_hints_name_the_declared_flag_and_make_variable(command, field, hint):
    assert terminal.option_hint(command, field) == hint


def test_the_feature_key_holds_exactly_the_declared_key_fields():
    from pipeline.features.extract import feature_spec

    config = ExtractConfig(data="photos", weights="none")
    spec = feature_spec(config)
    resolved = {"model": "backbone"}  # the backbone row stands for its name
    declared = {resolved.get(name, name) for name in key_fields(config)}
    assert set(spec) == {"features_version", "decoder", "keras_major", *declared}
    for name in ("batch_size", "workers", "shard_size", "verify", "augment", "cache_dir"):
        assert not options_of(ExtractConfig)[name].key
        changed = dataclasses.replace(config, **{name: {"verify": True, "cache_dir": "elsewhere"}.get(name, 2)})
        assert feature_spec(changed) == spec


def test_a_curve_shares_train_heads_fields_declared_once():
    shared = [f for f in dataclasses.fields(CurveConfig) if f.name in {g.name for g in dataclasses.fields(TrainConfig)}]
    assert [f.name for f in shared] == ["heads", "params", "splits", "seed", "runs_dir", "cache_dir", "sweep", "select",
                                     "transform"]
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for field in shared:  # the same declaration, not a copy
        assert field.metadata["option"] is train[field.name].metadata["option"]
    with pytest.raises(ConfigError, match="`seed` must be an integer >= 0"):
        CurveConfig(seed=-1)


def _make_dry_run(target: str, variables: dict[str, str]) -> str:
    result = subprocess.run(["make", "-n", "-s", "-C", str(ROOT), target, *(f"{k}={v}" for k, v in variables.items())],
                            capture_output=True, text=True, check=True)
    return next(line for line in result.stdout.splitlines() if f"-m pipeline {target}" in line)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("command", [c for c, options in COMMAND_OPTIONS.items() if any(
    opt.make not in (None, "ARGS") for opt in options.values())])
def test_every_declared_make_variable_reaches_its_flag(command):
    options = {name: opt for name, opt in COMMAND_OPTIONS[command].items() if opt.make not in (None, "ARGS")}
    # A switch's variable is 1; a sweep's value must hold "=" to be passed on.
    values = {opt.make: "1" if opt.switch else "k=v" if opt.make == "SWEEP" else f"v{opt.make}"
              for opt in options.values()}
    line = _make_dry_run(command, values)
    for name, opt in options.items():
        value = values[opt.make]
        if opt.argument:
            assert f" {value} " in f"{line} ", name
        elif opt.switch:
            assert f" {opt.flag}" in line, name
        else:
            assert re.search(rf"{opt.flag} '?{re.escape(value)}'?( |$)", line), (name, line)


def test_every_makefile_variable_sets_a_declared_option():
    makefile = (ROOT / "Makefile").read_text()
    variables = set(re.findall(r"^([A-Z_]+) \?=", makefile, flags=re.M)) - NOT_OPTIONS
    declared = {opt.make for options in COMMAND_OPTIONS.values() for opt in options.values()}
    assert variables - declared == set()
    assert declared - {"ARGS", None} <= variables


def test_the_options_page_is_generated_from_the_declarations():
    from pipeline.cli.parsing import options_doc

    page = (ROOT / "docs" / "options.md").read_text()
    assert page == options_doc(), "regenerate docs/options.md (see its first lines)"


@pytest.mark.slow
def test_adding_an_option_is_one_declaration(tmp_path):
    """In a scratch copy, one new field shows in --help, the hints, an error, the options page and the key."""
    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    declarations = tmp_path / "pipeline" / "config" / "features.py"
    anchor = "\n    def __post_init__(self):"
    text = declarations.read_text()
    assert text.count(anchor) == 1
    declaration = (
        '\n    jpeg_quality: int = option(95, flag="--jpeg-quality", make="JPEG_QUALITY", key=True,\n'
        '                               check=integer(min=1, max=100, why="JPEG has no quality above 100."),\n'
        '                               help="quality of the re-encoded JPEG (default 95)")\n'
    )
    declarations.write_text(text.replace(anchor, declaration + anchor))

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                              env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})

    help_text = run("-m", "pipeline", "features", "--help").stdout
    assert "--jpeg-quality JPEG_QUALITY" in help_text and "quality of the re-encoded JPEG" in help_text
    table = run("-c", "from pipeline.cli import terminal; print(terminal._OPTIONS['features']['jpeg_quality'])").stdout
    assert table.strip() == "('--jpeg-quality', 'JPEG_QUALITY')"
    refused = run("-m", "pipeline", "features", "photos", "--jpeg-quality", "101")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        "error: `jpeg_quality` must be at most 100. Received: jpeg_quality=101. JPEG has no quality above 100. "
        "[set with --jpeg-quality; make features: JPEG_QUALITY=...]"
    )
    page = run("-c", "from pipeline.cli.parsing import options_doc; print(options_doc())").stdout
    assert "| `JPEG_QUALITY` | `--jpeg-quality` | quality of the re-encoded JPEG (default 95) |" in page
    key = run("-c", "from pipeline.config import ExtractConfig, key_fields as k; print(k(ExtractConfig)[-1])").stdout
    assert key.strip() == "jpeg_quality"


def test_library_entry_points_check_counts_with_the_shared_integer_rule(tmp_path):
    """`True` is no count and a NumPy integer is one, wherever the library takes a count or a threshold."""
    import numpy as np

    from pipeline.heads.leakage import near_duplicate_pairs
    from pipeline.runs.leaderboard import list_runs
    from pipeline.runs.report import build_report
    from pipeline.store.splits import subsample

    X = np.eye(4, dtype=np.float32)
    refused = [
        (lambda: subsample(np.arange(4), np.array([0, 0, 1, 1]), 0.5, seed=True), "`seed` must be an integer >= 0"),
        (lambda: near_duplicate_pairs(X, 0.9, block_size=True), "`block_size` must be a positive integer"),
        (lambda: near_duplicate_pairs(X, True), r"`threshold` must be a number in \(-1, 1\]"),
        (lambda: list_runs(tmp_path, limit=True), "`limit` must be a positive integer"),
        (lambda: build_report(tmp_path, tmp_path / "r.html", duplicate_threshold=True),
         r"`duplicate_threshold` must be a number in \(-1, 1\]"),
    ]
    for call, message in refused:
        with pytest.raises(ConfigError, match=message):
            call()
    assert len(subsample(np.arange(4), np.array([0, 0, 1, 1]), 0.5, seed=np.int64(1))) == 2
    assert near_duplicate_pairs(X, np.float32(0.9), block_size=np.int64(2))[1] == 0
    assert list_runs(tmp_path, limit=np.int64(1)) == []
