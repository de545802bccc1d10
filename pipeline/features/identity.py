"""Where a feature set lives, and which data folder it belongs to.

A set's folder name is built from the config alone (never from the cache's
location, so a moved cache keeps working); the data folder a set holds is
recorded in its index, so two datasets of one name never extend, and so
replace, each other's rows, and a moved data folder keeps its features.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .. import config as config_lib
from ..errors import ConfigError
from ..store import FeatureStore

_MAX_NAME = 100  # characters of the dataset's part of a feature set's folder name


def feature_set_dir(config: config_lib.ExtractConfig, spec: dict[str, Any], key: str) -> Path:
    """The feature set's folder: `<cache>/<dataset>-<model>-<size>-<pooling or layer>-<key8>`.

    `<dataset>` is `config.name`, or the data folder's name. Which data
    folder a set holds is recorded in its index and checked by
    `records_this_folder`, so two folders of one name never share a set.
    Characters other than letters, digits, `.`, `_` and `-` become `_`.

    Raises:
        ConfigError: `config.name` would make a hidden, empty or too long folder name.
    """
    cut = config.pooling if config.layer is None else f"{config.layer}-{config.pooling}"
    if config.name is None:
        # A data folder may be hidden or long-named; its set must be neither.
        dataset = _clean(Path(config.data).resolve().name).lstrip(".")[:_MAX_NAME] or "data"
    else:
        dataset = _checked_name(config.name)
    return Path(config.cache_dir) / _clean(f"{dataset}-{config.model}-{spec['size']}-{cut}-{key[:8]}")


def _clean(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _checked_name(name: str) -> str:
    cleaned = _clean(name)
    if cleaned.startswith(".") or not cleaned.strip("._"):
        raise ConfigError(
            "`name` must make a visible folder name: not empty, not starting with '.', and not only "
            "'.' and '_' once characters other than letters, digits, '.', '_' and '-' become '_' "
            f"(a hidden feature set is left out of listings). Received: name={name!r}. Pass a name "
            "such as 'flowers', or leave `name` unset to use the data folder's name.",
            field="name",
        )
    if len(cleaned) > _MAX_NAME:
        raise ConfigError(
            f"`name` must be at most {_MAX_NAME} characters: the feature set's folder name adds the "
            f"model, size and key, and file systems stop at 255. Received: name={name!r} "
            f"({len(cleaned)} characters). Pass a shorter name.",
            field="name",
        )
    return cleaned


def records_this_folder(store: FeatureStore, root: Path, config) -> bool:
    """Whether a feature set's index records `root` (or nothing); refuses another live folder's set.

    Two data folders of one name (`a/imgs`, `b/imgs`) map to one set folder.
    Extending it with the second would replace the first one's rows, so
    that is refused while the recorded folder exists. A recorded folder
    that no longer exists was moved: its set is taken over (`False`), and
    the images it shares with `root` are reused.
    """
    state = store.read_index_state()
    recorded = None if state is None else state.data_root
    if recorded is None or Path(recorded) == root:
        return True
    if not Path(recorded).is_dir():
        return False
    named = f"named {config.name!r}" if config.name else f"both named {root.name!r}"
    raise ConfigError(
        f"Feature set '{store.root}' holds the images of data folder '{recorded}', and '{root}' would "
        f"get the same set: they are {named}. Give this folder its own `name` so that neither "
        "replaces the other's rows.",
        field="name",
    )
