"""Fixtures shared by several test modules."""

import pytest

from badfiles import make_bad_corpus


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory):
    """(root, {relpath: "ok" | "skip"}) of the corpus in `badfiles.py`.

    Session-scoped because writing it takes a moment; tests must not modify
    it (copy it first).
    """
    root = tmp_path_factory.mktemp("bad_corpus")
    return root, make_bad_corpus(root)


@pytest.fixture
def tiny_dataset(tmp_path):
    """Three classes of six 40x40 PNGs each, under tmp_path/data."""
    from imagegen import make_dataset

    return make_dataset(tmp_path / "data")
