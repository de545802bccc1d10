"""Find the images of a dataset folder, deterministically.

Two layouts are understood:

- class-per-folder: `root/<class>/.../<image>`;
- split folders: `root/{train,validation,test}/<class>/.../<image>`, detected
  when every non-hidden subfolder of `root` is a split folder and one of them
  is `train`. Split folders are named as exported datasets (Roboflow, Kaggle)
  name them, in any case: `train` or `training`; `validation`, `valid`, `val`
  or `dev`; `test` or `testing`.

A root where some subfolders are split folders and others are not, or where
two split folders name the same split (`val/` and `validation/`), is refused:
reading `train` and `test` as classes would be a silent wrong result.

Output folders of bottleneck (feature sets, caches, runs folders, run folders,
export bundles) are never listed, wherever they lie in the data folder: a
cache or runs folder kept inside it would otherwise become a class of
confusion-matrix PNGs. They are recognised by the files they hold, since
users choose their names, and reported in `Dataset.output_dirs`.

The listing never depends on the order the OS returns names in, and it is
never shuffled: entries are sorted by their relative path, class names are
sorted, and a label is an index into the class names. That is what keeps
row i of a feature file matched to file i and its label.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from pathlib import Path

from ..errors import DataError
from ..store.content import file_sha256  # re-exported: callers hash files through discovery

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "Dataset",
    "ImageEntry",
    "file_sha256",
    "index_directory",
    "normalized_split",
    "split_key",
    "stat_image",
]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""File extensions listed as images, compared case-insensitively."""

SPLITS = ("train", "validation", "test")
# Lowercase split folder name -> split.
_SPLIT_FOLDER_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
# Files that make a folder an output of bottleneck. They are spelled here
# rather than imported, because the features stage stays independent of
# runs/: `features.h5` and `shards/` are pipeline/store's INDEX_NAME and
# SHARD_DIR; `lineage.json`, `bundle.json` and
# `leaderboard.csv` are pipeline/runs/layout.py's LINEAGE, BUNDLE and
# LEADERBOARD_CSV. A test checks that they still agree.
_FEATURE_SET_INDEX = "features.h5"
_FEATURE_SET_SHARDS = "shards"
_OUTPUT_FILES = {
    "lineage.json": "a run folder",
    "bundle.json": "an export bundle",
    _FEATURE_SET_INDEX: "a feature set",
}
_RUNS_FILE = "leaderboard.csv"
_NOHASH = re.compile(r"_nohash_.*$")

_LAYOUT_HINT = "Pass as `data` a folder with one subfolder per class."


