"""Database functions the ORM lacks."""

from django.db.models import CharField, F, Func

# DRF's DateTimeField output in UTC (Python's isoformat, "+00:00" written "Z"): microseconds
# only when they are not zero. NULL stays NULL. PostgreSQL only.
_UTC_ISO_TEMPLATE = (
    "CASE WHEN date_trunc('second', %(expressions)s) = %(expressions)s "
    "THEN to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "ELSE to_char(%(expressions)s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') END"
)


class UtcIsoText(Func):
    """A timestamp column as the API writes it when the current time zone is UTC."""

    template = _UTC_ISO_TEMPLATE
    output_field = CharField()

    def __init__(self, column: str, **extra):
        super().__init__(F(column), **extra)
