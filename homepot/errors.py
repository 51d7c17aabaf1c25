"""Domain errors that services raise; the API maps them to HTTP answers (homepot.api.errors)."""


class ServiceError(Exception):
    """A business rule refused the request. `field` names the input at fault, if any."""

    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code


class Conflict(ServiceError):
    """The request clashes with the current state (a duplicate id, a protected relation)."""

    status_code = 409
    code = "conflict"


class NotFound(ServiceError):
    """The object is gone: deleted, typically by a concurrent request that won the race."""

    status_code = 404
    code = "not_found"
