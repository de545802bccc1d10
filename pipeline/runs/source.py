"""A run folder or bundle, checked and resolved before anything is unpickled.

`RunSource.open(path)` is where prediction, evaluation and export take in
a trained run. It reads only JSON and hashes files: a bundle's files must
match its `manifest.sha256`, and a weights file must have the sha256 that
was recorded when the features were extracted. The head file's recorded
sha256 is carried along, and `heads.load_head` checks it against the very
bytes it unpickles. Anything else is refused with a `RunError` naming the
file. The file names of runs and bundles are in `layout`.

Those hashes sit beside the files they check, so they catch accidents,
not an attacker who edits a shared bundle. A bundle's head is therefore
stored with skops (`safe_head`), which loads without running code from
the file; a bundle that still holds a pickled head (older bundles, heads
of classes outside scikit-learn) is refused unless `trust=True`. Run
folders get copied and shared too: one loads its `head.skops` (recorded
in its lineage as `head_skops_sha256`), and a run folder with only a
pickle (trained by an older version, or a head skops cannot hold) is
refused unless `trust=True` as well.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Any

from .. import config as config_lib
from ..errors import ConfigError, RunError
from ..features import backbones, discovery
from . import layout

__all__ = ["Base", "RunSource", "RunSpecWarning", "TrustedPickleWarning"]


class RunSpecWarning(UserWarning):
    """Features are recomputed under a spec that differs from the recorded one."""


class TrustedPickleWarning(UserWarning):
    """A bundle's pickled head is loaded because the caller said it trusts the bundle."""


@dataclasses.dataclass(frozen=True)
class Base:
    """One extractor a run's features come from, checked and resolved.

    Attributes:
        config: its `ExtractConfig`, with `weights` resolved to the checked
            weights file (or `"imagenet"`, `"none"`).
        size: its input size in pixels.
        lineage: the lineage record of its feature set
            (`store.fused.member_record`).
    """

    config: config_lib.ExtractConfig
    size: int
    lineage: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class RunSource:
    """A run folder or bundle, checked and resolved; nothing unpickled yet.

    Attributes:
        root: the run or bundle folder.
        kind: `"run"` or `"bundle"`.
        lineage: the run's `lineage.json` (a bundle carries a copy).
        config: the run's `ExtractConfig`, with `weights` resolved to the
            checked weights file (or `"imagenet"`, `"none"`).
        size: the input size in pixels.
        head_path: the head file, to load with `head_sha256`.
        head_sha256: the head file's recorded sha256.
        class_names: tuple of the run's class names, in label order.
        head_format: `"skops"` (loads without running code from the file,
            `safe_head`) or `"pickle"` (`heads.load_head`).
        bases: every `Base` whose features the head reads, concatenated in
            this order: one, or each member of a fused feature set
            (`lineage["members"]`). `config` and `size` are the first's.
    """

    root: Path
    kind: str
    lineage: dict[str, Any]
    config: config_lib.ExtractConfig
    size: int
    head_path: Path
    head_sha256: str
    class_names: tuple[str, ...]
    head_format: str = "pickle"
    bases: tuple[Base, ...] = ()

    @classmethod
    def open(
        cls, path: str | os.PathLike, weights: str | os.PathLike | None = None, *, trust: bool = False
    ) -> RunSource:
        """Checks a run folder or bundle and resolves what rebuilds its features.

        Args:
            path: a run folder (`runs/<feature set>/<head>-<id>`) or a
                bundle folder written by `export_run(..., format="bundle")`.
            weights: path of a weights file to use instead of the recorded
                one (moved or copied elsewhere); it must have the recorded
                sha256. Only for runs extracted from a weights file.
                Defaults to `None` (the recorded or bundled file).
            trust: bool, load a pickled head (unpickling runs code from
                the folder: only for runs and bundles from a trusted
                source). Defaults to `False` (such a folder is refused).

        Returns:
            A `RunSource`.

        Raises:
            RunError: the folder is not a run or bundle, or one of its files
                is missing, damaged or differs from its recorded sha256, or
                the head is a pickle and `trust` is `False`.
            ConfigError: `weights` was given for a run without a weights file.

        Warns:
            RunSpecWarning: the features would now be computed under another
                spec than recorded (backbone row, decoder or Keras changed).
        """
        root = Path(path)
        if not root.exists():
            raise RunError(
                f"`run_dir` '{root}' does not exist. Pass a run folder, runs/<feature set>/<head>-<id> "
                "(`leaderboard.list_runs` gives each run_dir), or a bundle folder written by `export_run`.",
                field="run",
            )
        if not root.is_dir():
            raise RunError(f"`run_dir` '{root}' is a file, not a run folder or bundle folder.", field="run")
        if (root / layout.BUNDLE).exists():
            return _open_bundle(root, weights, trust)
        if not (root / layout.LINEAGE).exists():
            raise RunError(
                f"`run_dir` '{root}' is neither a run folder (no {layout.LINEAGE}) nor a bundle (no "
                f"{layout.BUNDLE}). Pass a folder written by `train_heads` or `export_run`.",
                field="run",
            )
        lineage = layout.read_json(root / layout.LINEAGE, "run folder")
        if lineage.get("head_skops_sha256"):
            source = _resolve(root, "run", lineage, root / layout.HEAD_SKOPS, lineage["head_skops_sha256"], None, weights)
            return dataclasses.replace(source, head_format="skops")
        _allow_pickle(root, "run folder", layout.HEAD, trust)
        return _resolve(root, "run", lineage, root / layout.HEAD, lineage.get("head_sha256"), None, weights)


