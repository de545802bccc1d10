"""Text cells of the CSV files this product writes, safe to open in a spreadsheet and read back as written.

A spreadsheet runs a cell starting with `=`, `+`, `-`, `@`, tab or carriage
return as a formula, and paths, class names and lineage are user-controlled
(a class `-1`, a data folder `=cmd`). Such a cell gets a leading `'`, as
OWASP ("CSV Injection") advises: the spreadsheet shows it as text. A cell
that itself starts with `'` gets one too, so `unescape` is exact: every
reader of these files strips one leading `'` and gets the text back.

File names need not be UTF-8 on Linux: such a name is a `str` holding
surrogates (`os.fsdecode`), which a UTF-8 file cannot hold. Its bytes that
are not UTF-8 are written as `\\xNN` escapes (as `store.shown_path` shows
them), and `unescape` turns them back into the same surrogates, so the
name read back opens the same file.
"""

from __future__ import annotations

import re

from ..store import shown_path

__all__ = ["escape", "unescape"]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_BYTE_ESCAPE = re.compile(r"\\x([89a-f][0-9a-f])")  # only bytes >= 0x80 are ever escaped


def escape(text: str) -> str:
    """`text` as a CSV cell: bytes that are not UTF-8 as `\\xNN`, a leading `'` before a formula start or a `'`."""
    text = shown_path(text)
    return "'" + text if text.startswith((*_FORMULA_STARTS, "'")) else text


def unescape(cell: str) -> str:
    """The text `escape` wrote as `cell`."""
    cell = cell[1:] if cell.startswith("'") else cell
    return _BYTE_ESCAPE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), cell) if "\\x" in cell else cell