@dataclasses.dataclass(frozen=True, slots=True)  # slots: one per image, held for the whole run
class ImageEntry:
    """One image file found by `index_directory()`.

    Attributes:
        relpath: str. POSIX path relative to the dataset root, e.g.
            `"cat/1.jpg"` or `"train/cat/1.jpg"`. File names that are not
            valid UTF-8 are decoded with `os.fsdecode` (surrogateescape), so
            `os.fsencode(relpath)` gives the original bytes back; encode
            with `"surrogateescape"` before writing it to a UTF-8-only
            store.
        label: int. Index into `Dataset.class_names`.
        folder_split: str. `""` for the class-per-folder layout, otherwise
            `"train"`, `"validation"` or `"test"`.
        size: int. Size in bytes from `os.stat` (symlinks followed), or `-1`
            when the file could not be stat'ed (broken symlink, permission
            denied) or is not a regular file; extraction skips such files
            with a reason.
        mtime_ns: int. Modification time in ns from `os.stat`, or `-1` as
            for `size`.
        split_key: float. `split_key()` of the path below the split folder,
            in [0, 1).
    """

    relpath: str
    label: int
    folder_split: str
    size: int
    mtime_ns: int
    split_key: float


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The images of a data folder, as returned by `index_directory()`.

    Attributes:
        root: Path. The data folder, resolved.
        class_names: tuple of str. Sorted names of the class folders
            (the union over split folders); labels index into it.
        entries: tuple of `ImageEntry`, sorted by `relpath`.
        has_folder_splits: bool. Whether the split-folder layout was found.
        ignored: tuple of str. Relative paths of files inside the tree
            whose extension is not in `IMAGE_EXTENSIONS`.
        empty_classes: tuple of str. Class folders without any image; they
            are kept in `class_names`, as Keras does.
        skipped_dirs: tuple of (relpath, reason) pairs. Folders that were
            not entered: symlinks to folders (never followed, so a symlink
            loop cannot hang the scan) and folders that cannot be listed.
        outside_classes: tuple of str. Images lying directly in the root
            (or in a split folder) rather than in a class folder; they have
            no label and are not listed.
        output_dirs: tuple of str. Output folders of bottleneck found in the
            tree (feature sets, caches, runs folders, run folders, export
            bundles); nothing in them is listed, and a class folder that is
            one is no class.
    """

    root: Path
    class_names: tuple[str, ...]
    entries: tuple[ImageEntry, ...]
    has_folder_splits: bool
    ignored: tuple[str, ...] = ()
    empty_classes: tuple[str, ...] = ()
    skipped_dirs: tuple[tuple[str, str], ...] = ()
    outside_classes: tuple[str, ...] = ()
    output_dirs: tuple[str, ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        """Absolute paths of the entries, in entry order."""
        return tuple(self.root / e.relpath for e in self.entries)

    @property
    def labels(self) -> tuple[int, ...]:
        """Labels of the entries, in entry order."""
        return tuple(e.label for e in self.entries)

    def summary(self) -> str:
        """Returns a one-paragraph report, e.g. "Found 2062 images in 10 classes."

        Split counts are added for the split-folder layout, followed by
        notes on ignored files, empty classes, skipped folders, images
        outside class folders, output folders left out and files that could
        not be stat'ed, when there are any.
        """
        n_classes = len(self.class_names)
        text = (
            f"Found {_plural(len(self.entries), 'image')} in "
            f"{_plural(n_classes, 'class', 'classes')}"
        )
        if self.has_folder_splits:
            counts = {s: 0 for s in SPLITS}
            for e in self.entries:
                counts[e.folder_split] += 1
            text += " (" + ", ".join(f"{s}: {counts[s]}" for s in SPLITS) + ")"
        notes = [text + "."]
        if self.ignored:
            notes.append(f"Ignored {_plural(len(self.ignored), 'non-image file')}.")
        if self.empty_classes:
            notes.append(
                f"{_plural(len(self.empty_classes), 'class', 'classes')} without "
                f"images: {_quoted(self.empty_classes)}."
            )
        if self.skipped_dirs:
            listed = "; ".join(f"'{p}' ({why})" for p, why in self.skipped_dirs[:3])
            more = ", ..." if len(self.skipped_dirs) > 3 else ""
            notes.append(
                f"Skipped {_plural(len(self.skipped_dirs), 'folder')}: {listed}{more}."
            )
        if self.outside_classes:
            notes.append(
                f"{_plural(len(self.outside_classes), 'image')} outside class "
                f"folders not listed: {_quoted(self.outside_classes)}."
            )
        if self.output_dirs:
            notes.append(f"Left out {_output_note(self.output_dirs)}, not images.")
        unstatted = sum(e.size < 0 for e in self.entries)
        if unstatted:
            notes.append(
                f"{_plural(unstatted, 'file')} could not be stat'ed (broken "
                "symlink, no permission or not a regular file) and will be "
                "skipped at extraction."
            )
        return " ".join(notes)


def normalized_split(name: str) -> str | None:
    """`"train"`, `"validation"` or `"test"` for a split folder's name in any accepted spelling, else None."""
    return _SPLIT_FOLDER_NAMES.get(name.lower())