# Why a folder of each kind holds only a pickle, and what gives one that loads safely.
_PICKLE_ONLY = {
    "run folder": ("trained by an older version or of a head class skops cannot hold",
                   "train the head again (new runs load without running code)"),
    "bundle": ("exported by an older version or of a head class skops cannot hold",
               "ask for a bundle exported by this version (its head loads without running code)"),
}


def _allow_pickle(root: Path, kind: str, head: str, trust: bool) -> None:
    """Refuses a pickled head unless the caller trusts its folder; warns when trusted."""
    if trust:
        warnings.warn(
            f"Trusting {kind} '{root}': its head is a pickle, which runs code from the folder when loaded. "
            f"Use only {kind}s from sources you trust.",
            TrustedPickleWarning,
            stacklevel=5,
        )
        return
    why, fix = _PICKLE_ONLY[kind]
    raise RunError(
        f"Refusing {kind} '{root}': its head '{head}' is a pickle ({why}), and loading a pickle runs any "
        "code written into it; the hashes that would catch a change sit in the same folder. Pass --trust "
        f"(`trust=True`) only if the {kind} comes from a source you trust, or {fix}.",
        field="trust",
    )


def _open_bundle(root: Path, weights, trust: bool) -> RunSource:
    listed = _verify_manifest(root)
    bundle = layout.read_json(root / layout.BUNDLE, "bundle")
    kind, version = bundle.get("format"), bundle.get("format_version")
    if kind != layout.BUNDLE_FORMAT or version not in layout.BUNDLE_FORMAT_VERSIONS:
        raise RunError(
            f"'{root / layout.BUNDLE}' is not a {layout.BUNDLE_FORMAT} of version "
            f"{' or '.join(map(str, layout.BUNDLE_FORMAT_VERSIONS))} (format={kind!r}, version={version!r})."
        )
    head_format = "skops" if bundle.get("head") == layout.HEAD_SKOPS else "pickle"
    if head_format == "pickle":
        _allow_pickle(root, "bundle", bundle.get("head"), trust)
    names = [layout.BUNDLE, bundle.get("head", "")] + ([bundle["weights_file"]] if bundle.get("weights_file") else [])
    unlisted = [n for n in names if n not in listed]
    if unlisted:
        raise RunError(
            f"Bundle '{root}' lists {', '.join(map(repr, unlisted))} in {layout.BUNDLE} but not in "
            f"{layout.MANIFEST}; refusing to use files it cannot check. Export the bundle again."
        )
    lineage = bundle.get("lineage")
    if not isinstance(lineage, dict):
        raise RunError(f"'{root / layout.BUNDLE}' holds no lineage; export the bundle again.")
    bundled = root / bundle["weights_file"] if bundle.get("weights_file") else None
    source = _resolve(root, "bundle", lineage, root / bundle["head"], bundle.get("head_sha256"), bundled, weights)
    return dataclasses.replace(source, head_format=head_format)


