"""Text cells of the CSV files this product writes, safe to open in a spreadsheet and read back as written.

A spreadsheet runs a cell starting with `=`, `+`, `-`, `@`, tab or carriage
return as a formula, and paths, class names and lineage are user-controlled
(a class `-1`, a data folder `=cmd`). Such a cell gets a leading `'`, as
OWASP ("CSV Injection") advises: the spreadsheet shows it as text. A cell
that itself starts with `'` gets one too, so `unescape` is exact: every
reader of these files strips one leading `'` and gets the text back.
"""

from __future__ import annotations

__all__ = ["escape", "unescape"]

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape(text: str) -> str:
    """`text` as a CSV cell: a leading `'` added before a formula start or a `'`."""
    return "'" + text if text.startswith((*_FORMULA_STARTS, "'")) else text


def unescape(cell: str) -> str:
    """The text `escape` wrote as `cell`."""
    return cell[1:] if cell.startswith("'") else cell
