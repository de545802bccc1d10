import json

import pytest

from pipeline.cli import ExitStatus, main, terminal

FAST = ["--model", "mobilenet_025", "--size", "32", "--weights", "none", "--batch-size", "8"]


@pytest.mark.slow
def test_features_json_last_line_and_up_to_date_message(tiny_dataset, tmp_path, capsys):
    args = ["features", str(tiny_dataset), *FAST, "--cache-dir", str(tmp_path / "cache"), "--json"]
    assert main(args) == ExitStatus.OK
    captured = capsys.readouterr()
    out = captured.out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["counts"] == {"extracted": 18, "reused": 0, "skipped": 0, "removed": 0}
    assert report["path"].endswith("features.h5") and report["images_per_second"] > 0
    assert set(report) >= {"path", "counts", "seconds", "images_per_second"}
    assert report["dataset_summary"] == "Found 18 images in 3 classes."
    assert captured.err.splitlines().count("Found 18 images in 3 classes.") == 1  # said once, as soon as known
    assert not [line for line in out[:-1] if "Found 18" in line]  # the summary at the end does not repeat it

    assert main(args[:-1]) == ExitStatus.OK
    assert "Up to date: 18 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["features", "{tmp}/missing", *FAST], "does not exist"),
        (["features", "{data}", "--model", "resnet5", "--weights", "none"], "Did you mean 'resnet50'"),
        (["features", "{data}", "--model", "inception_v3", "--size", "64", "--weights", "none"], "at least 75"),
        (["features", "{data}", "--model", "resnet50", "--weights", "{tmp}/nope.h5"], "make features: WEIGHTS="),
        (["features", "{data}", *FAST, "--layer", "conv9_block1_out"], "Unknown layer"),
        (["features", "{data}", *FAST, "--config", "{tmp}/none.toml"], "does not exist"),
    ],
    ids=["missing-data", "unknown-model", "too-small", "missing-weights", "unknown-layer", "no-config"],
)
@pytest.mark.slow
def test_bad_input_exits_2_with_the_fix_and_writes_nothing(tiny_dataset, tmp_path, capsys, args, message):
    cache = tmp_path / "cache"
    args = [a.format(tmp=tmp_path, data=tiny_dataset) for a in args] + ["--cache-dir", str(cache)]
    assert main(args) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(cache.glob("*/features.h5")) and not list(cache.glob("*/shards/*.h5"))