def split_key(relpath: str) -> float:
    """Maps a relative image path to a stable number in [0, 1).

    The head stage compares it with cumulative fractions to cut train,
    validation and test sets (e.g. `key < 0.8` is train). Because the key
    depends only on the path, adding images later never moves an old image
    to another split, and runs on different machines agree.

    As in TF-Hub's `retrain.py`: the path is hashed with SHA-1, and anything
    from `_nohash_` to the end of the file name is ignored first, so
    `cat/bob_nohash_1.jpg` and `cat/bob_nohash_2.jpg` (photos of one subject)
    always land in the same split. The top 53 bits of the digest divided by
    2**53 give a float that is exactly representable and below 1.

    Args:
        relpath: str. POSIX path of the image *below the split folder*, with
            its class folder, e.g. `"cat/1.jpg"` for both `cat/1.jpg` and
            `train/cat/1.jpg`. `index_directory()` strips the split folder,
            so moving a file from `train/` to `test/` keeps its key. Names
            made with `os.fsdecode` are hashed as their original bytes.

    Returns:
        A float in [0, 1).
    """
    head, _, name = relpath.rpartition("/")
    name = _NOHASH.sub("", name)
    key = f"{head}/{name}" if head else name
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def index_directory(root) -> Dataset:
    """Lists the images of a data folder with their labels.

    Class folders and files are sorted, names starting with "." are skipped
    (files and folders), folders inside a class folder are searched too
    (their images take the class's label), symlinks to folders are never
    followed (reported in `Dataset.skipped_dirs`), and symlinks to files
    are. Files whose extension is not in `IMAGE_EXTENSIONS` are counted in
    `Dataset.ignored`; a folder without images is an empty class, unless it
    is an output folder of bottleneck (`Dataset.output_dirs`). Nothing is
    opened or decoded: a file named like an image is listed even if it is
    corrupt, and extraction skips it later with a reason. A single class is
    accepted.

    Args:
        root: str, bytes or `os.PathLike`. The data folder, laid out as
            `root/<class>/...` or `root/{train,validation,test}/<class>/...`
            (see the module docstring).

    Returns:
        A `Dataset`.

    Raises:
        DataError: `root` does not exist, is not a folder, cannot be listed,
            is itself a feature set, run folder or bundle, has no class
            folders, holds no images, mixes split folders with other
            folders, or has two split folders for one split (`val/` and
            `validation/`). Its `field` is `"data"`.

    Example:

    >>> ds = index_directory("data/flowers")  # doctest: +SKIP
    >>> ds.summary()  # doctest: +SKIP
    'Found 3670 images in 5 classes.'
    """
    given = os.fsdecode(root)
    if not os.path.exists(given):
        raise DataError(f"Data folder '{given}' does not exist. {_LAYOUT_HINT}", field="data")
    if not os.path.isdir(given):
        raise DataError(f"Data folder '{given}' is a file, not a folder. {_LAYOUT_HINT}", field="data")
    root_path = Path(given).resolve()

    scan = _Scan(root_path)
    top = scan.list_dir(str(root_path), "")
    if top is None:
        reason = scan.skipped_dirs[0][1] if scan.skipped_dirs else "cannot be listed"
        raise DataError(f"Data folder '{given}' cannot be listed: {reason}.", field="data")
    what = _output_kind(str(root_path), top)
    if what:
        raise DataError(
            f"Data folder '{given}' is {what} of bottleneck, not an image folder. {_LAYOUT_HINT}",
            field="data",
        )
    scan.visit_loose(e for e in top if not _is_real_dir(e))
    class_names = tuple(sorted(_find_classes(given, scan, [e for e in top if _is_real_dir(e)])))
    if not class_names:
        left = f" (left out {_output_note(sorted(scan.output_dirs))})" if scan.output_dirs else ""
        raise DataError(
            f"Data folder '{given}' has no class folders{left}. Expected one "
            f"subfolder per class, e.g. '{given}/cat/1.jpg', or split folders "
            f"such as '{given}/train/cat/1.jpg'. {_LAYOUT_HINT}",
            field="data",
        )
    if not scan.images:
        others = f" (ignored {_plural(len(scan.ignored), 'other file')})" if scan.ignored else ""
        raise DataError(
            f"Found no images in data folder '{given}' "
            f"({_plural(len(class_names), 'class folder')}){others}. Accepted "
            f"extensions (case-insensitive): {', '.join(IMAGE_EXTENSIONS)}.",
            field="data",
        )

    label_of = {name: i for i, name in enumerate(class_names)}
    entries = tuple(
        ImageEntry(relpath, label_of[name], folder_split, size, mtime_ns, split_key(below))
        for relpath, name, folder_split, below, size, mtime_ns in sorted(scan.images)
    )
    used = {e.label for e in entries}
    return Dataset(
        root=root_path,
        class_names=class_names,
        entries=entries,
        has_folder_splits=any(e.folder_split for e in entries),
        ignored=tuple(sorted(scan.ignored)),
        empty_classes=tuple(n for i, n in enumerate(class_names) if i not in used),
        skipped_dirs=tuple(sorted(scan.skipped_dirs)),
        outside_classes=tuple(sorted(scan.outside_classes)),
        output_dirs=tuple(sorted(scan.output_dirs)),
    )


