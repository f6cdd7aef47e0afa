"""One error hierarchy, each class mapped to one HTTP status and one JSON error code.

    NocosupError                    500 INTERNAL_ERROR
    ├── ConfigError                 (start-up only: the CLI prints it and exits 2)
    ├── InvalidInput                422 VALIDATION_ERROR / INVALID_JSON (names the field)
    ├── Unauthorized                401 UNAUTHORIZED
    ├── CsrfRejected                403 CSRF_REJECTED (a cookie-authenticated write from elsewhere)
    ├── TooManyLogins               429 TOO_MANY_LOGINS (Retry-After)
    ├── NotFound                    404 NOT_FOUND
    │   ├── AppNotFound             404 APP_NOT_FOUND
    │   └── EnvironmentNotFound     404 ENVIRONMENT_NOT_FOUND
    ├── AppExists                   409 APP_EXISTS
    ├── AppStateConflict            409 APP_STATE_CONFLICT (a stop came during a start, or back)
    ├── PayloadTooLarge             413 PAYLOAD_TOO_LARGE (a body over its limit)
    ├── HeadersTooLarge             431 HEADERS_TOO_LARGE (a header block over its limit)
    ├── AppUnavailable              503 (base of the gateway's "cannot serve now" answers)
    │   ├── AppStopped              503 APP_STOPPED
    │   ├── AppInitializing         503 APP_INITIALIZING (Retry-After)
    │   ├── AppFailed               503 APP_ERROR (carries the app's error message)
    │   └── EnvironmentUnavailable  503 APP_ENVIRONMENT_UNAVAILABLE
    ├── BackendUnavailable          503 REDIS_UNAVAILABLE (Redis did not answer)
    ├── DatabaseError               500 DATABASE_ERROR (a database could not be made or dropped)
    ├── CommandTimeout              504 COMMAND_TIMEOUT
    ├── CommandFailed               502 COMMAND_FAILED
    ├── UpstreamUnreachable         502 UPSTREAM_CONNECT_ERROR
    ├── UpstreamInvalidResponse     502 UPSTREAM_PROTOCOL_ERROR (a garbled or cut-short answer)
    ├── ShuttingDown                503 SHUTTING_DOWN
    ├── UpstreamTimeout             504 UPSTREAM_TIMEOUT
    └── UpstreamNotAllowed          503 UPSTREAM_NOT_ALLOWED (URL outside NOCOSUP_ALLOWED_UPSTREAMS)

:func:`error_body` renders any of them as ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

from typing import Any


class NocosupError(Exception):
    """Base of every error nocosup raises on purpose."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON body of this error."""
        return error_body(self.code, self.message, **self.details)

    def headers(self) -> dict[str, str]:
        """Extra response headers (e.g. Retry-After)."""
        return {}


class ConfigError(NocosupError):
    code = "CONFIG_ERROR"


class InvalidInput(NocosupError):
    status = 422
    code = "VALIDATION_ERROR"

    def __init__(self, message: str, field: str | None = None, code: str | None = None) -> None:
        if field is not None:
            super().__init__(message, field=field)
        else:
            super().__init__(message)
        if code:
            self.code = code


class Unauthorized(NocosupError):
    status = 401
    code = "UNAUTHORIZED"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="nocosup"'}


class CsrfRejected(NocosupError):
    """A write authenticated by the page's cookie that the page cannot have sent."""

    status = 403
    code = "CSRF_REJECTED"


class TooManyLogins(NocosupError):
    status = 429
    code = "TOO_MANY_LOGINS"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotFound(NocosupError):
    status = 404
    code = "NOT_FOUND"


class AppNotFound(NotFound):
    code = "APP_NOT_FOUND"

    def __init__(self, name: str) -> None:
        super().__init__(f"application {name!r} does not exist")


class EnvironmentNotFound(NotFound):
    code = "ENVIRONMENT_NOT_FOUND"


class AppExists(NocosupError):
    status = 409
    code = "APP_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(f"application {name!r} already exists")


class AppStateConflict(NocosupError):
    """Another request changed what the app should be doing while this one ran (a stop
    that came in during a start, or the other way round)."""

    status = 409
    code = "APP_STATE_CONFLICT"


class PayloadTooLarge(NocosupError):
    """A request body over its limit: reading stopped at the limit."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than the limit of {limit} bytes", limit=limit)

    def headers(self) -> dict[str, str]:
        # the rest of the body is not read: the connection cannot carry another request
        return {"Connection": "close"}


class HeadersTooLarge(NocosupError):
    """A request header block over its limit (answered by the server layer)."""

    status = 431
    code = "HEADERS_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"request line and headers are larger than the limit of {limit} bytes", limit=limit
        )


class AppUnavailable(NocosupError):
    status = 503
    code = "APP_UNAVAILABLE"
    retry_after: int | None = None

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class AppStopped(AppUnavailable):
    code = "APP_STOPPED"

    def __init__(self, name: str) -> None:
        super().__init__(f"application {name!r} is stopped")


class AppInitializing(AppUnavailable):
    code = "APP_INITIALIZING"
    retry_after = 2

    def __init__(self, name: str) -> None:
        super().__init__(f"application {name!r} is still starting; retry shortly")


class AppFailed(AppUnavailable):
    code = "APP_ERROR"

    def __init__(self, name: str, error: str | None) -> None:
        super().__init__(f"application {name!r} failed: {error or 'unknown error'}")


class EnvironmentUnavailable(AppUnavailable):
    code = "APP_ENVIRONMENT_UNAVAILABLE"
    retry_after = 5


class BackendUnavailable(NocosupError):
    status = 503
    code = "REDIS_UNAVAILABLE"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class DatabaseError(NocosupError):
    code = "DATABASE_ERROR"


class CommandTimeout(NocosupError):
    status = 504
    code = "COMMAND_TIMEOUT"


class CommandFailed(NocosupError):
    status = 502
    code = "COMMAND_FAILED"


class UpstreamUnreachable(NocosupError):
    status = 502
    code = "UPSTREAM_CONNECT_ERROR"


class UpstreamInvalidResponse(NocosupError):
    status = 502
    code = "UPSTREAM_PROTOCOL_ERROR"


class ShuttingDown(NocosupError):
    status = 503
    code = "SHUTTING_DOWN"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class UpstreamTimeout(NocosupError):
    status = 504
    code = "UPSTREAM_TIMEOUT"


def error_body(code: str, message: str, **details: Any) -> dict[str, Any]:
    """``{"error": {"code", "message", ...details}}``: the one error shape of every API."""
    return {"error": {"code": code, "message": message, **details}}


class UpstreamNotAllowed(AppUnavailable):
    """Every environment that could serve the app registered a URL outside
    NOCOSUP_ALLOWED_UPSTREAMS: nothing is proxied there."""

    code = "UPSTREAM_NOT_ALLOWED"