@pytest.mark.slow
def test_imagenet_weights_unavailable_names_both_ways_out(tiny_dataset, tmp_path, capsys, monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    code = main(["features", str(tiny_dataset), "--model", "resnet50", "--size", "32", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == ExitStatus.BAD_INPUT
    assert "`weights='none'`" in err and "local weights file" in err and "URL fetch failure" in err
    assert "--weights" in err and "WEIGHTS=" in err
    assert not list(tmp_path.glob("*/shards/*.h5"))


@pytest.mark.slow
def test_config_file_values_are_overridden_by_flags(tiny_dataset, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[features]\nmodel = "resnet50"\nsize = 40\nweights = "none"\npooling = "max"\n')
    assert main(["features", str(tiny_dataset), "--config", str(config), "--size", "32",
                 "--cache-dir", str(tmp_path / "cache"), "--json", "-q"]) == ExitStatus.OK
    path = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["path"]
    assert "resnet50-32-max" in path


def test_unknown_config_key_is_named(tiny_dataset, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[features]\nmodel = "resnet50"\nbatch = 4\n')
    assert main(["features", str(tiny_dataset), "--config", str(config)]) == ExitStatus.BAD_INPUT
    assert "Unknown config keys ['batch']" in capsys.readouterr().err


def test_list_prints_every_backbone(capsys):
    from pipeline.features.backbones import list_backbones

    assert main(["list"]) == ExitStatus.OK
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list_backbones() and len(names) >= 45


@pytest.mark.slow
def test_cache_ls_shows_feature_sets(tiny_dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == ExitStatus.OK
    assert "No feature sets" in capsys.readouterr().out
    main(["features", str(tiny_dataset), *FAST, "--cache-dir", str(cache), "-q"])
    capsys.readouterr()
    assert main(["cache", "ls", "--cache-dir", str(cache), "--json"]) == ExitStatus.OK
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["images"] == 18 and entry["name"].startswith("data-mobilenet_025-32-avg-")


def test_list_heads_prints_every_head(capsys):
    from pipeline.heads import list_heads

    assert main(["list", "--heads"]) == ExitStatus.OK
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list_heads() and "logreg" in names and "dense" in names


@pytest.mark.slow
def test_common_flags_before_the_subcommand_take_effect(tiny_dataset, tmp_path, capsys):
    missing = str(tmp_path / "missing")
    with pytest.raises(Exception, match="does not exist"):
        main(["--traceback", "features", missing, *FAST])
    assert main(["-q", "features", str(tiny_dataset), *FAST, "--cache-dir", str(tmp_path / "cache")]) == ExitStatus.OK
    (line,) = capsys.readouterr().out.splitlines()  # quiet: only what was written
    assert line.startswith(str(tmp_path / "cache")) and line.endswith("features.h5")


def test_errors_name_the_flag_and_make_variable_of_the_field(tiny_dataset, tmp_path, capsys):
    args = ["features", str(tiny_dataset), "--model", "inception_v3", "--size", "64", "--weights", "none"]
    assert main([*args, "--cache-dir", str(tmp_path)]) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert "`size`" in err and "--size" in err and "SIZE=" in err


@pytest.mark.parametrize(
    "error, status",
    [
        ("pipeline.errors:ConfigError", ExitStatus.BAD_INPUT),
        ("pipeline.errors:RunError", ExitStatus.BAD_INPUT),
        ("pipeline.errors:WriteError", ExitStatus.CANNOT_WRITE),
        ("builtins:RuntimeError", ExitStatus.UNEXPECTED),
        ("builtins:FileNotFoundError", ExitStatus.UNEXPECTED),
    ],
)
def test_each_error_kind_maps_to_its_documented_exit_status(monkeypatch, capsys, error, status):
    import importlib

    from pipeline import cli

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)

    def fail(args):
        raise cls("something is wrong")

    monkeypatch.setattr(cli, "_cmd_list", fail)
    assert main(["list"]) == status
    err = capsys.readouterr().err
    assert err.startswith("error: something is wrong")
    assert ("--traceback" in err) == (status == ExitStatus.UNEXPECTED)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_end_a_command_like_ctrl_c(monkeypatch, capsys, signame):
    import os
    import signal
    import time

    from pipeline import cli

    def stopped(args):
        os.kill(os.getpid(), getattr(signal, signame))
        time.sleep(5)  # the signal arrives before this ends
        return ExitStatus.OK

    monkeypatch.setattr(cli, "_cmd_list", stopped)
    started = time.monotonic()
    assert main(["list"]) == ExitStatus.INTERRUPTED
    assert time.monotonic() - started < 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Interrupted.")
    assert signal.getsignal(getattr(signal, signame)) is not terminal.as_sigint  # handlers restored


def test_an_option_given_twice_is_refused_not_silently_overridden(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-head", "--fraction", "0.05", "--fraction", "0.2"])
    assert exit_info.value.code == 2
    assert "--fraction is given twice" in capsys.readouterr().err


@pytest.mark.slow
def test_the_model_defaults_to_mobilenet_v2_as_documented(tiny_dataset, tmp_path, capsys):
    args = ["features", str(tiny_dataset), "--weights", "none", "--size", "32", "--cache-dir", str(tmp_path), "--json"]
    assert main(args) == ExitStatus.OK
    assert "-mobilenet_v2-32-avg-" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["path"]


@pytest.mark.slow
def test_several_models_take_one_weights_value_each_in_order(tiny_dataset, tmp_path, capsys):
    base = ["features", str(tiny_dataset), "--model", "resnet50", "mobilenet_v2", "--size", "32",
            "--cache-dir", str(tmp_path / "cache")]
    assert main([*base, "--weights", "none", str(tmp_path / "mnv2.weights.h5")]) == ExitStatus.BAD_INPUT
    assert f"'{tmp_path / 'mnv2.weights.h5'}' does not exist" in capsys.readouterr().err
    assert main([*base, "--weights", "none", "none", "none"]) == ExitStatus.BAD_INPUT
    assert "2 models (resnet50, mobilenet_v2) but 3 weights" in capsys.readouterr().err
    assert main([*base, "--weights", "none", "--json", "-q"]) == ExitStatus.OK
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(report["feature_sets"]) == 2


@pytest.mark.slow
def test_progress_is_a_plain_line_where_stderr_is_not_a_terminal(tiny_dataset, tmp_path, capsys, monkeypatch):

    monkeypatch.setattr(terminal.ProgressBar, "PLAIN_INTERVAL", 0.0)
    assert main(["features", str(tiny_dataset), *FAST, "--cache-dir", str(tmp_path)]) == ExitStatus.OK
    lines = capsys.readouterr().err.splitlines()
    assert lines and lines[-1] == "extracting: 18/18 images (100%)" and "\r" not in "".join(lines)
    assert lines[0] == "Found 18 images in 3 classes."  # before the first progress line, not after the last
    assert len(lines) > 1 and all(line.startswith("extracting: ") for line in lines[1:])


@pytest.fixture(scope="module")
def narrow_mobilenet_v2_weights(tmp_path_factory):
    """A weights file of MobileNetV2 at width 0.35: the family of `mobilenet_v2`, not its model."""
    import keras

    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2_0.35.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(32, 32, 3)).save_weights(path)
    return path


@pytest.mark.slow
def test_a_wrong_weights_file_of_the_same_family_is_one_line_of_stderr(tiny_dataset, tmp_path, narrow_mobilenet_v2_weights):
    import subprocess
    import sys

    args = ["features", str(tiny_dataset), "--model", "mobilenet_v2", "--size", "32",
            "--weights", str(narrow_mobilenet_v2_weights), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True)
    assert result.returncode == ExitStatus.BAD_INPUT
    # After "Found 18 images in 3 classes.": no Keras warning, and no TensorFlow start-up banner
    # (the process imported Keras), only the error.
    (line,) = result.stderr.splitlines()[1:]
    assert line.startswith(f"error: Could not load weights file '{narrow_mobilenet_v2_weights}' into mobilenet_v2")
    assert len(line) < 1000 and result.stdout == ""
    verbose = subprocess.run([sys.executable, "-m", "pipeline", "-v", *args], capture_output=True, text=True)
    assert verbose.returncode == ExitStatus.BAD_INPUT
    assert "UserWarning" in verbose.stderr and verbose.stderr.splitlines()[-1] == line  # the rest is there with -v


def _warn_and_log(args):
    import logging
    import warnings

    from pipeline.runs.source import RunSpecWarning

    warnings.warn("the product's own warning", RunSpecWarning)
    warnings.warn("a library's internals", UserWarning)
    warnings.warn("a library's deprecation", DeprecationWarning)
    logging.getLogger("bottleneck").debug("a debug message")
    logging.getLogger("some.library").warning("a library's log warning")
    return ExitStatus.OK


@pytest.mark.filterwarnings("default::pipeline.runs.source.RunSpecWarning")  # raised on purpose
@pytest.mark.parametrize("argv", [["list"], ["-q", "list"], ["list", "-v"], ["-v", "list"], ["list", "--verbose"]])
def test_library_warnings_and_debug_show_only_with_verbose(monkeypatch, capsys, argv):
    import warnings

    from pipeline import cli

    monkeypatch.setattr(cli, "_cmd_list", _warn_and_log)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    filters = list(warnings.filters)
    assert main(argv) == ExitStatus.OK
    err = capsys.readouterr().err
    verbose = "-v" in argv or "--verbose" in argv
    assert err.count("warning: the product's own warning\n") == 1 and "RunSpecWarning" not in err
    for shown_with_verbose in ("a library's internals", "a library's deprecation", "a debug message",
                               "a library's log warning"):
        assert (shown_with_verbose in err) == verbose, err
    assert warnings.filters == filters  # a library caller's filters are left as they were


def test_verbose_leaves_tensorflow_logging_at_its_default_and_a_users_level_alone(monkeypatch):
    import os

    from pipeline import cli

    seen = []
    monkeypatch.setattr(cli, "_cmd_list", lambda args: seen.append(os.environ.get("TF_CPP_MIN_LOG_LEVEL")) or 0)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    main(["list"])
    main(["-v", "list"])
    assert seen == [None, "0"] and "TF_CPP_MIN_LOG_LEVEL" not in os.environ  # `_keras` would set 3
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    main(["-v", "list"])
    assert seen[-1] == "2" and os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"


@pytest.mark.parametrize(
    "args",
    [
        ["--model", "resnet50", "--size", "32"],  # ImageNet weights, offline
        ["--model", "mobilenet_v2", "--size", "32", "--weights", "{narrow}"],
        ["--model", "resnet50", "--size", "32", "--weights", "{tmp}/nope.weights.h5"],
        [*FAST, "--layer", "conv9_block1_out"],
        ["--model", "inception_v3", "--size", "64", "--weights", "none"],
        ["--model", "mobilenet_v2", "--size", "32", "--weights", "none", "--storage-dtype", "float16"],
    ],
    ids=["offline-imagenet", "wrong-weights", "missing-weights", "unknown-layer", "too-small", "float16-refused"],
)
@pytest.mark.slow
def test_an_error_before_any_shard_leaves_no_feature_set_folder(
    tiny_dataset, tmp_path, capsys, monkeypatch, narrow_mobilenet_v2_weights, args
):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    cache = tmp_path / "cache"
    cache.mkdir()
    args = [a.format(tmp=tmp_path, narrow=narrow_mobilenet_v2_weights) for a in args]
    assert main(["features", str(tiny_dataset), *args, "--cache-dir", str(cache)]) == ExitStatus.BAD_INPUT
    assert "error: " in capsys.readouterr().err
    assert not list(cache.iterdir())


def test_a_features_field_named_by_another_command_points_at_make_features():
    assert terminal.option_hint("train-head", "verify") == ' [extract again with --verify; make features: ARGS="--verify"]'
    assert terminal.option_hint("train-head", "fraction") == " [set with --fraction; make train-head: FRACTION=...]"
    assert terminal.option_hint("list", None) == ""
