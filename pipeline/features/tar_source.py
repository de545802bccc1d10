"""WebDataset tar shards as data: `shards/{00000..00099}.tar`, local or behind a URL.

A shard holds samples: members sharing a key (the member's path up to the
first "." of its file name), one member per field, as img2dataset writes
them (`000042.jpg`, `000042.cls`, `000042.json`). Each sample gives one item:

- its image is the `.jpg`, `.jpeg`, `.png` or `.webp` member (the first one, in
  that order);
- its label is the `.cls` member (an integer, class names sorted as numbers),
  else the `.txt` member (the class name), else the `label` (or `cls`) of the
  `.json` member;
- its id is `<shard>/<key>.<ext>` (`00001.tar/000042.jpg`), the shard named
  relative to the pattern's folder, so rows are tracked per sample: a killed
  run resumes at the sample, and a re-run reads no image bytes when no
  shard changed.

Listing reads every member header (a shard is a stream of headers and
data), but the image bytes are read later, by byte range, when the item is
decoded. A sample without a label is not listed (`Dataset.outside_classes`);
a shard that cannot be read, or whose tar structure breaks off, is reported
in `Dataset.skipped_dirs` with its reason, keeping the samples read before
the break. A member whose image is corrupt is skipped at decode with its
reason, like a bad file.
"""

from __future__ import annotations

import array
import concurrent.futures
import dataclasses
import hashlib
import json
import re
import tarfile
from typing import Any

from ..errors import DataError
from .discovery import Dataset
from .items import Item, build_dataset, change_token, fetch, filesystem, recorded_root, shown_url

__all__ = ["TarMember", "expand_braces", "is_tar_data", "list_tar_shards"]

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_LABEL_EXTS = ("cls", "txt", "json")
_MAX_LABEL_BYTES = 1 << 16  # a label member larger than this is no label
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")
_LISTERS = 16  # shards whose headers are read at once (a remote shard waits on the network)


def is_tar_data(data: str) -> bool:
    """Whether `data` names tar shards: a path or URL ending in `.tar`, brace pattern allowed."""
    return data.lower().endswith(".tar")


