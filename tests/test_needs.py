"""The one rule for tests with needs: skip locally, fail under CI."""

import tomllib
import types

import pytest

import conftest
import needs


@pytest.mark.parametrize("value, fails", [("true", True), ("1", True), ("", False), ("false", False), ("0", False)])
def test_a_missing_need_fails_under_ci_and_skips_elsewhere(monkeypatch, value, fails):
    monkeypatch.setenv("CI", value)
    monkeypatch.setitem(needs.NEEDS, "ray", (lambda: False, "the `ray` extra is not installed"))
    with pytest.raises(pytest.fail.Exception if fails else pytest.skip.Exception, match="ray"):
        needs.require("ray")


@pytest.mark.parametrize("need", sorted(needs.NEEDS))
def test_each_marker_applies_the_rule_before_its_test(monkeypatch, need):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setitem(needs.NEEDS, need, (lambda: False, f"no {need} here"))
    marked = types.SimpleNamespace(get_closest_marker=lambda name: object() if name == need else None)
    unmarked = types.SimpleNamespace(get_closest_marker=lambda name: None)
    conftest.pytest_runtest_setup(unmarked)  # nothing needed, nothing raised
    with pytest.raises(pytest.fail.Exception, match=f"no {need} here"):
        conftest.pytest_runtest_setup(marked)


def test_a_present_need_lets_the_test_run(monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setitem(needs.NEEDS, "onnx", (lambda: True, "unused"))
    needs.require("onnx")


def test_every_need_is_a_registered_marker():
    config = tomllib.loads((needs.REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0] for line in config["markers"]}
    assert set(needs.NEEDS) <= registered
