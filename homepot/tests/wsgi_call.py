"""One request to a WSGI application in this process, as gunicorn would make it: for tests of
the paths answered in front of Django's handler (homepot.wsgi), which the test client, a
Django handler of its own, would not reach."""

import io

from django.core import signals
from django.db import close_old_connections


def wsgi_call(app, method: str, path: str, body: bytes = b"", *, host: str = "127.0.0.1", **headers):
    """(status, headers, content) of `app`'s answer. `path` may carry a query string.
    Django's close_old_connections is left out, as the test client does: it would close the
    connection holding the test's transaction."""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": host,
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
        **headers,
    }
    started = []
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        chunks = app(environ, lambda status, headers, exc_info=None: started.append((status, headers)))
        try:
            content = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)
    status, response_headers = started[0]
    return status, response_headers, content
