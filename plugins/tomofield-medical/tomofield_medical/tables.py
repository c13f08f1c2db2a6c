"""Spreadsheets as datasets ship them: CSV, or the first worksheet of an ``.xlsx`` workbook.

Workbooks are read with openpyxl (read-only, cached values of formulas): shared and inline
strings, numbers, booleans, dates and the order of the sheets are its to get right. Rows are
streamed, so the 770,000-row Duke file mapping table reads in bounded memory apart from its
shared-string table. Cell values come back as text, ``""`` for an empty cell, surrounding
space stripped: numbers as Python writes them (``"234"``, ``"0.5"``), booleans ``"TRUE"`` /
``"FALSE"``, dates ISO 8601 (``"2019-03-07"``, with the time where it is not midnight). A
row is as wide as its last stored cell; an empty row (a blank CSV line, a row the sheet
does not store) is ``[]``. CSV goes through the
csv module: the delimiter is sniffed (comma, semicolon or tab), the encoding is UTF-8 (a
byte-order mark dropped) or, where the file is not valid UTF-8, Latin-1.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tomofield.errors import InputError


def iter_rows(path: str | Path) -> Iterator[list[str]]:
    """Rows of a ``.csv`` (comma, semicolon or tab separated) or ``.xlsx`` file, as lists of text."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"table {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix in (".xlsx", ".xlsm"):
        yield from _xlsx_rows(path)
    else:
        raise InputError(f"table {str(path)!r}: unsupported format; valid: .csv, .xlsx")


def _csv_encoding(path: Path) -> str:
    """``"utf-8-sig"`` where the whole file is valid UTF-8, else ``"latin-1"`` (which decodes any bytes).

    Decided over the whole file, in chunks, before a row is read: a file whose first bad
    byte comes late must not yield its first rows twice (once per encoding tried).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with path.open("rb") as fh:
        try:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8-sig"


def _csv_rows(path: Path) -> Iterator[list[str]]:
    with path.open(newline="", encoding=_csv_encoding(path)) as fh:
        head = fh.read(8192)
        fh.seek(0)
        try:
            dialect = csv.Sniffer().sniff(head, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        for row in csv.reader(fh, dialect):
            yield [c.strip() for c in row]


def _cell_text(value: object) -> str:
    """A cell's value as openpyxl reads it, as text (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, bool):  # before int: bool is an int
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value).strip()


def _xlsx_rows(path: Path) -> Iterator[list[str]]:
    import openpyxl  # here, not at the top: only xlsx tables need it

    def unreadable(exc: Exception) -> InputError:
        return InputError(
            f"cannot read {str(path)!r} as an xlsx workbook ({type(exc).__name__}: {exc}); export it as CSV instead"
        )

    # openpyxl reports a broken workbook with whatever its zip and XML layers raise (BadZipFile,
    # KeyError, SyntaxError, ValueError, IndexError, InvalidFileException...): each is the same
    # answer for the user, so any error while opening or reading becomes one InputError
    try:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise unreadable(exc) from exc
    try:
        if not wb.worksheets:
            raise unreadable(KeyError("no worksheet in the workbook"))
        sheet = wb.worksheets[0]  # the first worksheet in the workbook's order (chart sheets skipped)
        sheet.reset_dimensions()  # rows as stored, not as the sheet's (possibly stale) dimension tag says
        rows = sheet.iter_rows(values_only=True)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:
                raise unreadable(exc) from exc
            yield [_cell_text(v) for v in row]
    finally:
        wb.close()


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def read_table(
    path: str | Path,
    required: Sequence[str],
    key: str | None = None,
    key_pattern: str | None = None,
    max_header_row: int = 10,
) -> list[dict[str, str]]:
    """Rows of a table as dicts over the ``required`` columns.

    The header is the first of the first ``max_header_row`` rows that names every required
    column (case and spacing ignored), so tables with title or legend rows above or below
    their header read too. With ``key_pattern``, only rows whose ``key`` column matches it
    (a regular expression) are data rows, which skips legend rows under the header.
    """
    path = Path(path)
    rows = iter_rows(path)
    want = {_norm(r): r for r in required}
    cols: dict[str, int] | None = None
    seen: list[list[str]] = []
    for i, row in enumerate(rows):
        names = {_norm(c): j for j, c in enumerate(row) if c}
        if all(w in names for w in want):
            cols = {orig: names[w] for w, orig in want.items()}
            break
        seen.append(row)
        if i + 1 >= max_header_row:
            break
    if cols is None:
        first = [c for c in (seen[0] if seen else []) if c][:8]
        raise InputError(
            f"{str(path)!r}: no header row naming {', '.join(required)} in its first "
            f"{max_header_row} rows (first row: {first})"
        )
    out = []
    for row in rows:
        rec = {name: (row[j] if j < len(row) else "") for name, j in cols.items()}
        if key is not None and key_pattern is not None and not re.fullmatch(key_pattern, rec[key]):
            continue
        if not any(rec.values()):
            continue
        out.append(rec)
    return out


def to_int(value: str, where: str) -> int:
    """An integer cell (``"12"`` or ``"12.0"``); errors name the table and the row."""
    try:
        f = float(value)
    except ValueError:
        raise InputError(f"{where}: {value!r} is not a number") from None
    if not f.is_integer():
        raise InputError(f"{where}: {value!r} is not a whole number")
    return int(f)
