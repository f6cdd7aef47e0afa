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
    ├── DomainTaken                 409 DOMAIN_TAKEN (a custom domain another app or the admin has)
    ├── DatabaseNameReserved        409 DATABASE_NAME_RESERVED (a tenant name nocosup uses itself)
    ├── EnvironmentInUse            409 ENVIRONMENT_IN_USE (removing one online or hosting apps)
    ├── AppNotMovable               409 APP_NOT_MOVABLE (its data cannot follow it, or no target)
    ├── PayloadTooLarge             413 PAYLOAD_TOO_LARGE (a body over its limit)
    ├── HeadersTooLarge             431 HEADERS_TOO_LARGE (a header block over its limit)
    ├── AppUnavailable              503 (base of the gateway's "cannot serve now" answers)
    │   ├── AppStopped              503 APP_STOPPED
    │   ├── AppInitializing         503 APP_INITIALIZING (Retry-After)
    │   ├── AppFailed               503 APP_ERROR (carries the app's error message)
    │   ├── EnvironmentUnavailable  503 APP_ENVIRONMENT_UNAVAILABLE
    │   ├── AppCapacity             503 APP_CAPACITY (NOCOSUP_MAX_RUNNING_APPS, Retry-After)
    │   └── AppOverloaded           503 APP_OVERLOADED (options.maxConcurrency, Retry-After)
    ├── BackendUnavailable          503 REDIS_UNAVAILABLE (Redis did not answer)
    ├── DatabaseError               500 DATABASE_ERROR (a database could not be made or dropped)
    │   └── DatabaseUnavailable     503 DATABASE_UNAVAILABLE (no answer in time, or no connection
    │                                   free in the budget; Retry-After)
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


class IdempotencyKeyInUse(NocosupError):
    status = 409
    code = "IDEMPOTENCY_KEY_IN_USE"

    def __init__(self) -> None:
        super().__init__(
            "a request with this Idempotency-Key is still running; retry shortly",
            field="Idempotency-Key",
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


class IdempotencyKeyReused(NocosupError):
    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was used for a different request (method, path, query or "
            "body); use a new key for a new request",
            field="Idempotency-Key",
        )


class AppBusy(NocosupError):
    """Another supervisor replica's admin call on this app held it too long."""

    status = 409
    code = "APP_BUSY"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"another admin operation on application {name!r} is still running; retry shortly"
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class DomainTaken(NocosupError):
    """A custom domain asked for belongs to another app (or is NOCOSUP_ADMIN_HOST)."""

    status = 409
    code = "DOMAIN_TAKEN"

    def __init__(self, domain: str, owner: str) -> None:
        super().__init__(f"domain {domain!r} belongs to {owner}", domain=domain)


class DatabaseNameReserved(NocosupError):
    """A tenant database (or schema) would be one nocosup or the server uses itself."""

    status = 409
    code = "DATABASE_NAME_RESERVED"


class EnvironmentInUse(NocosupError):
    """An environment to remove is still online or still hosts apps."""

    status = 409
    code = "ENVIRONMENT_IN_USE"


class AppNotMovable(NocosupError):
    """A move that cannot be made: the app's data would not be reachable from the target
    (a SQLite file on a worker, another database server), the target is offline, or the
    supervisor runs its apps itself (shared-memory mode)."""

    status = 409
    code = "APP_NOT_MOVABLE"


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


class AppCommanding(AppUnavailable):
    """A maintenance command runs on the app: requests wait until it is done."""

    code = "APP_COMMANDING"
    retry_after = 5

    def __init__(self, name: str, message: str | None) -> None:
        super().__init__(
            f"application {name!r} is running a maintenance command: {message or 'busy'}"
        )


class EnvironmentUnavailable(AppUnavailable):
    code = "APP_ENVIRONMENT_UNAVAILABLE"
    retry_after = 5


class AppCapacity(AppUnavailable):
    """A boot would pass NOCOSUP_MAX_RUNNING_APPS and every running app is busy."""

    code = "APP_CAPACITY"
    retry_after = 1

    def __init__(self, name: str, limit: int) -> None:
        super().__init__(
            f"application {name!r} cannot start: this process runs its limit of {limit} "
            "applications and none is free to go idle; retry shortly",
            limit=limit,
        )


class AppOverloaded(AppUnavailable):
    """The app has options.maxConcurrency requests in flight and options.maxQueue waiting."""

    code = "APP_OVERLOADED"
    retry_after = 1

    def __init__(self, name: str, concurrency: int, queue: int) -> None:
        super().__init__(
            f"application {name!r} is serving its limit of {concurrency} requests with "
            f"{queue} more waiting; retry shortly",
            max_concurrency=concurrency,
            max_queue=queue,
        )


class BackendUnavailable(NocosupError):
    status = 503
    code = "REDIS_UNAVAILABLE"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


class DatabaseError(NocosupError):
    code = "DATABASE_ERROR"


class DatabaseUnavailable(DatabaseError):
    """The database did not answer within its timeout, or no connection of the process's
    budget came free in time: a passing condition, so 503 with Retry-After."""

    status = 503
    code = "DATABASE_UNAVAILABLE"

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


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
