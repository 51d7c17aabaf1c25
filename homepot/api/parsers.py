import io
import re
from typing import NoReturn

from django.conf import settings
from rest_framework import exceptions, parsers, status

# A JSON escape that may decode to text PostgreSQL cannot store: NUL (\u0000) or half of a
# UTF-16 surrogate pair (\ud800-\udfff). Raw NUL bytes and raw surrogates cannot occur in a
# body json.loads accepts, so a body without such an escape needs no further look.
SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|d[89a-f])", re.IGNORECASE)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_TEXT = (
    "Text may not contain NUL characters or unpaired UTF-16 surrogates (\\ud800-\\udfff); "
    "they cannot be stored."
)


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


class BoundedJSONParser(parsers.JSONParser):
    """JSON, refused with 413 above DATA_UPLOAD_MAX_MEMORY_SIZE.

    For JSON, DRF 3.18 reads `request.body`, where Django refuses a declared length above
    the limit (RequestDataTooBig, which homepot.api.errors answers with 413). This parser
    checks again whatever stream it is handed, declared length or not, so the bound holds
    however the body reaches it; it never reads more than the limit plus one byte.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        try:
            declared = int(declared or 0)
        except ValueError:
            declared = 0
        if limit is not None and declared > limit:
            raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit} bytes.")
        body = None
        if limit is not None and stream is not None:
            body = stream.read(limit + 1)
            if len(body) > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            stream = io.BytesIO(body)
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            # `[[[[...` a few thousand deep exhausts Python's stack inside json.loads; that
            # is the client's malformed input, not a server error.
            raise exceptions.ParseError("JSON parse error - nesting is too deep.") from None
        if body is None or SUSPECT_ESCAPE.search(body):
            refuse_unstorable_text(data)
        return data


def refuse_unstorable_text(data) -> None:
    """Raise a 400 when `data` holds a string or key PostgreSQL refuses in text and jsonb
    columns (a NUL character or a lone surrogate), instead of letting the database answer
    500 later. The error names the top-level field (as a serializer would) and says where
    inside it (`metrics.k`, `reports.0.metrics`). Walked without recursion, so depth is no
    risk; the offending text is never echoed (the renderer could not encode it either)."""
    pending = [("", data)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if _UNSTORABLE.search(key):  # named by its parent: the key cannot be echoed
                    _refuse(path)
                pending.append((_child(path, key), value))
        elif isinstance(item, list):
            pending.extend((_child(path, index), value) for index, value in enumerate(item))
        elif isinstance(item, str) and _UNSTORABLE.search(item):
            _refuse(path)


def _child(path: str, name) -> str:
    """`metrics.k`, `reports.0`: the way homepot.api.errors names nested fields."""
    return f"{path}.{name}" if path else str(name)


def _refuse(path: str) -> NoReturn:
    field = path.split(".", 1)[0] or "non_field_errors"
    where = f" (at {path})" if "." in path else ""
    raise exceptions.ValidationError({field: [UNSTORABLE_TEXT + where]})


class CSVTextParser(parsers.BaseParser):
    """A `text/csv` body, handed to the view as bytes (an import decodes and checks it).

    Bounded by HOMEPOT_IMPORT_MAX_BYTES, not the JSON limit: a fleet's CSV is megabytes. It
    never reads more than the limit plus one byte.
    """

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.HOMEPOT_IMPORT_MAX_BYTES
        if stream is None:
            return b""
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"The CSV file exceeds the limit of {limit} bytes.")
        return body