def _find_classes(given, scan, top_dirs):
    """Walks the class folders of either layout; returns their names."""
    split_dirs = [e for e in top_dirs if e.name.lower() in _SPLIT_FOLDER_NAMES]
    split_of = {e.name: _SPLIT_FOLDER_NAMES[e.name.lower()] for e in split_dirs}
    _refuse_split_clash(given, split_of)
    # Output folders are left out before the layout is judged, so `runs/`
    # beside `train/` does not make the tree look mixed.
    classes = {e.name for e in top_dirs if e.name not in split_of and scan.walk_class(e, "", "")}
    if split_of and classes:
        raise DataError(
            f"Data folder '{given}' mixes split folders {_quoted(sorted(split_of))} with other "
            f"folders {_quoted(sorted(classes))}, so it is neither layout: expected only class "
            f"folders, e.g. '{given}/cat/1.jpg', or only split folders holding class folders, "
            f"e.g. '{given}/train/cat/1.jpg'. Move the other folders into the split folders, or "
            "rename the split folders if they are classes.",
            field="data",
        )
    if "train" not in split_of.values():
        # No split folders, or `validation/` and `test/` alone: all are classes.
        return classes | {e.name for e in split_dirs if scan.walk_class(e, "", "")}
    for split_dir in split_dirs:
        children = scan.list_dir(split_dir.path, split_dir.name) or ()
        scan.visit_loose(e for e in children if not _is_real_dir(e))
        prefix, split = split_dir.name + "/", split_of[split_dir.name]
        classes.update(e.name for e in children if _is_real_dir(e) and scan.walk_class(e, prefix, split))
    return classes


def _refuse_split_clash(given, split_of):
    """Raises if two split folders name the same split (`val/`, `validation/`)."""
    clashes = [
        f"split folders {_quoted(names)} that name the same split ('{split}')"
        for split in SPLITS
        if len(names := sorted(n for n, s in split_of.items() if s == split)) > 1
    ]
    if clashes:
        raise DataError(
            f"Data folder '{given}' has {'; '.join(clashes)}. Merge them into one folder or "
            "rename one.",
            field="data",
        )


def _output_kind(path, children):
    """What output of bottleneck a folder is, judged by the names it holds, or None."""
    names = {e.name for e in children}
    for name, what in _OUTPUT_FILES.items():
        if name in names:
            return what
    if _FEATURE_SET_SHARDS in names and _holds_shard(os.path.join(path, _FEATURE_SET_SHARDS)):
        return _OUTPUT_FILES[_FEATURE_SET_INDEX]  # a set whose index is not written yet
    return None


def _holds_shard(path):
    try:
        with os.scandir(path) as it:
            return any(e.name.endswith(".h5") for e in it)
    except OSError:
        return False


def _is_real_dir(entry):
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


