"""What every CSV import shares: reading the file, the preview it answers, the refusal.

Imports (devices_app.imports, sites_app.imports) validate every row before anything is
written, report each row's errors with the column and the reason, and apply all rows or none.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
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


def read_csv(
    data: str | bytes, *, required: Sequence[str], writable: Sequence[str], read_only: Sequence[str] = ()
) -> tuple[list[str], list[dict]]:
    """The header and rows of a CSV file (UTF-8, a BOM allowed). Raises ValidationError (on
    `file`) for a file that is not UTF-8 text, lacks a required column or names an unknown one."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValidationError({"file": "The file is not UTF-8 text."}) from None
    data = data.removeprefix("\ufeff")
    if "\x00" in data:
        raise ValidationError({"file": "The file holds NUL characters; it is not a CSV text file."})
    reader = csv.DictReader(io.StringIO(data, newline=""))
    header = [name.strip() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
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
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ValidationError({"file": f"The file is not valid CSV: {exc}."}) from None
    return header, rows
