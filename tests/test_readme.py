"""The README's commands are real: every `make` line of its shell blocks
expands (make -n) to `bottleneck` commands whose flags that command accepts."""

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess

import pytest

from needs import REPO
from pipeline import cli

README = REPO / "README.md"


def _make_lines():
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [part.strip() for line in lines for part in line.split("&&") if part.strip().startswith("make ")]


def _help(command):
    """The `--help` text of `bottleneck COMMAND` (argparse exits 0 after printing it)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code in (0, None)
    return out.getvalue()


def test_the_readme_has_make_commands_to_check():
    assert {"make features", "make test"} <= set(_make_lines())


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("line", _make_lines())
def test_each_readme_make_command_expands_to_flags_its_command_accepts(line):
    # Under `make test` the variables given to that make reach this one through MAKEFLAGS: drop them.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL")}
    dry = subprocess.run([*shlex.split(line), "-n"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert dry.returncode == 0, dry.stderr
    for command in (c for c in dry.stdout.splitlines() if " -m pipeline " in c):
        argv = shlex.split(command.split(" -m pipeline ", 1)[1])
        help_text = _help(argv[:2] if argv[0] == "runs" else argv[:1])
        for flag in (a.split("=")[0] for a in argv if a.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"{line}: `{flag}` is not a flag of {argv[0]}"
