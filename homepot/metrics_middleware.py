"""Counts and times every HTTP request by route template (homepot.metrics).

The route is the URL pattern that matched (`api/v1/agent/^heartbeat/?$`), never the raw
path, so /api/v1/devices/17/ and /api/v1/devices/18/ are one series; a request no pattern
matched (a 404 before any view) counts under "<unmatched>".
"""

import time

from homepot import metrics

UNMATCHED = "<unmatched>"
# Methods outside this set (anything a scanner invents) share one label value.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        # Bound children by (route, method[, status]): after the first request of a route the
        # hot path does two dictionary lookups, not prometheus_client's label validation.
        self._counters = {}
        self._timers = {}

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None and match.route else UNMATCHED
        method = request.method if request.method in _METHODS else "OTHER"
        key = (route, method, response.status_code)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = metrics.http_requests.labels(
                route=route, method=method, status=str(response.status_code)
            )
        counter.inc()
        timer = self._timers.get(key[:2])
        if timer is None:
            timer = self._timers[key[:2]] = metrics.http_request_duration.labels(route=route, method=method)
        timer.observe(elapsed)
        return response