def _verify_manifest(root: Path) -> set[str]:
    """Checks every file of a bundle's manifest; returns the names it lists."""
    manifest = root / layout.MANIFEST
    try:
        lines = manifest.read_text().splitlines()
    except FileNotFoundError:
        raise RunError(f"Bundle '{root}' has no {layout.MANIFEST}; refusing to load files it cannot check.") from None
    listed: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        name = match.group(2) if match else ""
        if not match or Path(name).is_absolute() or ".." in Path(name).parts:
            raise RunError(f"'{manifest}' line {number} is not '<sha256>  <relative path>': {line!r}.")
        file = root / name
        if not file.is_file():
            raise RunError(f"Bundle file '{file}' listed in {layout.MANIFEST} is missing. Export the bundle again.")
        actual = discovery.file_sha256(file)
        if actual != match.group(1):
            raise RunError(
                f"Refusing to use bundle file '{file}': its sha256 is {actual}, the manifest records "
                f"{match.group(1)}. It changed after export (or comes from another bundle); nothing was loaded."
            )
        listed.add(name)
    return listed


def _resolve(root, kind, lineage, head_path, head_sha256, bundled_weights, weights_override) -> RunSource:
    what = f"'{root / (layout.LINEAGE if kind == 'run' else layout.BUNDLE)}'"
    class_names = lineage.get("class_names")
    if not isinstance(class_names, list) or len(class_names) < 2:
        raise RunError(f"{what} records no class_names; the run cannot be used. Train it again.")
    if not head_sha256:
        raise RunError(
            f"{what} records no head_sha256, so '{head_path}' cannot be checked before it is unpickled "
            "(joblib runs code when loading). Refusing to load it; train the head again."
        )
    if not head_path.is_file():
        raise RunError(f"Head file '{head_path}' is missing; the {kind} is incomplete.")
    members = lineage.get("members")
    if members is None:
        bases = (_resolve_base(root, kind, lineage, bundled_weights, weights_override, what),)
    else:
        bases = _resolve_members(root, kind, members, bundled_weights, weights_override, what)
    return RunSource(Path(root), kind, lineage, bases[0].config, bases[0].size, Path(head_path), str(head_sha256),
                     tuple(class_names), bases=bases)


def _resolve_members(root, kind, members, bundled_weights, weights_override, what) -> tuple[Base, ...]:
    """The bases of a fused run, one per member feature set, in lineage order."""
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
        raise RunError(f"{what} records `members` that are not two or more feature sets; train the head again.")
    if weights_override is not None or bundled_weights is not None:
        raise ConfigError(
            f"`weights` replaces the one weights file of a run, and this run fuses {len(members)} feature sets "
            f"({', '.join(str(m.get('feature_set')) for m in members)}), each with its recorded weights. "
            f"Received: weights={str(weights_override or bundled_weights)!r}. Leave it out.",
            field="weights",
        )
    return tuple(_resolve_base(root, kind, m, None, None, what) for m in members)


def _resolve_base(root, kind, lineage, bundled_weights, weights_override, what) -> Base:
    """One feature set's extractor: its recorded config, weights checked against their identity."""
    extraction = lineage.get("extraction_config")
    identity = lineage.get("weights")
    if not isinstance(extraction, dict) or not extraction.get("model"):
        raise RunError(f"{what} records no extraction_config; the run cannot be reproduced. Train it again.")
    if not isinstance(identity, str) or not identity:
        raise RunError(f"{what} records no weights identity; the run cannot be reproduced. Train it again.")
    fields = {f.name for f in dataclasses.fields(config_lib.ExtractConfig)}
    try:
        config = config_lib.ExtractConfig(**{k: v for k, v in extraction.items() if k in fields})
    except (TypeError, ValueError) as e:
        raise RunError(f"{what} records an extraction_config this version cannot use: {e}") from None
    cfg = backbones.get_backbone_cfg(config.model)
    size = backbones.resolve_size(cfg, config.size)
    recorded = config.weights
    if kind == "run" and recorded not in ("imagenet", "none") and not Path(recorded).is_absolute():
        # A fine-tuned run keeps its base's weights inside itself, named relative to the folder.
        recorded = str(Path(root) / recorded)
    resolved = _resolve_weights(identity, recorded, bundled_weights, weights_override, what, cfg)
    config = dataclasses.replace(config, weights=resolved)
    _check_feature_key(config, identity, lineage.get("feature_key"), what)
    return Base(config, size, dict(lineage))


