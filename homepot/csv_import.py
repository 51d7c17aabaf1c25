"""What every CSV (or spreadsheet) import shares: reading the file, the preview it answers,
the refusal.

Imports (devices_app.imports, sites_app.imports) validate every row before anything is
written, report each row's errors with the column and the reason, and apply all rows or none.
The file is CSV (UTF-8) or an Excel workbook (.xlsx: its first sheet, read with openpyxl's
read-only mode, row by row); `read_table` tells them apart by the zip signature that starts
every .xlsx, and both come out as the same header and rows of text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError

from homepot.csv_export import FORMULA_PREFIXES

PREVIEW_ROWS = 200  # row-by-row outcomes shown in a preview; the counts cover every row
MAX_ERRORS = 1000  # after this many, the preview stops listing them (the count goes on)


class ImportRefused(Exception):
    """The file cannot be applied: `preview` names every row error. Nothing was written."""

    def __init__(self, preview: ImportPreview):
        super().__init__(f"{preview.error_count} row error(s); nothing was imported.")
        self.preview = preview


@dataclass
class ImportPreview:
    """What an import would do (a preview) or did (`applied`)."""

    id_key: str = "device_id"  # the column naming a row's object in errors and outcomes
    rows: int = 0
    create: int = 0
    update: int = 0
    skip: int = 0
    error_count: int = 0
    errors: list[dict] = field(default_factory=list)  # {"row", <id_key>, "field", "message"}
    # The first PREVIEW_ROWS rows' outcomes: {"row", <id_key>, "action", "fields"}.
    outcomes: list[dict] = field(default_factory=list)
    applied: bool = False
    # The rows to write, full values each (not part of the answer).
    writes: list[tuple] = field(default_factory=list, repr=False)
    sites: set[str] = field(default_factory=set, repr=False)

    def error(self, row: int, ident: str, column: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append({"row": row, self.id_key: ident, "field": column, "message": message})

    def outcome(self, row: int, ident: str, action: str, changed: list[str]) -> None:
        if len(self.outcomes) < PREVIEW_ROWS:
            self.outcomes.append({"row": row, self.id_key: ident, "action": action, "fields": changed})

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "create": self.create,
            "update": self.update,
            "skip": self.skip,
            "error_count": self.error_count,
            "errors": self.errors,
            "errors_truncated": self.error_count > len(self.errors),
            "outcomes": self.outcomes,
            "applied": self.applied,
        }


def unguard(text: str) -> str:
    # The export quotes cells that a spreadsheet would run ('=...); read them back as written.
    text = text.strip()
    return text[1:] if text[:1] == "'" and text[1:2] in FORMULA_PREFIXES else text


XLSX_SIGNATURE = b"PK\x03\x04"  # an .xlsx is a zip archive


def read_table(
    data: str | bytes, *, required: Sequence[str], writable: Sequence[str], read_only: Sequence[str] = ()
) -> tuple[list[str], Iterable[dict]]:
    """The header and rows of a CSV file or of an .xlsx workbook's first sheet (see read_csv)."""
    if isinstance(data, bytes) and data.startswith(XLSX_SIGNATURE):
        header, rows = _read_xlsx(data)
        _check_header(header, required=required, writable=writable, read_only=read_only)
        return header, rows
    return read_csv(data, required=required, writable=writable, read_only=read_only)


def _xlsx_text(value) -> str:
    """A cell as the text a CSV would hold: whole numbers without ".0", true/false, ISO times."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _read_xlsx(data: bytes) -> tuple[list[str], Iterator[dict]]:
    """Rows of the first sheet as dicts keyed by the header row, like csv.DictReader: cells past
    the header under None (an error for the importer), empty rows dropped (a sheet often ends
    with some). Read-only mode: openpyxl reads the sheet's XML as the rows are consumed, not
    into a tree, and the rows are read as the preview asks for them."""
    import zipfile

    from openpyxl import load_workbook
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        workbook = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError, OSError):
        raise ValidationError({"file": "The file is not a readable .xlsx workbook."}) from None
    cells = workbook.worksheets[0].iter_rows(values_only=True) if workbook.worksheets else iter(())
    header = [_xlsx_text(value).strip() for value in next(cells, ())]
    while header and not header[-1]:
        header.pop()
    return header, _xlsx_rows(workbook, cells, header)


def _xlsx_rows(workbook, cells, header: list[str]) -> Iterator[dict]:
    try:
        for values in cells:
            texts = [_xlsx_text(value) for value in values]
            if not any(text.strip() for text in texts):
                continue
            row = dict(zip(header, texts[: len(header)], strict=False))
            extra = [text for text in texts[len(header) :] if text.strip()]
            if extra:
                row[None] = extra
            yield row
    finally:
        workbook.close()


def _check_header(
    header: list[str], *, required: Sequence[str], writable: Sequence[str], read_only: Sequence[str]
) -> None:
    missing = [name for name in required if name not in header]
    if missing:
        raise ValidationError(
            {"file": f"Missing column(s): {', '.join(missing)}. Columns: {', '.join(writable)}."}
        )
    unknown = [name for name in header if name not in writable and name not in read_only]
    if unknown:
        raise ValidationError(
            {"file": f"Unknown column(s): {', '.join(unknown)}. Columns: {', '.join(writable)}."}
        )


def read_csv(
    data: str | bytes, *, required: Sequence[str], writable: Sequence[str], read_only: Sequence[str] = ()
) -> tuple[list[str], Iterator[dict]]:
    """The header and the rows of a CSV file (UTF-8, a BOM allowed), the rows read one at a
    time as they are consumed: the decoded text and the parsed rows of the whole file are never
    held at once, only the upload itself. Raises ValidationError (on `file`) for a file that is
    not UTF-8 text (also while the rows are read), holds NUL characters, lacks a required column
    or names an unknown one."""
    if isinstance(data, bytes):
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")
    else:
        text = io.StringIO(data.removeprefix("\ufeff"), newline="")
    reader = csv.DictReader(text)
    with _file_errors():
        header = [name.strip() for name in (reader.fieldnames or [])]
    if any("\x00" in name for name in header):
        raise ValidationError({"file": _NUL})
    reader.fieldnames = header
    _check_header(header, required=required, writable=writable, read_only=read_only)
    return header, _rows(reader)


_NUL = "The file holds NUL characters; it is not a CSV text file."


@contextlib.contextmanager
def _file_errors():
    try:
        yield
    except UnicodeDecodeError:
        raise ValidationError({"file": "The file is not UTF-8 text."}) from None
    except csv.Error as exc:
        raise ValidationError({"file": f"The file is not valid CSV: {exc}."}) from None


def _rows(reader: csv.DictReader) -> Iterator[dict]:
    with _file_errors():
        for row in reader:
            if any("\x00" in value for value in row.values() if isinstance(value, str)):
                raise ValidationError({"file": _NUL})
            yield row


def batches(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """`rows` in lists of at most `size`, read as they are needed."""
    rows = iter(rows)
    while batch := list(itertools.islice(rows, size)):
        yield batch