def expand_braces(pattern: str) -> list[str]:
    """The names of a brace pattern: `{00000..00002}` (zero-padded as written) and `{a,b}`, any number of groups."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        choices = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    return [name for choice in choices for name in expand_braces(head + choice + tail)]


@dataclasses.dataclass(frozen=True, slots=True)
class TarMember:
    """The reader of one image member: a byte range of its shard."""

    fs: Any
    shard: str
    offset: int
    size: int

    def read_bytes(self, limit: int) -> bytes:
        return fetch(self.fs, self.shard, self.offset, self.offset + min(self.size, limit))


@dataclasses.dataclass(frozen=True)
class _Members:
    """The image members of the listed shards, as compact arrays: a listing of 100,000 samples
    holds 16 bytes per sample here, where a reader object per sample took ten times that."""

    fs: Any
    shards: list[str]
    offsets: list[array.array]  # per shard, per member listed
    sizes: list[array.array]

    def reader_at(self, place: int) -> TarMember:
        shard, member = divmod(place, _PLACES_PER_SHARD)
        return TarMember(self.fs, self.shards[shard], self.offsets[shard][member], self.sizes[shard][member])


_PLACES_PER_SHARD = 1 << 32  # an item's place: shard number * this + its member's number in the shard


def list_tar_shards(data: str) -> Dataset:
    """Lists the samples of the shards `data` names (a brace pattern, a path or a URL).

    Raises:
        DataError: the pattern is malformed, or no shard holds a labelled image.
    """
    fs, _ = filesystem(data.split("{", 1)[0] or ".")  # the pattern's folder names the filesystem
    shards = [fs._strip_protocol(name) for name in expand_braces(data)]
    folder = shards[0].rpartition("/")[0]
    with concurrent.futures.ThreadPoolExecutor(_LISTERS) as pool:
        listed = list(pool.map(lambda n: _list_shard(fs, n, shards[n], folder), range(len(shards))))
    items = [item for shard_items, *_ in listed for item in shard_items]
    unlabelled = sorted(i for _, missing, *_ in listed for i in missing)
    skipped = [problem for _, _, problem, _ in listed if problem]
    if not items:
        why = "; ".join(f"'{s}': {r}" for s, r in skipped[:3]) or "no sample has an image and a label member"
        raise DataError(
            f"Found no labelled images in tar shards '{shown_url(data)}' ({len(shards)} shards: {why}). Each "
            f"sample needs an image member ({', '.join(_IMAGE_EXTS)}) and a label member "
            f"({', '.join(_LABEL_EXTS)}).",
            field="data",
        )
    numeric = all(item.label.isdigit() for item in items)
    members = _Members(fs, shards, [ranges[0] for *_, ranges in listed], [ranges[1] for *_, ranges in listed])
    dataset = build_dataset(recorded_root(data), items, numeric_labels=numeric, skipped=sorted(skipped),
                            reader_at=members.reader_at)
    return dataclasses.replace(dataset, outside_classes=tuple(unlabelled))


def _list_shard(fs, number: int, shard: str, folder: str):
    """`(items, ids without a label, (shard, reason) or None, (offsets, sizes))` of one shard."""
    name = shard[len(folder):].lstrip("/") if folder else shard
    offsets, sizes = array.array("q"), array.array("q")
    try:
        token = change_token(fs.info(shard))
        samples, problem = _read_headers(fs, shard)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable shard is reported, never fatal
        return [], [], (name, f"cannot be read: {type(e).__name__}: {e}"), (offsets, sizes)
    items, unlabelled, labels = [], [], {}
    for key, fields in samples.items():
        ext = next((e for e in _IMAGE_EXTS if e in fields), None)
        if ext is None:
            continue
        offset, size = fields[ext]
        item_id = f"{name}/{key}.{ext}"
        label = _label(fields)
        if label is None:
            unlabelled.append(item_id)
            continue
        # The shard's token and the member's place: a rewritten shard re-hashes its samples (rows stay keyed by content).
        sample_token = int.from_bytes(hashlib.sha256(f"{token}:{offset}".encode()).digest()[:7], "big")
        place = number * _PLACES_PER_SHARD + len(offsets)
        offsets.append(offset)
        sizes.append(size)
        items.append(Item(item_id, labels.setdefault(label, label), "", size, sample_token, place))
    return items, unlabelled, problem and (name, problem), (offsets, sizes)


def _read_headers(fs, shard: str):
    """`({key: {ext: (offset, size) or label text}}, reason the stream broke off or None)`."""
    samples: dict[str, dict] = {}
    with fs.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        try:
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header read: a shard's thousands, 16 shards at once
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot or stem.startswith("."):
                    continue
                key, ext = (f"{folder}/{stem}" if folder else stem), ext.lower()
                if ext in _IMAGE_EXTS:
                    samples.setdefault(key, {})[ext] = (member.offset_data, member.size)
                elif ext in _LABEL_EXTS and member.size <= _MAX_LABEL_BYTES:
                    samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            return samples, f"tar stream breaks off after {len(samples)} samples: {type(e).__name__}: {e}"
        # tarfile ends quietly at a cut-off header; a whole shard ends with two zero blocks.
        f.seek(tar.offset)
        end = f.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.strip(b"\0"):
        return samples, f"tar stream breaks off after {len(samples)} samples: no end-of-archive marker (truncated)"
    return samples, None


def _label(fields: dict) -> str | None:
    """The sample's class name: `.cls`, else `.txt`, else the `.json` member's `label` or `cls`."""
    for ext in ("cls", "txt"):
        if ext in fields:
            text = fields[ext].decode("utf-8", "replace").strip()
            return text or None
    if "json" in fields:
        try:
            meta = json.loads(fields["json"])
        except ValueError:
            return None
        value = meta.get("label", meta.get("cls")) if isinstance(meta, dict) else meta
        return None if value is None or isinstance(value, (dict, list)) else str(value)
    return None
