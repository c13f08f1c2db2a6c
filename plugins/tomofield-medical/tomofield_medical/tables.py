"""Spreadsheets as datasets ship them: CSV, or the first worksheet of an ``.xlsx`` workbook.

The xlsx reader needs no third-party package: a workbook is a zip of XML parts, and only
cell values are needed (shared strings, inline strings, numbers, booleans). Rows are
streamed, so the 770,000-row Duke file mapping table reads in bounded memory apart from its
shared-string table. Cell values come back as text, ``""`` for an empty cell; numbers keep
Excel's text (``"234"``, ``"0.5"``).
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.etree import ElementTree as ET

from tomofield.errors import InputError

_NS = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL_NS = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL_NS = "{http://schemas.openxmlformats.org/package/2006/relationships}"


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


def _csv_rows(path: Path) -> Iterator[list[str]]:
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            with path.open(newline="", encoding=encoding) as fh:
                head = fh.read(8192)
                fh.seek(0)
                try:
                    dialect = csv.Sniffer().sniff(head, delimiters=",;\t")
                except csv.Error:
                    dialect = csv.excel
                for row in csv.reader(fh, dialect):
                    yield [c.strip() for c in row]
            return
        except UnicodeDecodeError:
            continue


def _col_index(ref: str) -> int:
    """0-based column of a cell reference such as ``"AB12"``."""
    n = 0
    for ch in ref:
        if not ch.isalpha():
            break
        n = n * 26 + (ord(ch.upper()) - 64)
    return n - 1


def _text(el: ET.Element) -> str:
    return "".join(t.text or "" for t in el.iter(f"{_NS}t"))


def _xlsx_rows(path: Path) -> Iterator[list[str]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot read {str(path)!r} as an xlsx workbook ({exc}); export it as CSV instead") from exc
    with zf:
        try:
            sheet = _first_sheet(zf)
            strings = []
            if "xl/sharedStrings.xml" in zf.namelist():
                with zf.open("xl/sharedStrings.xml") as fh:
                    for _, el in ET.iterparse(fh):
                        if el.tag == f"{_NS}si":
                            strings.append(_text(el))
                            el.clear()
            with zf.open(sheet) as fh:
                for _, el in ET.iterparse(fh):
                    if el.tag != f"{_NS}row":
                        continue
                    cells: dict[int, str] = {}
                    for i, c in enumerate(el.iter(f"{_NS}c")):
                        col = _col_index(c.get("r", "")) if c.get("r") else i
                        kind, v = c.get("t", "n"), c.find(f"{_NS}v")
                        if kind == "s" and v is not None:
                            value = strings[int(v.text or 0)]
                        elif kind == "inlineStr":
                            is_ = c.find(f"{_NS}is")
                            value = _text(is_) if is_ is not None else ""
                        elif kind == "b" and v is not None:
                            value = "TRUE" if (v.text or "0") != "0" else "FALSE"
                        else:
                            value = (v.text or "") if v is not None else ""
                        cells[col] = value.strip()
                    el.clear()
                    width = max(cells) + 1 if cells else 0
                    yield [cells.get(i, "") for i in range(width)]
        except (KeyError, ET.ParseError, ValueError, IndexError) as exc:
            raise InputError(
                f"cannot read {str(path)!r} as an xlsx workbook ({type(exc).__name__}: {exc}); export it as CSV instead"
            ) from exc


def _first_sheet(zf: zipfile.ZipFile) -> str:
    """The zip member of the workbook's first worksheet."""
    names = set(zf.namelist())
    try:
        wb = ET.fromstring(zf.read("xl/workbook.xml"))
        rels = ET.fromstring(zf.read("xl/_rels/workbook.xml.rels"))
        first = wb.find(f"{_NS}sheets/{_NS}sheet")
        rid = first.get(f"{_REL_NS}id") if first is not None else None
        for rel in rels.iter(f"{_PKG_REL_NS}Relationship"):
            if rel.get("Id") == rid:
                target = rel.get("Target", "").lstrip("/")
                target = target if target.startswith("xl/") else f"xl/{target}"
                if target in names:
                    return target
    except KeyError:
        pass
    sheets = sorted(n for n in names if re.fullmatch(r"xl/worksheets/sheet\d+\.xml", n))
    if not sheets:
        raise KeyError("no worksheet in the workbook")
    return sheets[0]


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
