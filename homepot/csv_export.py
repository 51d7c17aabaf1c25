"""Streaming CSV (and .xlsx) exports shared by the API and the admin.

Rows are read in keyset batches (`WHERE key > last ORDER BY key LIMIT n`), never OFFSET and
never one big result set, so an export of 100,000 rows keeps the process's memory flat and
works the same behind a transaction-pooling connection pooler (no server-side cursor).
"""

import csv
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

from django.db.models import QuerySet
from django.http import FileResponse, StreamingHttpResponse

EXPORT_BATCH = 2000
XLSX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# A cell starting with one of these runs as a formula in a spreadsheet (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class _Echo:
    """A file-like object whose write returns what it was given (csv.writer into a stream)."""

    def write(self, value):
        return value


def csv_safe(value) -> str:
    """The cell as text, with a quote before a leading = + - @ (or tab, CR): a spreadsheet
    would otherwise run the cell as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in FORMULA_PREFIXES else text


def keyset_rows(
    queryset: QuerySet, *, key: str, fields: Sequence[str], batch: int = EXPORT_BATCH
) -> Iterator:
    """Every row of `queryset` as a tuple of `fields`, in `key` order (a unique, indexed
    column such as the primary key), fetched `batch` rows per query. Read-only."""
    base = queryset.order_by(key).values_list(key, *fields)
    last = None
    while True:
        page = base.filter(**{f"{key}__gt": last}) if last is not None else base
        rows = list(page[:batch])
        for row in rows:
            yield row[1:]
        if len(rows) < batch:
            return
        last = rows[-1][0]


def csv_stream(header: Sequence[str], rows: Iterable[Sequence], cell: Callable = csv_safe) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow([cell(value) for value in row])


def csv_response(header: Sequence[str], rows: Iterable[Sequence], filename: str) -> StreamingHttpResponse:
    """A streamed CSV download. Build `rows` lazily: nothing is read until the first chunk."""
    response = StreamingHttpResponse(csv_stream(header, rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def xlsx_response(header: Sequence[str], rows: Iterable[Sequence], filename: str) -> FileResponse:
    """The same rows as an Excel workbook (.xlsx, one sheet). openpyxl's write-only mode writes
    each row out as it comes (no tree of cells), and the finished file is spooled to a temporary
    file past 8 MB, so memory stays bounded at 100,000 rows. Unlike the CSV, the download starts
    once the workbook is complete: an .xlsx is a zip archive, whose index is written last.
    Cells are text, guarded like the CSV's (a leading = + - @ gets a quote), so the import reads
    an export back unchanged."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("export")
    sheet.append(list(header))
    for row in rows:
        sheet.append([csv_safe(value) for value in row])
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - the response closes it
    workbook.save(spool)
    spool.seek(0)
    response = FileResponse(spool, as_attachment=True, filename=filename, content_type=XLSX_CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
