"""The distribution installs beside pandas' Bottleneck without replacing it."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path


def test_the_numpy_bottleneck_library_and_this_package_both_import():
    import bottleneck  # the NumPy reductions library pandas uses (a dev dependency)

    import pipeline.cli

    assert bottleneck.nanmean([1.0, float("nan"), 3.0]) == 2.0
    assert importlib.metadata.version("bottleneck-features")
    theirs = importlib.metadata.files("Bottleneck")
    assert theirs and not [f for f in theirs if f.parts[0] == "pipeline"]
    assert callable(pipeline.cli.main)


def test_the_bottleneck_command_is_this_package():
    scripts = importlib.metadata.entry_points(group="console_scripts", name="bottleneck")
    assert [script.value for script in scripts] == ["pipeline.cli:main"]
    command = Path(sys.executable).with_name("bottleneck")
    result = subprocess.run([command, "list", "mobilenet_v2"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("mobilenet_v2 ")
