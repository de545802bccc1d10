"""Where a feature set lives, and which data folder it belongs to.

A set's folder name is built from the config alone (never from the cache's
location, so a moved cache keeps working) and tells apart both the spec
(the feature key) and the data folder, so that two datasets never extend,
and so replace, each other's rows.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from .. import config as config_lib
from ..errors import ConfigError
from ..store import FeatureStore
from . import backbones
from .items import is_url, shown_url

_MAX_NAME = 100  # characters of the dataset's part of a feature set's folder name


def feature_set_dir(config: config_lib.ExtractConfig, spec: dict[str, Any], key: str) -> Path:
    """The feature set's folder: readable, and unique per key and data folder.

    `<cache>/<name>-<model>-<size>-<pooling or layer>-<key8>` when
    `config.name` is given; otherwise
    `<cache>/<data folder name>-<model>-<size>-<pooling or layer>-<key8>-<data8>`,
    where `<data8>` hashes the data folder's (or manifest's) resolved path, so two folders of
    the same name (`a/imgs`, `b/imgs`) never share a set. Characters other
    than letters, digits, `.`, `_` and `-` become `_`.

    Raises:
        ConfigError: `config.name` would make a hidden, empty or too long folder name.
    """
    # Named as keyed: the resolved pooling (KerasHub's "avg" is the family's default) and the row's own
    # name, so one key never gets two folders whichever alias the config used.
    pooling = spec.get("pooling", config.pooling)
    cut = pooling if config.layer is None else f"{config.layer}-{pooling}"
    model = backbones.get_backbone_cfg(config.model).name
    if config.name is None:
        root, stem = _data_root(config.data)
        # A data folder may be hidden or long-named; its set must be neither (the hash keeps it unique).
        dataset = _clean(stem).lstrip(".")[:_MAX_NAME] or "data"
        where = "-" + hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    else:
        dataset, where = _checked_name(config.name), ""
    return Path(config.cache_dir) / _clean(f"{dataset}-{model}-{spec['size']}-{cut}-{key[:8]}{where}")


def _data_root(data: str) -> tuple[str, str]:
    """`(what the set's folder name hashes, the dataset's name)` of `data`: a local path or a URL."""
    if is_url(data):
        # Credentials never reach a folder name; the tar brace pattern or file suffix is no name.
        shown = shown_url(data).rstrip("/")
        last = shown.rpartition("/")[2]
        return shown, last.partition("{")[0].rpartition(".")[0] or last.partition("{")[0] or last
    root = Path(data).resolve()
    return str(root), root.stem if root.is_file() else root.name


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

    Only a set named by `config.name` can hold another folder. Extending it
    would replace that folder's rows with this one's, so that is refused. A
    recorded folder that no longer exists was moved: its set is taken over
    (`False`), and the images it shares with `root` are reused.
    """
    if config.name is None:
        return True  # the set's folder name hashes the data folder's path
    state = store.read_index_state()
    recorded = None if state is None else state.data_root
    if recorded is None or recorded == str(root):
        return True
    if not is_url(recorded) and not Path(recorded).is_dir():
        return False
    raise ConfigError(
        f"Feature set '{store.root}' holds the images of data folder '{recorded}', and "
        f"'{root}' would get the same set: both are named {config.name!r}. Give each folder its own "
        "`name` (or leave `name` unset: the set's folder name then tells the data folders apart), "
        "so that neither replaces the other's rows.",
        field="name",
    )