class _Scan:
    """Accumulates what a scan of one data folder finds."""

    def __init__(self, root):
        self.root = root
        self.images = []  # (relpath, class name, folder_split, path below split, size, mtime_ns)
        self.ignored = []
        self.skipped_dirs = []
        self.outside_classes = []
        self.output_dirs = []

    def list_dir(self, path, relpath):
        """Returns the non-hidden entries of a folder, or None if unreadable."""
        try:
            with os.scandir(path) as it:
                return [e for e in it if not e.name.startswith(".")]
        except OSError as e:
            self.skipped_dirs.append((relpath or ".", _os_reason(e)))
            return None

    def visit_loose(self, dir_entries):
        """Records files that are not inside a class folder."""
        for entry in dir_entries:
            if self._skip_dir_link(entry, _rel(self.root, entry.path)):
                continue
            if _is_image_name(entry.name):
                self.outside_classes.append(_rel(self.root, entry.path))
            else:
                self.ignored.append(_rel(self.root, entry.path))

    def walk_class(self, entry, prefix, folder_split):
        """Lists the images of a class folder; returns False if it is an output folder.

        A folder without images that holds output folders (a cache, a runs
        folder) or a leaderboard is one as a whole: it is recorded alone,
        and what was found inside it is dropped.
        """
        marks = [len(found) for found in (self.images, self.ignored, self.skipped_dirs, self.output_dirs)]
        self._walk(entry.path, prefix, entry.name, folder_split)
        if len(self.images) > marks[0]:
            return True
        if len(self.output_dirs) == marks[3] and not os.path.isfile(os.path.join(entry.path, _RUNS_FILE)):
            return True  # an empty class, as Keras keeps it
        del self.ignored[marks[1]:], self.skipped_dirs[marks[2]:], self.output_dirs[marks[3]:]
        self.output_dirs.append(prefix + entry.name)
        return False

    def _walk(self, path, prefix, class_name, folder_split):
        # An explicit stack instead of recursion: deep trees cannot hit the
        # recursion limit, and order does not matter because images are
        # sorted at the end.
        stack = [(path, class_name)]
        while stack:
            dir_path, dir_rel = stack.pop()
            children = self.list_dir(dir_path, prefix + dir_rel)
            if children and _output_kind(dir_path, children):
                self.output_dirs.append(prefix + dir_rel)
                continue
            for entry in children or ():
                rel = f"{dir_rel}/{entry.name}"
                if _is_real_dir(entry):
                    stack.append((entry.path, rel))
                elif self._skip_dir_link(entry, prefix + rel):
                    continue
                elif not _is_image_name(entry.name):
                    self.ignored.append(prefix + rel)
                else:
                    size, mtime_ns = stat_image(entry.path)
                    self.images.append((prefix + rel, class_name, folder_split, rel, size, mtime_ns))

    def _skip_dir_link(self, entry, relpath):
        """Records and skips a symlink to a folder (never followed)."""
        try:
            if entry.is_symlink() and entry.is_dir():
                self.skipped_dirs.append((relpath, "symlink to a folder, not followed"))
                return True
        except OSError:
            pass
        return False


def stat_image(path) -> tuple[int, int]:
    """(size, mtime_ns) of an image file, or (-1, -1) when it cannot be stat'ed or is not a regular file."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    if not stat.S_ISREG(st.st_mode):
        # Hashing or decoding a FIFO named like an image would block.
        return -1, -1
    return st.st_size, st.st_mtime_ns


def _rel(root, path):
    return Path(path).relative_to(root).as_posix()


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _os_reason(error):
    if isinstance(error, PermissionError):
        return "permission denied"
    return error.strerror or str(error)


def _plural(n, word, plural=None):
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _quoted(names, limit=5):
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (", ..." if len(names) > limit else "")


def _output_note(dirs, limit=5):
    """`'cache/' and 'runs/': output folders of bottleneck`, for a summary or error."""
    shown = [f"'{d}/'" for d in dirs[:limit]] + ([f"{len(dirs) - limit} more"] if len(dirs) > limit else [])
    listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
    kind = "an output folder" if len(dirs) == 1 else "output folders"
    return f"{listed}: {kind} of bottleneck"