def _resolve_weights(identity: str, recorded: str, bundled: Path | None, override, what: str, cfg) -> str:
    """The weights to build with: the recorded ones, checked against their identity."""
    if identity == "none" or identity.startswith("imagenet@"):
        if override is not None:
            used = "random weights (weights='none')" if identity == "none" else f"weights='imagenet' ({identity})"
            raise ConfigError(
                f"`weights` can only replace a weights file, but this run used {used}. "
                f"Received: weights={str(override)!r}. Leave it out.",
                field="weights",
            )
        if identity == "none":
            return "none"
        now = backbones.weights_identity("imagenet")
        if now != identity:
            warnings.warn(
                f"The run's ImageNet weights came with {identity.partition('@')[2]}; this is {now.partition('@')[2]}. "
                "Keras fetches the same published files, but check the predictions if in doubt.",
                RunSpecWarning,
                stacklevel=6,
            )
        return "imagenet"
    if identity.startswith("preset-sha256:"):  # a KerasHub preset's own weights, checked by content
        now = backbones.weights_identity("imagenet", cfg)
        if now != identity:
            raise RunError(
                f"{what} was extracted with KerasHub preset weights {identity[:26]}..., but the preset now holds "
                f"{now[:26]}...; predictions would not match the head. Restore the preset folder the run used.",
                field="weights",
            )
        return "imagenet"
    if not identity.startswith("sha256:"):
        raise RunError(f"{what} records an unknown weights identity {identity!r}.")
    if override is not None:
        candidate, origin = Path(override), "given with `weights`"
    elif bundled is not None:
        candidate, origin = bundled, "in the bundle"
    else:
        candidate, origin = Path(recorded), "recorded in the run's extraction_config"
    if not candidate.is_file():
        raise RunError(
            f"Weights file '{candidate}' ({origin}) does not exist. The run's features were extracted "
            f"with it ({identity}). Pass `weights=` the path of a copy of that exact file.",
            field="weights",
        )
    actual = f"sha256:{discovery.file_sha256(candidate)}"
    if actual != identity:
        raise RunError(
            f"Weights file '{candidate}' ({origin}) is not the file the run's features were extracted with: "
            f"its identity is {actual}, the run recorded {identity}. Predictions with it would not match "
            "the head. Pass `weights=` the path of the original file.",
            field="weights",
        )
    return str(candidate)


def _check_feature_key(config, identity: str, recorded_key: str | None, what: str) -> None:
    """Warns when the features would be computed under another spec than recorded.

    The key covers the backbone row, decoder (Pillow major), Keras major,
    size, pooling, layer, precision and storage dtype, so a change of any
    of them since training shows up here.
    """
    from ..features import extract
    from ..store import feature_key

    if not recorded_key:
        return
    spec = extract.feature_spec(dataclasses.replace(config, weights="none"))
    spec["weights"] = identity
    now = feature_key(spec)
    if now != recorded_key:
        warnings.warn(
            f"{what}: features are now computed under a different spec than the head was trained on "
            f"(feature key {now[:12]}, recorded {recorded_key[:12]}): the backbone registry row, the "
            f"decoder ({spec['decoder']}) or the Keras major version ({spec['keras_major']}) changed. "
            "Predictions may differ; extract the features and train the head again to be sure.",
            RunSpecWarning,
            stacklevel=6,
        )
