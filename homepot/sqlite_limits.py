"""What the embedded SQLite database cannot do, answered as such.

run.sh falls back to SQLite so a fresh laptop needs no server. The admin and most of the API
work there, but the device ingest, job dispatch and deliveries rely on PostgreSQL features
(row locks, `INSERT ... ON CONFLICT` in CTEs, `FOR UPDATE SKIP LOCKED`). SQLite refuses that
SQL with an OperationalError; without this module that was an HTML 500 (DEBUG) or a 503
"database unavailable" (wrong: it answers, it just cannot do this). An API request that hits
such an error answers 501 with code `needs_postgresql` instead, and the transaction it ran in
has already been rolled back.
"""

import sqlite3

from django.db import DatabaseError, connection
from django.http import JsonResponse

CODE = "needs_postgresql"
MESSAGE = (
    "This endpoint needs PostgreSQL, and this server runs on the embedded SQLite database. "
    "Set DATABASE_URL to a PostgreSQL database (./scripts/run.sh uses a local one when it answers)."
)
STATUS = 501  # not 503: trying again will not help until the configuration changes


def needs_postgresql(exc: BaseException | None) -> bool:
    """Whether `exc` is SQLite refusing something only PostgreSQL does. With DEBUG on, Django's
    query logging can fail first on the same SQL (parameters SQLite cannot bind), raising the
    driver's own error unwrapped, hence sqlite3.Error too."""
    return isinstance(exc, DatabaseError | sqlite3.Error) and connection.vendor == "sqlite"


def body() -> dict:
    return {"error": {"status": STATUS, "code": CODE, "message": MESSAGE}}


class NeedsPostgreSQLMiddleware:
    """The same answer for plain Django views (the heartbeat's fast path) and for errors DRF's
    handler passes on. Listed after homepot.outage's middleware, so it is asked first."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        from homepot.views import is_api_path  # homepot.views imports the URL configuration

        if needs_postgresql(exception) and is_api_path(request.path):
            return JsonResponse(body(), status=STATUS)
        return None
