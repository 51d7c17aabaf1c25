"""What the requests answered in front of Django's handler (homepot.wsgi: the heartbeat's and
health report's wrapper, the device list's) share, so that their answers carry what Django's
would: the headers the middleware stack adds, and the request metrics under Django's route."""

from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.test import RequestFactory
from django.urls import resolve

from homepot import metrics


def middleware_headers(method: str, path: str, *, secure: bool) -> list[tuple[str, str]]:
    """The headers Django's SecurityMiddleware and XFrameOptionsMiddleware add to a JSON
    answer to `method path`, taken from those middlewares themselves. They depend on settings
    and on HTTPS only: a caller builds them once per `secure` and keeps them."""
    request = RequestFactory().generic(method, path, secure=secure)
    response = HttpResponse(content_type="application/json")
    before = set(response.headers)
    response = SecurityMiddleware(lambda _request: response)(request)
    response = XFrameOptionsMiddleware(lambda _request: response)(request)
    return [(k, v) for k, v in response.items() if k not in before]


class RouteMetrics:
    """The request counter and timer of one method, under the route Django would report for
    the path (homepot.metrics_middleware): one series with Django's. Bound on first use."""

    def __init__(self, method: str):
        self.method = method
        self._bound = {}  # (path, status) -> (counter, timer)

    def observe(self, path: str, status: str, elapsed: float) -> None:
        bound = self._bound.get((path, status))
        if bound is None:
            route = resolve(path).route
            bound = self._bound[(path, status)] = (
                metrics.http_requests.labels(route=route, method=self.method, status=status),
                metrics.http_request_duration.labels(route=route, method=self.method),
            )
        counter, timer = bound
        counter.inc()
        timer.observe(elapsed)
